"""FeedPipeline end to end on a small synthetic world: real index, ranker, re-ranker, split, log."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import build_pipeline

from fyp_core import (
    FeedPipeline,
    HnswIndex,
    MlpRanker,
    Reranker,
    TrafficSplit,
)
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9
POLICY = {
    "window": 20,
    "max_topic_share": 0.4,
    "max_per_creator": 2,
    "category_caps": {"1": 0.1},
    "fresh_floor": 1,
    "diversity": "dpp",
    "dpp_alpha": 2.0,
}


@pytest.fixture(scope="module")
def world():
    return make_world(n_items=8000, n_users=600, seed=3, now=NOW)


def build(world, log_dir=None, explore_rate=0.05, layers=None, candidates=300):
    config = {"candidates": candidates, "fresh_max_age_s": 3600.0}
    return build_pipeline(
        world,
        log_dir=log_dir,
        policy=POLICY,
        explore_rate=explore_rate,
        layers=layers,
        config=config,
    )


@pytest.fixture(scope="module")
def pipe(world):
    return build(world)


def test_response_shape_and_frozen_fields(pipe) -> None:
    r = pipe.feed("user-1", "req-a", n=20, now=NOW)
    assert len(r) == 20
    assert len(set(r.item_ids.tolist())) == 20
    assert r.predictions.shape == (20, len(TASKS))
    assert np.all(np.isfinite(r.predictions))
    assert r.model_version == "v1"
    # unique per (user, request, position): "<request_id>:<16 hex of the user token>:<position>"
    assert r.impression_ids == [f"req-a:{r.user_token[:16]}:{i}" for i in range(20)]
    assert set(r.sources) <= {"ranked", "exploration", "fresh"}
    for src, p in zip(r.sources, r.propensities):
        assert (0 < p < 0.01) if src == "exploration" else p == 1.0
    assert set(r.timings) == {
        "scorer",
        "candidates",
        "features",
        "ranker",
        "rerank",
        "mixer",
        "log",
    }
    d = r.to_dict()
    assert d["slots"][0]["predictions"].keys() == set(TASKS)


def test_exploration_slots_follow_the_split_and_share_near_setpoint(pipe) -> None:
    split = TrafficSplit(0.05)  # same salt ("fyp") and rate as the pipeline's
    n_slots = explore = 0
    for i in range(300):
        user = f"user-{i % 500}"
        r = pipe.feed(user, f"share-{i}", n=20, now=NOW)
        token = pipe.user_token(user)
        want = split.assign_batch(token, f"share-{i}", np.arange(20))
        got = np.array([s == "exploration" for s in r.sources])
        assert np.array_equal(got, want[: len(got)])
        n_slots += len(r)
        explore += int(got.sum())
    sigma = np.sqrt(0.05 * 0.95 / n_slots)
    assert abs(explore / n_slots - 0.05) < 4 * sigma


def test_experiment_layers_never_touch_exploration(world) -> None:
    layers = [{"name": "ranker", "variants": {"control": (0, 5000), "treatment": (5000, 10000)}}]
    a, b = build(world), build(world, layers=layers)
    for i in range(40):
        ra = a.feed(f"user-{i}", f"x-{i}", now=NOW)
        rb = b.feed(f"user-{i}", f"x-{i}", now=NOW)
        ea = [
            (p, it) for p, it, s in zip(ra.positions, ra.item_ids, ra.sources) if s == "exploration"
        ]
        eb = [
            (p, it) for p, it, s in zip(rb.positions, rb.item_ids, rb.sources) if s == "exploration"
        ]
        assert ea == eb


def test_topic_cap_holds_in_every_response(pipe, world) -> None:
    for i in range(200):
        r = pipe.feed(f"user-{i}", f"cap-{i}", n=20, now=NOW)
        counts = np.bincount(r.topics)
        assert counts.max() <= 8 or "max_topic_share" in r.relaxed, (r.topics, r.relaxed)
        creators = np.unique(r.creators, return_counts=True)[1]
        assert creators.max() <= 2 or "max_per_creator" in r.relaxed


def test_upload_is_retrievable_at_once(world) -> None:
    pipe = build(world)
    user = "user-7"
    taste = world.user_long_term[7]
    new_id = int(world.item_ids.max()) + 1000
    pipe.upload(new_id, taste, topic=1, creator=99, ts=NOW)
    found = pipe.first_candidate_times([new_id])[0]
    assert found is None
    r = pipe.feed(user, "after-upload", n=20, now=NOW + 0.5)
    assert r.n_fresh_candidates >= 1
    assert pipe.first_candidate_times([new_id])[0] == pytest.approx(NOW + 0.5)


def test_cold_start_user_gets_a_full_feed(pipe) -> None:
    r = pipe.feed("never-seen-user", "cold-1", n=20, now=NOW)
    assert r.cold_start and len(r) == 20


def test_engage_updates_history_and_unknown_impression_raises(pipe) -> None:
    r = pipe.feed("engager", "eng-1", n=20, now=NOW)
    assert r.cold_start
    pipe.engage(r.impression_ids[0], watched_seconds=30.0, completed=True, liked=True, now=NOW + 1)
    r2 = pipe.feed("engager", "eng-2", n=20, now=NOW + 2)
    assert not r2.cold_start  # the history now defines a user embedding
    assert not set(r2.item_ids.tolist()) & set(r.item_ids.tolist())  # seen items are excluded
    with pytest.raises(KeyError, match="unknown impression_id"):
        pipe.engage("no-such-impression")
    with pytest.raises(ValueError, match="watched_seconds"):
        pipe.engage(r.impression_ids[1], watched_seconds=-1.0)


def test_config_changes_take_effect_without_restart(world) -> None:
    pipe = build(world)
    pipe.update_config({"explore_rate": 0.5})
    assert pipe.config["explore_rate"] == 0.5
    share = np.mean(
        [
            s == "exploration"
            for i in range(50)
            for s in pipe.feed(f"user-{i}", f"cfg-{i}", now=NOW).sources
        ]
    )
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="unknown config key"):
        pipe.update_config({"nope": 1})
    with pytest.raises(ValueError, match="explore_rate"):
        pipe.update_config({"explore_rate": 2.0})


def test_bad_input(pipe, world) -> None:
    with pytest.raises(ValueError, match="n must be"):
        pipe.feed("u", "r", n=0)
    with pytest.raises(ValueError, match="request_id"):
        pipe.feed("u", "", n=5)
    with pytest.raises(ValueError):
        pipe.upload(1, np.zeros(world.dim + 1, dtype=np.float32), 0, 0)
    with pytest.raises(ValueError, match="NaN"):
        pipe.upload(10**9, np.full(world.dim, np.nan, dtype=np.float32), 0, 0)
    with pytest.raises(ValueError, match="topics has"):
        pipe.load_items([1, 2], np.zeros((2, world.dim)), [0], [0, 0])
    w, b, o = demo_ranker_weights(world.dim + 1)
    wrong = MlpRanker(w, b, outputs=o, version="x", task_names=list(TASKS))
    with pytest.raises(ValueError, match="inputs"):
        FeedPipeline(
            HnswIndex(world.dim),
            wrong,
            Reranker({}),
            TrafficSplit(),
            user_token_key=b"0123456789abcdef",
        )
    with pytest.raises(ValueError, match="user_token_key"):
        FeedPipeline(
            HnswIndex(world.dim),
            MlpRanker(*demo_ranker_weights(world.dim)[:2]),
            Reranker({}),
            TrafficSplit(),
        )


def test_shadow_promote_rollback(world) -> None:
    pipe = build(world)
    w, b, o = demo_ranker_weights(world.dim, seed=5)
    pipe.add_shadow(MlpRanker(w, b, outputs=o, version="v2", task_names=list(TASKS)))
    r = pipe.feed("user-2", "sh-1", now=NOW)
    assert set(r.shadow_predictions) == {"v2"}
    assert r.shadow_predictions["v2"].shape == r.predictions.shape
    pipe.promote("v2")
    assert pipe.feed("user-2", "sh-2", now=NOW).model_version == "v2"
    pipe.rollback()
    assert pipe.feed("user-2", "sh-3", now=NOW).model_version == "v1"


def test_concurrent_feeds_engages_uploads(world) -> None:
    pipe = build(world)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                r = pipe.feed(f"user-{(t * 40 + i) % 500}", f"t{t}-{i}", now=NOW + i)
                assert len(set(r.item_ids.tolist())) == len(r) == 20
                pipe.engage(r.impression_ids[0], completed=True, now=NOW + i)
                if i % 10 == 0:
                    pipe.upload(10**7 + t * 100 + i, world.item_emb[i], 1, 5, ts=NOW + i)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert pipe.stats()["requests"] == 160


def test_logging_writes_every_exploration_slot(world, tmp_path) -> None:
    import pyarrow.dataset as ds

    pipe = build(world, log_dir=tmp_path, explore_rate=0.2)
    explored = set()
    for i in range(60):
        r = pipe.feed(f"user-{i}", f"log-{i}", now=time.time())
        explored |= {imp for imp, s in zip(r.impression_ids, r.sources) if s == "exploration"}
        pipe.engage(r.impression_ids[0], watched_seconds=3.0)
    pipe.close()
    ex = ds.dataset(
        tmp_path / "exploration_events", format="parquet", partitioning="hive"
    ).to_table()
    assert set(ex.column("impression_id").to_pylist()) == explored
    imp = ds.dataset(tmp_path / "impressions", format="parquet", partitioning="hive").to_table()
    assert imp.num_rows == 60 * 20
    scores = ds.dataset(
        tmp_path / "ranker_scores", format="parquet", partitioning="hive"
    ).to_table()
    assert scores.num_rows == 60 * 20
    eng = ds.dataset(tmp_path / "engagements", format="parquet", partitioning="hive").to_table()
    assert eng.num_rows == 60
    # no raw user id in any token column
    assert not any(t.startswith("user-") for t in imp.column("user_token").to_pylist())


def test_shadow_scores_are_logged_with_their_value(world, tmp_path) -> None:
    import pyarrow.dataset as ds

    pipe = build(world, log_dir=tmp_path)
    w, b, o = demo_ranker_weights(world.dim, seed=6)
    pipe.add_shadow(MlpRanker(w, b, outputs=o, version="v2", task_names=list(TASKS)))
    for i in range(5):
        r = pipe.feed(f"user-{i}", f"shadow-log-{i}", now=time.time())
    pipe.close()
    t = ds.dataset(tmp_path / "ranker_scores", format="parquet", partitioning="hive").to_table()
    is_shadow = np.asarray(t.column("is_shadow"))
    assert is_shadow.sum() == (~is_shadow).sum() == 5 * 20
    versions = np.asarray(t.column("model_version"))
    assert set(versions[is_shadow]) == {"v2"}
    assert np.isfinite(np.asarray(t.column("value_score"))[is_shadow]).all()
    imps = np.asarray(t.column("impression_id"))[is_shadow]
    assert sum(i.startswith("shadow-log-4:") for i in imps) == len(r)
