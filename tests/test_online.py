"""Online fine-tuning (``fyp_core.train.finetune_ranker``, ``fyp_core.loop.online``): the warm
start starts from the given weights, bad inputs are refused before any step, the loop syncs a
new online shadow each chunk without touching live or the exploration arm, and no log row is
lost while serving in chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("jax", reason="fyp_core.train needs the 'train' extra (jax + optax)")
pytest.importorskip("optax", reason="fyp_core.train needs the 'train' extra (jax + optax)")

from fyp_core import MlpRanker, analytics  # noqa: E402
from fyp_core import features as fs  # noqa: E402
from fyp_core.loop import LoopConfig, run, sim  # noqa: E402
from fyp_core.synth import DAY, TASKS, demo_ranker_weights  # noqa: E402
from fyp_core.train import finetune_ranker, fit_ranker, model_feature_set_version  # noqa: E402
from fyp_core.train import ranker as ranker_mod  # noqa: E402

SMALL = dict(
    items=3000,
    users=200,
    dim=16,
    creators=300,
    topics=20,
    requests_per_day=400,
    slots=10,
    candidates=150,
    uploads_per_day=30,
    hidden=(32, 16),
    epochs=6,
    two_tower_every=0,
    serve_towers=False,
)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Two simulated days served by the hand-made ranker, their training sets, a ranker
    trained on the first."""
    cfg = LoopConfig(**SMALL)
    env = sim.build(cfg, str(tmp_path_factory.mktemp("online") / "log"))
    rng = np.random.default_rng(5)
    tables = []
    for d in range(2):
        served = sim.serve_day(env, cfg, d, rng)
        env["log"].flush()
        tables.append(
            fs.training_set(
                env["log"].root,
                env["catalogue"],
                user_token_key=sim.KEY,
                history_len=cfg.history_len,
                request_ids=served.request_ids,
            )
        )
    fsv = env["pipe"].feature_set_version
    env["pipe"].close()
    fit = fit_ranker(tables[0], feature_set_version=fsv, hidden=(32, 16), epochs=5, version="d0")
    return {"tables": tables, "fsv": fsv, "fit": fit}


def _loss(model: MlpRanker, table: pa.Table, delta: float = 5.0, watch_w: float = 0.05) -> float:
    """The trainer's loss of a model file's predictions, in numpy (BCE on the binary tasks with
    labels, Huber on watch seconds weighted watch_w)."""
    p = model.predict(fs.features_matrix(table)).astype(np.float64)
    total = np.zeros(table.num_rows)
    for j, t in enumerate(model.task_names):
        col = ranker_mod._data.TASK_LABELS.get(t)
        if col is None:
            continue
        y = np.asarray(table.column(col).to_numpy(zero_copy_only=False), np.float64)
        if t == "watch_seconds":
            r = np.abs(p[:, j] - y)
            total += watch_w * np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta))
        else:
            q = np.clip(p[:, j], 1e-12, 1 - 1e-12)
            total += -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return float(total.mean())


def test_warm_start_starts_from_the_base_weights(days) -> None:
    fit, day1, fsv = days["fit"], days["tables"][1], days["fsv"]
    x = fs.features_matrix(day1)
    want = _loss(fit.ranker, day1)
    # from the model file (weights unfolded over the rows' standardisation) and from the fit
    for base in (fit.ranker, fit):
        tiny = finetune_ranker(base, day1, feature_set_version=fsv, steps=1, lr=1e-9)
        assert tiny.start_loss == pytest.approx(want, rel=1e-4)
        np.testing.assert_allclose(
            tiny.ranker.predict(x), fit.ranker.predict(x), rtol=1e-3, atol=1e-4
        )
    # the hand-made (untagged) weights are a valid base too
    w, b, o = demo_ranker_weights(16, hidden=(32, 16), seed=0)
    hand = MlpRanker(w, b, outputs=o, task_names=list(TASKS), version="hand")
    ft = finetune_ranker(hand, day1, feature_set_version=fsv, steps=1, lr=1e-9)
    assert ft.start_loss == pytest.approx(_loss(hand, day1), rel=1e-4)
    # real steps lower the loss on the rows, and export a new version of the serving feature set
    ft = finetune_ranker(fit, day1, feature_set_version=fsv, steps=20, lr=2e-3, version="ft-1")
    assert ft.history[0]["end"] < ft.start_loss
    assert ft.ranker.version == "ft-1" and ft.ranker.task_names == list(TASKS)
    assert model_feature_set_version(ft.ranker) == fsv
    assert _loss(ft.ranker, day1) == pytest.approx(ft.history[0]["end"], rel=1e-3)
    # the unlabeled head ("comment") keeps the base's constant prior
    c = TASKS.index("comment")
    np.testing.assert_allclose(ft.ranker.predict(x)[:, c], fit.ranker.predict(x)[:, c], atol=1e-6)
    # the optimizer state continues into the next fine-tune of the chain
    again = finetune_ranker(ft, day1, feature_set_version=fsv, steps=2, opt_state=ft.opt_state)
    assert again.start_loss == pytest.approx(ft.history[0]["end"], rel=1e-4)
    assert again.ranker.version != ft.ranker.version


