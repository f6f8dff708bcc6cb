"""Replay equals serving bit for bit across mid-day batch changes and for users who never engage.

Before the fix, `load_batch`, `set_user_embeddings` and `set_creator_authority` during serving
were not in the feature changelog (rows served after them differed from the replay in the batch
features), and a user with a store entry but no history was served `u_watch_frac = -0.0` where
the replay computed +0.0.
"""

from __future__ import annotations

import numpy as np
import pytest

from fyp_core import EventLog, FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core import features as fs
from fyp_core.catalog import Catalogue, apply_catalogue, load_catalogue
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9
KEY = b"feature-store-batch-test-key"
DIM = 8


def build(cat, log_dir) -> FeedPipeline:
    index = HnswIndex(cat.dim, metric="ip", ef_construction=64)
    index.add(cat.item_ids, cat.item_embeddings)
    w, b, o = demo_ranker_weights(cat.dim)
    ranker = MlpRanker(w, b, activation="relu", outputs=o, version="v1", task_names=list(TASKS))
    log = EventLog(str(log_dir), tasks=list(TASKS), feature_names=fs.feature_names(cat.dim))
    pipe = FeedPipeline(
        index,
        ranker,
        Reranker({"window": 10, "max_per_creator": 2}),
        TrafficSplit(0.1),
        event_log=log,
        config={"candidates": 100},
        user_token_key=KEY,
        history_len=10,
    )
    apply_catalogue(pipe, cat, index=False)
    return pipe


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsb")
    world = make_world(n_items=1500, n_users=80, dim=DIM, n_creators=200, seed=3, now=NOW)
    Catalogue.from_world(world).save(root / "cat")
    cat = load_catalogue(str(root / "cat"))
    pipe = build(cat, root / "log")
    rng = np.random.default_rng(1)
    users = list(world.user_ids[:30])
    silent = set(users[:10])  # served many times, never engage
    new_snapshot = {
        "user_ids": users[10:20],
        "user_embeddings": rng.normal(size=(10, DIM)).astype(np.float32),
        "creator_ids": cat.creator_ids[:50],
        "creator_authority": rng.random(50).astype(np.float32),
    }
    t = NOW
    for r in range(240):
        t += 60.0
        user = users[r % len(users)]
        resp = pipe.feed(user, f"req-{r}", n=8, now=t)
        if user not in silent:
            for iid in resp.impression_ids[:3]:
                pipe.engage(iid, watched_seconds=10.0, completed=True, now=t + 1)
        if r == 60:  # incremental batch updates while serving
            pipe.set_user_embeddings(users[20:25], rng.normal(size=(5, DIM)).astype(np.float32))
            pipe.set_creator_authority(cat.creator_ids[:20], rng.random(20).astype(np.float32))
        if r == 150:  # a whole new snapshot
            pipe.load_batch("snap-2", as_of=t, **new_snapshot)
    pipe.close()
    return {"root": root, "cat": cat, "snapshot": new_snapshot}


def _bits_equal(served, train) -> None:
    def key(t):
        return np.array(
            [f"{r}/{i}" for r, i in zip(t["request_id"].to_pylist(), t["item_id"].to_pylist())]
        )

    ks, kt = key(served), key(train)
    s_order, t_order = np.argsort(ks), np.argsort(kt)
    assert np.array_equal(ks[s_order], kt[t_order])
    a = fs.features_matrix(served)[s_order].view(np.uint32)
    b = fs.features_matrix(train)[t_order].view(np.uint32)
    diff = a != b
    if diff.any():
        names = fs.feature_names(DIM)
        cols = sorted({names[c] for c in np.flatnonzero(diff.any(axis=0))})
        pytest.fail(f"{diff.any(axis=1).sum()} of {len(a)} rows differ, in {cols}")


def test_replay_follows_batch_changes_bit_for_bit(day) -> None:
    logdir = day["root"] / "log"
    served = fs.served_features(logdir)
    train = fs.training_set(
        logdir,
        day["root"] / "cat",
        user_token_key=KEY,
        history_len=10,
        batches={"snap-2": day["snapshot"]},
    )
    _bits_equal(served, train)
    names = fs.feature_names(DIM)
    watch = fs.features_matrix(served)[:, names.index("u_watch_frac")]
    assert (watch == 0).any() and not np.signbit(watch).any()  # silent users: +0.0


def test_replay_without_the_snapshot_names_it(day) -> None:
    with pytest.raises(ValueError, match="snap-2"):
        fs.training_set(
            day["root"] / "log", day["root"] / "cat", user_token_key=KEY, history_len=10
        )


def test_replay_refuses_a_different_snapshot_under_the_same_version(day) -> None:
    other = dict(day["snapshot"])
    other["creator_authority"] = other["creator_authority"] + 1
    with pytest.raises(ValueError, match="checksum"):
        fs.training_set(
            day["root"] / "log",
            day["root"] / "cat",
            user_token_key=KEY,
            history_len=10,
            batches={"snap-2": other},
        )
