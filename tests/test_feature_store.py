"""Feature store parity: a simulated day served by a FeedPipeline, then replayed offline.

The issue's test: for a simulated day, the point-in-time training vectors replayed from the log
through the same Rust feature definitions equal the ``served_features`` log bit for bit.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fyp_core import EventLog, FeedPipeline, HnswIndex, MlpRanker, Reranker, TrafficSplit
from fyp_core import features as fs
from fyp_core.catalog import Catalogue, apply_catalogue, load_catalogue
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9
KEY = b"feature-store-test-key"
POLICY = {"window": 20, "max_topic_share": 0.4, "max_per_creator": 2, "diversity": "mmr"}


def build(cat: Catalogue, log_dir) -> FeedPipeline:
    index = HnswIndex(cat.dim, metric="ip", ef_construction=64, capacity=cat.n_items + 1000)
    index.add(cat.item_ids, cat.item_embeddings)
    w, b, o = demo_ranker_weights(cat.dim)
    ranker = MlpRanker(w, b, activation="relu", outputs=o, version="v1", task_names=list(TASKS))
    log = EventLog(
        str(log_dir),
        tasks=list(TASKS),
        feature_names=fs.feature_names(cat.dim),
        rotate_seconds=3600.0,
    )
    pipe = FeedPipeline(
        index,
        ranker,
        Reranker(POLICY),
        TrafficSplit(0.1),
        event_log=log,
        config={"candidates": 200, "fresh_max_age_s": 3 * 3600.0},
        user_token_key=KEY,
        history_len=20,
    )
    apply_catalogue(pipe, cat, index=False)
    return pipe


@pytest.fixture(scope="module")
def day(tmp_path_factory):
    """Serves 24 simulated hours: requests, engagement fed back, uploads and a take-down."""
    root = tmp_path_factory.mktemp("fs")
    world = make_world(n_items=3000, n_users=150, dim=16, n_creators=400, seed=11, now=NOW)
    Catalogue.from_world(world).save(root / "cat")
    cat = load_catalogue(str(root / "cat"))
    pipe = build(cat, root / "log")
    assert pipe.batch_info["n_creators"] == cat.n_creators > 0
    rng = np.random.default_rng(5)
    uid = {u: i for i, u in enumerate(world.user_ids)}
    served, engaged = 0, {}
    t = NOW
    for r in range(360):
        t += float(rng.uniform(60, 420))  # ~24 h in all
        user = world.user_ids[int(rng.integers(0, 40))]  # few users: long histories
        resp = pipe.feed(user, f"req-{r}", n=12, now=t)
        served += len(resp)
        rows = np.searchsorted(world.item_ids, resp.item_ids)
        out = world.engagement(np.full(len(rows), uid[user]), rows, np.arange(len(rows)), rng)
        for i in np.flatnonzero(rng.random(len(rows)) < 0.6):
            iid = resp.impression_ids[i]
            pipe.engage(
                iid,
                watched_seconds=float(out["watched_seconds"][i]),
                completed=bool(out["completed"][i]),
                liked=bool(out["liked"][i]),
                now=t + float(rng.uniform(1, 30)),
            )
            engaged[iid] = bool(out["completed"][i])
        if r % 30 == 0:
            new = world.new_items(2, t, rng)
            for k in range(2):
                pipe.upload(
                    int(new["ids"][k]),
                    new["emb"][k],
                    int(new["topic"][k]),
                    int(new["creator"][k]),
                    int(new["category"][k]),
                    ts=t,
                )
        if r == 200:
            pipe.remove(cat.item_ids[:5], now=t)
    pipe.close()
    return {
        "root": root,
        "cat": cat,
        "pipe": pipe,
        "served": served,
        "engaged": engaged,
        "end": t,
    }


def test_replayed_training_vectors_equal_the_served_log_bit_for_bit(day) -> None:
    logdir = day["root"] / "log"
    served = fs.served_features(logdir)
    assert served.num_rows == day["served"]  # sampled at 100%: every served slot
    train = fs.training_set(logdir, day["root"] / "cat", user_token_key=KEY, history_len=20)
    assert train.schema.metadata[b"fyp.missing_items"] == b"0"
    assert train.num_rows == day["served"]

    def key(t: pa.Table) -> list[str]:
        return [f"{r}/{i}" for r, i in zip(t["request_id"].to_pylist(), t["item_id"].to_pylist())]

    s_order = np.argsort(key(served))
    t_order = np.argsort(key(train))
    assert np.array_equal(np.array(key(served))[s_order], np.array(key(train))[t_order])
    a = fs.features_matrix(served)[s_order]
    b = fs.features_matrix(train)[t_order]
    assert a.shape == b.shape == (day["served"], len(fs.feature_names(16)))
    # bit for bit, NaN-safe: compare the raw float32 bits
    diff = a.view(np.uint32) != b.view(np.uint32)
    if diff.any():
        names = fs.feature_names(16)
        cols = sorted({names[c] for c in np.flatnonzero(diff.any(axis=0))})
        pytest.fail(f"{diff.any(axis=1).sum()} rows differ, in features {cols}")
    assert set(served.column("feature_set_version").to_pylist()) == {fs.feature_set_version(16)}
    assert day["pipe"].feature_set_version == fs.feature_set_version(16)
    assert day["pipe"].feature_names == fs.feature_names(16)
    # the counters and histories really moved during the day (the test can fail)
    names = fs.feature_names(16)
    assert b[:, names.index("i_log_imp_l")].max() > 0
    assert b[:, names.index("u_hist_fill")].max() == 1.0
    assert b[:, names.index("c_authority")].std() > 0


def test_training_rows_carry_their_labels(day) -> None:
    train = fs.training_set(day["root"] / "log", day["cat"], user_token_key=KEY, history_len=20)
    got = dict(zip(train["impression_id"].to_pylist(), train["completed"].to_pylist()))
    for iid, completed in day["engaged"].items():
        assert got[iid] == completed
    not_engaged = set(got) - set(day["engaged"])
    assert not any(got[i] for i in not_engaged)


def test_replay_is_point_in_time(day) -> None:
    """A row never sees its own impression: a request's first-shown item has the impression
    count its earlier requests gave it, not one more."""
    train = fs.training_set(
        day["root"] / "log",
        day["cat"],
        user_token_key=KEY,
        history_len=20,
        request_ids=["req-0"],
    )
    assert set(train["request_id"].to_pylist()) == {"req-0"}
    m = fs.features_matrix(train)
    names = fs.feature_names(16)
    # the very first request of the day: no item has an impression yet, the user no history
    assert np.all(m[:, names.index("i_log_imp_s")] == 0)
    assert np.all(m[:, names.index("u_hist_fill")] == 0)


def test_a_wrong_starting_state_is_detected(day, tmp_path) -> None:
    """Replaying from a different catalogue must not silently match."""
    cat = day["cat"]
    keep = slice(10, None)  # items 0..9 missing: served ones are reported as missing
    other = Catalogue.from_arrays(
        cat.item_ids[keep],
        cat.item_embeddings[keep],
        cat.topics[keep],
        cat.creators[keep],
        cat.upload_ts[keep],
        categories=cat.categories[keep],
    )
    # the changelog names the batch snapshot the pipeline loaded: a replay from another
    # starting state is refused outright
    with pytest.raises(ValueError, match="batch snapshot"):
        fs.training_set(day["root"] / "log", other, user_token_key=KEY, history_len=20)
    # given the right batch snapshot but the wrong items, the rows differ and say so
    version = day["pipe"].batch_info["version"]
    train = fs.training_set(
        day["root"] / "log", other, user_token_key=KEY, history_len=20, batches={version: cat}
    )
    assert int(train.schema.metadata[b"fyp.missing_items"]) > 0
    served = fs.served_features(day["root"] / "log")
    a = fs.features_matrix(served)
    b = fs.features_matrix(train)
    assert a.shape == b.shape
    assert not np.array_equal(np.sort(a, axis=0), np.sort(b, axis=0))


def test_registry_and_errors(tmp_path) -> None:
    reg = fs.registry()
    assert {r["tier"] for r in reg} == {"request", "real_time", "near_real_time", "batch"}
    assert all(r["version"] >= 1 and r["doc"] for r in reg)
    names = fs.feature_names(8)
    assert len(names) == len(set(names))
    assert fs.categorical_features(8) == ["u_has_long"]
    with pytest.raises(FileNotFoundError, match="feature_events"):
        fs.training_set(tmp_path, None, user_token_key=KEY)
    with pytest.raises(ValueError, match="differ"):
        fs.features_matrix(pa.table({"features": pa.array([[1.0], [1.0, 2.0]])}))


def test_freshness_per_tier_with_alert_at_twice_the_cadence(day) -> None:
    pipe, cat = day["pipe"], day["cat"]
    end = day["end"] + 60.0
    f = pipe.freshness(now=end)
    assert set(f) == {"real_time", "near_real_time", "batch"}
    # the day's last engagement came within a minute of its last request
    assert f["real_time"]["age_s"] < 60.0
    assert f["batch"]["age_s"] == pytest.approx(end - cat.as_of)
    for tier in f.values():
        assert tier["alert"] == (tier["age_s"] > 2 * tier["cadence_s"])
        assert np.isfinite(tier["p99_age_s"])
    later = pipe.freshness(now=cat.as_of + 3 * 86400.0)
    assert later["real_time"]["alert"] and later["near_real_time"]["alert"]
    assert later["batch"]["alert"]  # three days > 2 x one day


def test_parity_report_over_the_served_log(day) -> None:
    """The replayed training set has no skew against the served log; a training set built with
    a different short window (a definition drifting offline) is flagged on short-window
    features only, the short-window impression count among them."""
    logdir = day["root"] / "log"
    names = fs.feature_names(16)
    served = (fs.features_matrix(fs.served_features(logdir)), names)
    cat = fs.categorical_features(16)
    train = fs.training_set(logdir, day["cat"], user_token_key=KEY, history_len=20)
    same = fs.parity_report((fs.features_matrix(train), names), served, categorical=cat)
    assert same.flagged == []
    drift = fs.training_set(
        logdir, day["cat"], user_token_key=KEY, history_len=20, counter_windows=(900.0, 86400.0)
    )
    rep = fs.parity_report((fs.features_matrix(drift), names), served, categorical=cat)
    short = {"i_log_imp_s", "i_compl_rate_s", "i_like_rate_s", "t_compl_rate_s", "t_trend"}
    assert "i_log_imp_s" in rep.flagged
    assert set(rep.flagged) <= short, rep.to_markdown()


def test_training_set_and_served_log_share_one_feature_names_encoding(day) -> None:
    """`fyp.feature_names` is a JSON list in both, so the served-log reader reads either."""
    from fyp_core.parity import served_features_matrix

    logdir = day["root"] / "log"
    names = fs.feature_names(16)
    train = fs.training_set(logdir, day["cat"], user_token_key=KEY, history_len=20)
    t_mat, t_names = served_features_matrix(train)
    s_mat, s_names = served_features_matrix(fs.served_features(logdir))
    assert t_names == s_names == names
    assert t_mat.shape == s_mat.shape == (day["served"], len(names))
    assert np.array_equal(t_mat, fs.features_matrix(train))


def test_concurrent_batch_updates_lose_nothing(day) -> None:
    import threading

    pipe = day["pipe"]
    before = pipe.batch_info

    def worker(k: int) -> None:
        for i in range(25):
            base = 10**9 + k * 1000 + i
            pipe.set_creator_authority(np.array([base], dtype=np.uint64), np.array([0.5]))
            pipe.set_user_embeddings([f"batch-user-{k}-{i}"], np.ones((1, 16), np.float32))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = pipe.batch_info
    assert after["n_creators"] == before["n_creators"] + 100
    assert after["n_users"] == before["n_users"] + 100
    with pytest.raises(ValueError, match="NaN"):
        pipe.set_creator_authority(np.array([1], dtype=np.uint64), np.array([np.nan]))
    with pytest.raises(ValueError, match="dim"):
        pipe.load_batch("v", 0.0, user_ids=["x"], user_embeddings=np.ones((1, 3), np.float32))
