"""Shared test set-up: one way to build a `FeedPipeline` over a synthetic world or a catalogue
(the index, the demo ranker, a re-ranker, the split, an optional event log and Redis tier),
instead of a copy per test module."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional

import numpy as np
import pytest

from fyp_core import EventLog, FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core import features as fs
from fyp_core.catalog import Catalogue, apply_catalogue
from fyp_core.synth import TASKS, demo_ranker_weights

#: The modules that take longest (one worker's seconds in a full run on 2 cores: Spark parity
#: 171, the loop 169, the report 98, OPE on the pipeline 62, compaction 41, trainers 38), first.
#: pytest-xdist hands whole files to its workers (``--dist loadfile``) in collection order
#: (``--no-loadscope-reorder``; its default orders files by test count, which put the
#: three-test, three-minute Spark module last, with the other worker idle): longest first, the
#: two workers end together. Only the order changes; every module still runs.
LONGEST_FIRST = (
    "test_analytics_spark",
    "test_loop",
    "test_report",
    "test_ope_pipeline",
    "test_compact",
    "test_train",
)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(Path(it.nodeid.split("::")[0]).stem, len(rank)))


@pytest.fixture(autouse=True)
def _sigint_as_a_shell_leaves_it() -> Iterator[None]:
    """Every test starts with Python's own SIGINT handler, as a process started from an
    interactive shell: the Ctrl-C tests' children inherit an ignored SIGINT otherwise. A test
    run started as a background job of a non-interactive shell (``sh -c 'pytest ... &'``, a CI
    script's ``&``) has SIGINT and SIGQUIT ignored, as POSIX says for asynchronous commands
    without job control, and Python then installs no SIGINT handler of its own."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


DEFAULT_POLICY = {"window": 20, "max_topic_share": 0.4, "max_per_creator": 2}


def demo_ranker(dim: int, version: str = "v1") -> MlpRanker:
    """The demo's hand-made multi-task ranker for embedding dim `dim`."""
    w, b, o = demo_ranker_weights(dim)
    return MlpRanker(w, b, activation="relu", outputs=o, version=version, task_names=list(TASKS))


def build_pipeline(
    source: Any,
    *,
    log_dir: Any = None,
    policy: Optional[Mapping[str, Any]] = None,
    explore_rate: float = 0.05,
    layers: Any = None,
    config: Optional[Mapping[str, Any]] = None,
    key: bytes = b"0123456789abcdef",
    creators: Optional[np.ndarray] = None,
    **pipeline_kw: Any,
) -> FeedPipeline:
    """A pipeline over `source` (a `synth.World` or a `Catalogue`): items indexed and loaded
    (with the catalogue's batch tier for a catalogue), `log_dir` attaches an `EventLog` with the
    ranker's tasks and the feature names; `creators` overrides the item creators."""
    cat = source if isinstance(source, Catalogue) else Catalogue.from_world(source)
    if creators is not None:
        cat = Catalogue.from_arrays(
            cat.item_ids,
            cat.item_embeddings,
            cat.topics,
            creators,
            cat.upload_ts,
            categories=cat.categories,
        )
    index = HnswIndex(
        cat.dim, metric="ip", ef_construction=64, capacity=cat.n_items + 1000, deterministic=True
    )
    index.add(cat.item_ids, cat.item_embeddings)
    log = None
    if log_dir is not None:
        log = EventLog(str(log_dir), tasks=list(TASKS), feature_names=fs.feature_names(cat.dim))
    pipe = FeedPipeline(
        index,
        demo_ranker(cat.dim),
        Reranker(dict(policy or DEFAULT_POLICY)),
        TrafficSplit(explore_rate, layers=layers),
        event_log=log,
        config=dict(config or {"candidates": 300}),
        user_token_key=key,
        **pipeline_kw,
    )
    apply_catalogue(pipe, cat, index=False)
    return pipe
