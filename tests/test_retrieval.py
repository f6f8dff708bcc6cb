"""Retrieval snapshots from Python: `FeedPipeline.set_retrieval` swaps a user tower, an item tower
and the index of the item tower's vectors together; the index is brought up to date with the
item table, later uploads are embedded by the item tower, and bad towers are refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_pipeline

from fyp_core import HnswIndex, MlpRanker
from fyp_core.synth import make_world

NOW = 1.8e9


def tower(inputs: int, outputs: int, seed: int, version: str) -> MlpRanker:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(inputs, outputs)).astype(np.float32) / np.sqrt(inputs)
    return MlpRanker([w], [np.zeros(outputs, np.float32)], version=version)


def test_a_tower_snapshot_serves_and_embeds_later_uploads() -> None:
    world = make_world(n_items=1500, n_users=60, dim=8, seed=9, now=NOW)
    pipe = build_pipeline(world, config={"candidates": 100})
    assert pipe.retrieval_version == "content"
    d = 6
    user_t, item_t = tower(2 * 8 + 4, d, 1, "u1"), tower(8, d, 2, "i1")
    index = HnswIndex(d, metric="ip", ef_construction=32)
    first = slice(0, 1000)  # built offline from part of the catalogue
    index.add(world.item_ids[first], item_t.predict(world.item_emb[first]))
    with pytest.raises(ValueError, match="both towers"):
        pipe.set_retrieval("t1", index, user_tower=user_t)
    with pytest.raises(ValueError, match="user tower"):
        pipe.set_retrieval("t1", index, user_tower=item_t, item_tower=item_t)
    pipe.set_retrieval("t1", index, user_tower=user_t, item_tower=item_t)
    assert pipe.retrieval_version == "t1"
    assert len(index) == world.n_items  # the rest was embedded and added at the swap
    emb = np.linspace(-1, 1, 8).astype(np.float32)
    pipe.upload(10**9, emb, topic=1, creator=1, ts=NOW)
    np.testing.assert_allclose(index.get_vector(10**9), item_t.predict(emb[None])[0], rtol=1e-6)
    user = world.user_ids[int(np.flatnonzero(world.user_has_long_term)[0])]
    r = pipe.feed(user, "r1", n=10, now=NOW)
    assert len(r) == 10 and not r.cold_start