def test_bad_inputs_are_refused_before_any_step(days, monkeypatch) -> None:
    fit, day1, fsv = days["fit"], days["tables"][1], days["fsv"]

    def boom(*a, **k):
        raise AssertionError("fine-tuning started on inputs that should be refused")

    monkeypatch.setattr(ranker_mod, "_compiled", boom)
    with pytest.raises(ValueError, match="feature set .* serving feature set"):
        finetune_ranker(fit, day1, feature_set_version="not-" + fsv)
    other = MlpRanker(
        fit.ranker.weights(),
        fit.ranker.biases(),
        outputs=fit.ranker.outputs,
        task_names=list(TASKS),
        input_schema=[("input/fs=other", fit.ranker.input_dim)],
    )
    with pytest.raises(ValueError, match="base model .* feature set 'other'"):
        finetune_ranker(other, day1, feature_set_version=fsv)
    with pytest.raises(ValueError, match="empty"):
        finetune_ranker(fit, day1.slice(0, 0), feature_set_version=fsv)
    x = fs.features_matrix(day1).copy()
    x[3, 7] = np.nan
    n, d = x.shape
    col = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)),
        pa.array(x.reshape(-1), type=pa.float32()),
    )
    nan = day1.set_column(day1.column_names.index("features"), "features", col)
    with pytest.raises(ValueError, match=r"row 3, column 7"):
        finetune_ranker(
            fit, nan.replace_schema_metadata(day1.schema.metadata), feature_set_version=fsv
        )
    narrow = MlpRanker(
        [w[1:] if i == 0 else w for i, w in enumerate(fit.ranker.weights())],
        fit.ranker.biases(),
        outputs=fit.ranker.outputs,
        task_names=list(TASKS),
    )
    with pytest.raises(ValueError, match="inputs"):
        finetune_ranker(narrow, day1, feature_set_version=fsv)
    with pytest.raises(ValueError, match="steps"):
        finetune_ranker(fit, day1, feature_set_version=fsv, steps=0)


def test_serving_a_day_in_pieces_draws_the_same_traffic(tmp_path) -> None:
    cfg = LoopConfig(**{**SMALL, "requests_per_day": 60})
    got = []
    for k, pieces in enumerate((1, 5)):
        env = sim.build(cfg, str(tmp_path / f"log{k}"))
        rng = np.random.default_rng(9)
        plan = sim.plan_day(env, cfg, 0, rng)
        parts = [
            sim.serve_until(env, cfg, plan, env["t0"] + (i + 1) * DAY / pieces, rng)
            for i in range(pieces)
        ]
        got.append(
            (
                [r for p in parts for r in p.request_ids],
                np.concatenate([p.item_rows for p in parts]),
                np.concatenate([p.finished for p in parts]),
            )
        )
        env["pipe"].close()
    assert got[0][0] == got[1][0] and len(got[0][0]) == 60
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_array_equal(got[0][2], got[1][2])


@pytest.fixture(scope="module")
def online(tmp_path_factory):
    """Two loop days with online fine-tuning every 6 simulated hours (4 chunks a day)."""
    root = tmp_path_factory.mktemp("online-loop")
    shadows: list[list[str]] = []

    models: dict = {}
    state: dict = {}

    def inspect(rec: dict, env: dict) -> None:
        shadows.append(list(env["pipe"].model_versions["shadows"]))
        models.update(env.get("online_models", {}))
        state.update(catalogue=env["catalogue"], batches=env.get("batches"))

    recs = run(
        days=2,
        seed=3,
        logdir=str(root / "log"),
        inspect=inspect,
        online_every_minutes=360,
        **SMALL,
    )
    return {
        "records": recs,
        "log": str(root / "log"),
        "shadows": shadows,
        "models": models,
        **state,
    }


