"""pytest-benchmark: one FeedPipeline.feed call on a small synthetic world."""

from __future__ import annotations

import argparse
import itertools
import time

import pytest

from fyp_core.demo import build_pipeline
from fyp_core.synth import make_world


@pytest.fixture(scope="module")
def pipe_world():
    world = make_world(n_items=5000, n_users=500, seed=0, now=time.time())
    args = argparse.Namespace(ef_construction=48, seed=0, explore_rate=0.05, candidates=500, ef=500)
    return build_pipeline(world, args, None), world


def test_feed_k500(benchmark, pipe_world) -> None:
    pipe, world = pipe_world
    counter = itertools.count()

    def one():
        i = next(counter)
        return pipe.feed(world.user_ids[i % 500], f"b-{i}", n=20)

    r = benchmark(one)
    assert len(r) == 20
