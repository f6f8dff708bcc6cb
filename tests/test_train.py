"""The trainers (fyp_core.train) on a small simulated log: the exported ranker equals a forward
pass of the trained parameters, survives the model file, beats the hand-made weights on the next
day's impressions, and bad training sets are refused before any training step."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip(
    "jax",
    reason="fyp_core.train needs the 'train' extra (jax + optax): "
    "pip install 'fyp-core[train]' -- the trainer tests cannot run without it",
)
pytest.importorskip("optax", reason="fyp_core.train needs the 'train' extra (jax + optax)")

from fyp_core import MlpRanker  # noqa: E402
from fyp_core import features as fs  # noqa: E402
from fyp_core.loop import sim  # noqa: E402
from fyp_core.loop.config import LoopConfig  # noqa: E402
from fyp_core.synth import TASKS, demo_ranker_weights  # noqa: E402
from fyp_core.train import _mlp, fit_ranker, model_feature_set_version, train_ranker  # noqa: E402
from fyp_core.train import ranker as ranker_mod  # noqa: E402
from fyp_core.train.two_tower import (  # noqa: E402
    _log_q,
    fit_two_tower,
    item_tower_inputs,
    l2_rows,
    recall_at_k,
    user_tower_inputs,
)

CFG = LoopConfig(
    items=3000,
    users=200,
    dim=16,
    creators=300,
    topics=20,
    requests_per_day=700,
    slots=10,
    candidates=150,
    uploads_per_day=30,
    hidden=(32, 16),
    epochs=12,
)


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    """Two simulated days served by the hand-made ranker: their training sets."""
    root = tmp_path_factory.mktemp("train")
    env = sim.build(CFG, str(root / "log"))
    rng = np.random.default_rng(3)
    tables = []
    for d in range(2):
        served = sim.serve_day(env, CFG, d, rng)
        env["log"].flush()
        tables.append(
            fs.training_set(
                env["log"].root,
                env["catalogue"],
                user_token_key=sim.KEY,
                history_len=CFG.history_len,
                request_ids=served.request_ids,
            )
        )
    fsv = env["pipe"].feature_set_version
    env["pipe"].close()
    return {"tables": tables, "fsv": fsv, "root": root}


def _apply_outputs(z: np.ndarray, outputs: list[str]) -> np.ndarray:
    out = z.copy()
    for j, o in enumerate(outputs):
        if o == "sigmoid":
            out[:, j] = 1.0 / (1.0 + np.exp(-z[:, j]))
        elif o == "softplus":
            out[:, j] = np.logaddexp(z[:, j], 0.0)
    return out


def test_exported_ranker_equals_a_forward_pass_of_the_trained_params(days, tmp_path) -> None:
    table, fsv = days["tables"][0], days["fsv"]
    fit = fit_ranker(table, feature_set_version=fsv, hidden=(32, 16), epochs=6, version="t-1")
    x = fs.features_matrix(table)
    ref = _apply_outputs(
        _mlp.forward_numpy(fit.params, (x - fit.mean) / fit.scale), fit.ranker.outputs
    )
    trained = [TASKS.index(t) for t in fit.trained_tasks]
    got = fit.ranker.predict(x)
    np.testing.assert_allclose(got[:, trained], ref[:, trained], rtol=2e-4, atol=2e-4)
    # the unlabeled task ("comment") is a constant prior, not noise
    assert "comment" not in fit.trained_tasks
    assert np.ptp(got[:, TASKS.index("comment")]) == 0.0
    path = tmp_path / "ranker.safetensors"
    fit.ranker.save(path)
    loaded = MlpRanker.load(path)
    assert loaded.version == "t-1" and loaded.task_names == list(TASKS)
    assert model_feature_set_version(loaded) == fsv
    np.testing.assert_array_equal(loaded.predict(x), got)
    assert fit.history and 0 <= fit.best_epoch < len(fit.history)
    assert fit.n_train + fit.n_holdout == table.num_rows


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    pos = y.astype(bool)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_trained_ranker_beats_the_hand_made_weights_on_the_next_day(days) -> None:
    day0, day1 = days["tables"]
    ranker = train_ranker(
        day0, feature_set_version=days["fsv"], hidden=(64, 32), epochs=40, batch_size=64
    )
    w, b, o = demo_ranker_weights(CFG.dim, hidden=(32, 16))
    hand = MlpRanker(w, b, outputs=o, task_names=list(TASKS))
    x = fs.features_matrix(day1)
    y = np.asarray(day1.column("completed").to_numpy(zero_copy_only=False), dtype=np.float64)
    p_t, p_h = ranker.predict(x)[:, 0], hand.predict(x)[:, 0]
    assert _log_loss(y, p_t) < _log_loss(y, p_h)
    assert _auc(y, p_t) > _auc(y, p_h)


def _no_training(monkeypatch) -> None:
    def boom(*a, **k):
        raise AssertionError("training started on a training set that should be refused")

    monkeypatch.setattr(ranker_mod, "_train_loop", boom)


def test_bad_training_sets_are_refused_before_training(days, monkeypatch) -> None:
    table, fsv = days["tables"][0], days["fsv"]
    _no_training(monkeypatch)
    with pytest.raises(ValueError, match="feature set .* serving feature set"):
        fit_ranker(table, feature_set_version="not-" + fsv)
    with pytest.raises(ValueError, match="empty"):
        fit_ranker(table.slice(0, 0), feature_set_version=fsv)
    i = table.column_names.index("completed")
    flat = table.set_column(i, "completed", pa.array(np.zeros(table.num_rows, dtype=bool)))
    with pytest.raises(ValueError, match="'completed'.*single-class"):
        fit_ranker(flat, feature_set_version=fsv)
    x = fs.features_matrix(table).copy()
    names = fs.feature_names(CFG.dim)
    x[5, names.index("i_like_rate_l")] = np.nan
    n, d = x.shape
    col = pa.ListArray.from_arrays(
        pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)),
        pa.array(x.reshape(-1), type=pa.float32()),
    )
    nan = table.set_column(table.column_names.index("features"), "features", col)
    nan = nan.replace_schema_metadata(table.schema.metadata)
    with pytest.raises(ValueError, match=r"row 5, column \d+ \(i_like_rate_l\)"):
        fit_ranker(nan, feature_set_version=fsv)
    with pytest.raises(ValueError, match="hidden"):
        fit_ranker(table, feature_set_version=fsv, hidden=())


def test_two_tower_exports_towers_the_core_loads(days, tmp_path) -> None:
    table = days["tables"][0]
    fit = fit_two_tower(
        table,
        feature_set_version=days["fsv"],
        epochs=4,
        user_hidden=(32,),
        item_hidden=(32,),
        temperature=0.1,
        version="tt-test",
    )
    x = fs.features_matrix(table)
    names = fs.feature_names(CFG.dim)
    u, v = user_tower_inputs(x, names), item_tower_inputs(x, names)
    assert u.shape[1] == 2 * CFG.dim + 4 and v.shape[1] == CFG.dim + 3
    for tower, inp, side in ((fit.user_tower, u, "user"), (fit.item_tower, v, "item")):
        assert tower.outputs == ["identity"] * CFG.dim and tower.input_dim == inp.shape[1]
        path = tmp_path / f"{side}.safetensors"
        tower.save(path)
        loaded = MlpRanker.load(path)
        assert loaded.version == f"tt-test-{side}"
        assert model_feature_set_version(loaded) == days["fsv"]
        np.testing.assert_array_equal(loaded.predict(inp), tower.predict(inp))
    ref = _mlp.forward_numpy(fit.user_params, (u - fit.user_mean) / fit.user_scale)
    np.testing.assert_allclose(fit.user_tower.predict(u), ref, rtol=2e-4, atol=2e-4)
    content = fit_two_tower(table, feature_set_version=days["fsv"], item_tower="content", epochs=2)
    np.testing.assert_allclose(content.item_tower.predict(v), v[:, : CFG.dim], atol=1e-6)
    with pytest.raises(ValueError, match="serving feature set"):
        fit_two_tower(table, feature_set_version="other", epochs=1)
    with pytest.raises(ValueError, match="temperature"):
        fit_two_tower(table, feature_set_version=days["fsv"], temperature=0.0)


def test_pointwise_towers_serve_and_learn_the_taste_direction(days) -> None:
    """The pointwise objective (every impression, skipped items the negatives): the item tower
    over the content embedding alone has the input ``set_retrieval`` embeds uploads with, the
    exported towers are forward passes of the trained parameters, and the loss falls."""
    table = pa.concat_tables(days["tables"])
    fit = fit_two_tower(
        table,
        feature_set_version=days["fsv"],
        objective="pointwise",
        item_stats=False,
        long_term="served",
        epochs=6,
        user_hidden=(32,),
        item_hidden=(32,),
    )
    assert fit.n_examples > 0.8 * table.num_rows  # every impression, not only the engaged
    assert fit.item_tower.input_dim == CFG.dim and fit.user_tower.input_dim == 2 * CFG.dim + 4
    x = fs.features_matrix(table)
    names = fs.feature_names(CFG.dim)
    v = item_tower_inputs(x, names)[:, : CFG.dim]
    mu, sd = v.mean(0), v.std(0)
    ref = _mlp.forward_numpy(fit.item_params, (v - mu) / np.where(sd > 1e-6, sd, 1.0))
    np.testing.assert_allclose(fit.item_tower.predict(v), ref, rtol=2e-3, atol=2e-3)
    h = [e["holdout"] for e in fit.history]
    assert min(h) < h[0] and np.isfinite(h).all()
    with pytest.raises(ValueError, match="objective must be one of"):
        fit_two_tower(table, feature_set_version=days["fsv"], objective="listwise")
    with pytest.raises(ValueError, match="row_weights must be"):
        fit_two_tower(
            table, feature_set_version=days["fsv"], objective="pointwise", row_weights=[1.0]
        )


def test_residual_towers_export_as_plain_mlps_adding_the_identity(days) -> None:
    """A residual tower is its MLP plus the identity on ``u_emb`` (user) / the content
    embedding (item); the exported file is a plain relu MLP computing exactly that."""
    table = days["tables"][1]
    u = user_tower_inputs(fs.features_matrix(table), fs.feature_names(CFG.dim))
    v = item_tower_inputs(fs.features_matrix(table), fs.feature_names(CFG.dim))[:, : CFG.dim]
    arm = np.zeros(table.num_rows)
    arm[::20] = 1.0
    for hidden in ((24,), (24, 12)):
        fit = fit_two_tower(
            table,
            feature_set_version=days["fsv"],
            objective="pointwise",
            residual=True,
            item_stats=False,
            long_term="served",
            row_weights=1.0 + 9.0 * arm,
            epochs=3,
            user_hidden=hidden,
            item_hidden=hidden,
        )
        assert fit.user_tower.input_dim == 2 * CFG.dim + 4 and fit.user_tower.n_tasks == CFG.dim
        mlp = _mlp.forward_numpy(fit.user_params, (u - fit.user_mean) / fit.user_scale)
        np.testing.assert_allclose(fit.user_tower.predict(u), mlp + u[:, : CFG.dim], atol=5e-4)
        mu, sd = v.mean(0), v.std(0)
        item = _mlp.forward_numpy(fit.item_params, (v - mu) / np.where(sd > 1e-6, sd, 1.0))
        np.testing.assert_allclose(fit.item_tower.predict(v), item + v, atol=5e-3)
    with pytest.raises(ValueError, match="residual towers need"):
        fit_two_tower(table, feature_set_version=days["fsv"], residual=True)


def test_log_q_is_the_positive_share_and_recall_counts_the_true_top_k() -> None:
    lq = _log_q(np.array([7, 7, 7, 9], dtype=np.int32))
    np.testing.assert_allclose(np.exp(lq), [0.75, 0.75, 0.75, 0.25], rtol=1e-6)
    rng = np.random.default_rng(0)
    users = l2_rows(rng.standard_normal((20, 8)))
    items = l2_rows(rng.standard_normal((300, 8)))
    truth = users @ items.T
    assert recall_at_k(users, items, truth, k=10) == 1.0
    assert recall_at_k(users, l2_rows(rng.standard_normal((300, 8))), truth, k=10) < 0.3
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k(users, items, truth, k=0)


def test_pooled_history_is_point_in_time(days) -> None:
    from fyp_core.train.two_tower import pooled_history

    table = days["tables"][0]
    x = fs.features_matrix(table)
    names = fs.feature_names(CFG.dim)
    emb = x[:, [i for i, n in enumerate(names) if n.startswith("i_emb_")]].astype(np.float64)
    tok = np.asarray(table.column("user_token").to_pylist())
    ts = np.asarray(table.column("ts").cast("int64").to_numpy())
    done = np.asarray(table.column("completed").to_numpy(zero_copy_only=False))
    ph = pooled_history(table)
    whole = pooled_history(table, point_in_time=False)
    rng = np.random.default_rng(0)
    for r in rng.choice(table.num_rows, 25, replace=False):
        before = (tok == tok[r]) & (ts < ts[r]) & done  # never the row's own request
        want = emb[before].sum(0)
        want = want / np.linalg.norm(want) if before.any() else want
        np.testing.assert_allclose(ph[r], want, atol=1e-5)
        every = emb[(tok == tok[r]) & done].sum(0)
        np.testing.assert_allclose(whole[r], every / np.linalg.norm(every), atol=1e-5)