def test_the_online_shadow_changes_each_chunk_live_and_exploration_untouched(online) -> None:
    day0, day1 = (r["online"] for r in online["records"])
    assert day0["base"] is None and day0["synced"] == []  # no daily model yet
    assert day1["base"] == "loop-s3-d0" and not day1["errors"]
    assert day1["synced"] == [f"online-s3-d1-c{k}" for k in range(4)]
    assert [c["chunk"] for c in day1["chunks"]] == [1, 2, 3]
    assert {"auc_online", "auc_daily", "ll_online", "top_true_online"} <= set(day1["day"])
    # the day's last online shadow left the set; the daily candidate is still shadowed
    assert not any(v.startswith("online-") for s in online["shadows"] for v in s)
    scores = analytics.read_table(
        online["log"], "ranker_scores", columns=["impression_id", "model_version", "is_shadow"]
    ).to_pydict()
    imp_t = analytics.read_table(
        online["log"], "impressions", columns=["impression_id", "source", "model_version", "ts"]
    )
    imp = imp_t.to_pydict()
    secs = imp_t.column("ts").cast(pa.timestamp("us")).cast(pa.int64()).to_numpy() / 1e6
    # every online version scored (as a shadow) only impressions of the chunk after its own
    chunk_at = dict(zip(imp["impression_id"], (secs % DAY) // (6 * 3600)))
    chunk_of: dict[str, set] = {}
    for i, v, s in zip(scores["impression_id"], scores["model_version"], scores["is_shadow"]):
        if v.startswith("online-"):
            assert s
            chunk_of.setdefault(v, set()).add(int(chunk_at[i]))
    assert set(chunk_of) == set(day1["synced"][:-1])
    for v, chunks in chunk_of.items():
        assert chunks == {int(v.rsplit("-c", 1)[1]) + 1}
    # no online version ever served an impression, and exploration rows carry the live
    # version, also for the 1% layer's users whose ranked slots the daily candidate ranks
    live = {r["live_version"] for r in online["records"]}
    assert live == {"day0-handmade"}
    explored = {v for s, v in zip(imp["source"], imp["model_version"]) if s == "exploration"}
    assert explored == live
    assert not any(v.startswith("online-") for v in imp["model_version"])


def test_the_synced_weights_are_what_the_shadow_scored(online) -> None:
    """Parameter sync: each online version's logged predictions are its fine-tuned model's
    predictions on the served feature vectors of the impressions it scored."""
    scores = analytics.read_table(
        online["log"], "ranker_scores", columns=["impression_id", "model_version", "pred_finish"]
    ).to_pydict()
    rows = fs.training_set(
        online["log"],
        online["catalogue"],
        user_token_key=sim.KEY,
        history_len=LoopConfig().history_len,
        batches=online["batches"],
    )
    row_of = {imp: i for i, imp in enumerate(rows.column("impression_id").to_pylist())}
    x = fs.features_matrix(rows)
    checked = 0
    for v, model in online["models"].items():
        pairs = [
            (row_of[i], p)
            for i, m, p in zip(
                scores["impression_id"], scores["model_version"], scores["pred_finish"]
            )
            if m == v
        ]
        if not pairs:  # the day's last version is removed before it scores
            continue
        idx, logged = (np.array(a) for a in zip(*pairs))
        np.testing.assert_allclose(model.predict(x[idx])[:, 0], logged, rtol=1e-4, atol=1e-5)
        checked += 1
    assert checked == len(online["models"]) - 1 == 3


def test_no_log_row_is_lost_serving_in_chunks(online) -> None:
    imp = analytics.read_table(online["log"], "impressions", columns=["impression_id"])
    ids = imp.column("impression_id").to_pylist()
    assert len(ids) == len(set(ids)) == sum(r["impressions"] for r in online["records"])
    day1 = online["records"][1]["online"]
    assert day1["day"]["n"] == sum(c["n"] for c in day1["chunks"])


def test_loop_config_refuses_bad_online_values() -> None:
    with pytest.raises(ValueError, match="online_every_minutes"):
        LoopConfig(online_every_minutes=-5)
    with pytest.raises(ValueError, match="online_steps"):
        LoopConfig(online_steps=0)
    assert LoopConfig().online_every_minutes == 0
