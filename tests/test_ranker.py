"""MlpRanker: predictions vs a float64 numpy forward pass, predict_request, determinism,
threads, the value model, feature assembly and bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ranker_ref import forward, max_rel_err, random_mlp

from fyp_core import MlpRanker, assemble_features

KERNELS = MlpRanker.kernel_info()["available"]
ACTS = ["relu", "gelu", "silu"]
OUTS = ["identity", "sigmoid", "softplus"]


def shapes(seed: int):
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 5))
    dims = [int(rng.integers(1, 90))] + [int(rng.integers(1, 70)) for _ in range(depth)]
    n = int(rng.choice([1, 2, 15, 16, 17, 31, 32, 33, 63, 100, 257]))
    return rng, dims, n


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", range(30))
def test_matches_float64_numpy(kernel, seed):
    rng, dims, n = shapes(seed)
    ws, bs = random_mlp(rng, dims)
    activation = ACTS[seed % 3]
    outputs = [OUTS[(seed + t) % 3] for t in range(dims[-1])]
    cross = []
    if seed % 4 == 0:
        d = dims[0]
        cross = [
            (
                (rng.standard_normal((d, d)) / d).astype(np.float32),
                (rng.standard_normal(d) * 0.1).astype(np.float32),
            )
            for _ in range(2)
        ]
    x = rng.standard_normal((n, dims[0])).astype(np.float32)
    m = MlpRanker(ws, bs, activation, outputs, version="t", cross_layers=cross, kernel=kernel)
    got = m.predict(x)
    want = forward(ws, bs, x, activation, outputs, cross)
    assert got.shape == (n, dims[-1]) and got.dtype == np.float32
    assert max_rel_err(got, want) <= 1e-4, (dims, n, activation)


def test_ranker_network_shape_all_kernels():
    rng = np.random.default_rng(1)
    dims = [256, 512, 256, 128, 6]
    ws, bs = random_mlp(rng, dims)
    outs = ["sigmoid"] * 4 + ["softplus", "identity"]
    x = rng.standard_normal((333, 256)).astype(np.float32)
    want = forward(ws, bs, x, "relu", outs)
    for k in KERNELS:
        got = MlpRanker(ws, bs, outputs=outs, kernel=k).predict(x)
        assert max_rel_err(got, want) <= 1e-4, k


@pytest.mark.parametrize("du", [0, 1, 7, 128, 255, 256])
@pytest.mark.parametrize("with_cross", [False, True])
def test_predict_request_equals_predict_on_concatenation(du, with_cross):
    rng = np.random.default_rng(du)
    ws, bs = random_mlp(rng, [256, 64, 33, 5])
    eye = (np.eye(256, dtype=np.float32) * 0.01, np.zeros(256, np.float32))
    cross = [eye] if with_cross else None
    m = MlpRanker(ws, bs, "gelu", ["sigmoid"] * 5, cross_layers=cross)
    user = rng.standard_normal(du).astype(np.float32)
    items = rng.standard_normal((77, 256 - du)).astype(np.float32)
    full = np.hstack([np.broadcast_to(user, (77, du)), items])
    a, b = m.predict_request(user, items), m.predict(full)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=0)
    # Same summation order and rounding: in fact bit-identical.
    np.testing.assert_array_equal(a, b)


def test_deterministic_and_row_independent():
    rng = np.random.default_rng(2)
    ws, bs = random_mlp(rng, [40, 30, 3])
    m = MlpRanker(ws, bs)
    x = rng.standard_normal((101, 40)).astype(np.float32)
    first = m.predict(x)
    for _ in range(3):
        np.testing.assert_array_equal(m.predict(x), first)
    # a row scores the same alone, in a batch, or shuffled
    perm = rng.permutation(101)
    np.testing.assert_array_equal(m.predict(x[perm]), first[perm])
    np.testing.assert_array_equal(m.predict(x[57:58]), first[57:58])


def test_four_threads_concurrent_predicts():
    rng = np.random.default_rng(3)
    ws, bs = random_mlp(rng, [128, 96, 4])
    m = MlpRanker(ws, bs)
    sizes = rng.integers(1, 300, size=8)
    xs = [rng.standard_normal((int(k), 128)).astype(np.float32) for k in sizes]
    want = [m.predict(x) for x in xs]
    errors: list[BaseException] = []

    def work(tid: int) -> None:
        try:
            for it in range(40):
                i = (tid + it) % len(xs)
                np.testing.assert_array_equal(m.predict(xs[i]), want[i])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_value_model_weights_change_at_run_time():
    rng = np.random.default_rng(4)
    ws, bs = random_mlp(rng, [8, 3])
    m = MlpRanker(ws, bs, task_weights=[1.0, 0.5, -2.0])
    p = m.predict(rng.standard_normal((10, 8)).astype(np.float32))
    np.testing.assert_allclose(m.value(p), p @ np.array([1.0, 0.5, -2.0]), rtol=1e-6, atol=1e-6)
    m.task_weights = [0.0, 1.0, 0.0]
    np.testing.assert_array_equal(m.task_weights, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(m.value(p), p[:, 1], rtol=1e-6)
    np.testing.assert_allclose(m.value(p, [1, 1, 1]), p.sum(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="3 tasks"):
        m.task_weights = [1.0, 2.0]
    with pytest.raises(ValueError, match="task weights"):
        m.value(p, [1.0])


def test_metadata_and_defaults():
    rng = np.random.default_rng(5)
    ws, bs = random_mlp(rng, [6, 4, 2])
    m = MlpRanker(
        ws,
        bs,
        version="v9",
        task_names=["p_like", "watch"],
        input_schema=[("user", 2), ("item", 4)],
    )
    assert (m.version, m.task_names, m.outputs) == ("v9", ["p_like", "watch"], ["identity"] * 2)
    assert (m.input_dim, m.n_tasks, m.activation) == (6, 2, "relu")
    assert m.input_schema == [("user", 2), ("item", 4)]
    assert m.flops_per_row == 2 * (6 * 4 + 4 * 2)
    assert m.kernel in KERNELS and "v9" in repr(m)
    for a, b in zip(m.weights(), ws):
        np.testing.assert_array_equal(a, b)
    d = MlpRanker(ws, bs)
    assert d.task_names == ["task_0", "task_1"] and d.input_schema == [("features", 6)]
    np.testing.assert_array_equal(d.task_weights, [1.0, 1.0])


def test_bad_input():
    rng = np.random.default_rng(6)
    ws, bs = random_mlp(rng, [5, 4, 2])
    m = MlpRanker(ws, bs)
    with pytest.raises(ValueError, match="4 columns, the model expects 5"):
        m.predict(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="finite"):
        m.predict(np.array([[0, 1, np.nan, 0, 0]], np.float32))
    with pytest.raises(ValueError, match="finite"):
        m.predict(np.array([[0, 1, 0, np.inf, 0]], np.float32))
    with pytest.raises(ValueError, match="finite"):
        m.predict_request(np.array([np.nan], np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError):
        m.predict(np.array([["a"] * 5]))
    with pytest.raises(TypeError):
        m.predict(np.zeros((2, 5), np.complex64))
    with pytest.raises(ValueError, match="2-D"):
        m.predict(np.zeros((2, 5, 1), np.float32))
    with pytest.raises(ValueError, match="model expects 5"):
        m.predict_request(np.zeros(2, np.float32), np.zeros((3, 2), np.float32))
    # documented conversions and edge cases
    x = rng.standard_normal((3, 5))
    np.testing.assert_array_equal(m.predict(x), m.predict(x.astype(np.float32)))
    np.testing.assert_array_equal(m.predict(np.asfortranarray(x)), m.predict(x.astype(np.float32)))
    assert m.predict(np.zeros((0, 5), np.float32)).shape == (0, 2)
    assert m.predict_request(np.zeros(2, np.float32), np.zeros((0, 3), np.float32)).shape == (0, 2)
    assert m.predict(np.zeros(5, np.float32)).shape == (1, 2)  # a 1-D vector is one row


def test_bad_models():
    rng = np.random.default_rng(7)
    ws, bs = random_mlp(rng, [5, 4, 2])
    with pytest.raises(ValueError, match="previous layer has 4 outputs"):
        MlpRanker([ws[0], ws[0]], bs)
    with pytest.raises(ValueError, match="bias"):
        MlpRanker(ws, [bs[0], bs[0]])
    with pytest.raises(ValueError, match="one bias per layer"):
        MlpRanker(ws, bs[:1])
    with pytest.raises(ValueError, match="activation"):
        MlpRanker(ws, bs, "tanh")
    with pytest.raises(ValueError, match="output transform"):
        MlpRanker(ws, bs, outputs=["exp", "identity"])
    with pytest.raises(ValueError, match="2 tasks"):
        MlpRanker(ws, bs, outputs=["sigmoid"])
    with pytest.raises(ValueError, match="finite"):
        MlpRanker([np.full((5, 4), np.nan, np.float32), ws[1]], bs)
    with pytest.raises(ValueError, match="input_schema widths sum to 4"):
        MlpRanker(ws, bs, input_schema=[("a", 4)])
    with pytest.raises(ValueError, match="cross layer"):
        MlpRanker(ws, bs, cross_layers=[(np.zeros((5, 4), np.float32), np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match="kernel"):
        MlpRanker(ws, bs, kernel="neon")
    with pytest.raises(ValueError, match="at least one layer"):
        MlpRanker([], [])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    cols=st.integers(0, 12),
    dtype=st.sampled_from(["float32", "float64", "int32", "bool", "float16"]),
    poison=st.sampled_from([None, np.nan, np.inf, -np.inf, 1e30]),
)
def test_fuzz_predict_boundary(rows, cols, dtype, poison):
    m = MlpRanker([np.full((8, 3), 0.1, np.float32)], [np.zeros(3, np.float32)])
    x = np.ones((rows, cols)).astype(dtype)
    if poison is not None and x.size and x.dtype.kind == "f":
        x = x.astype(np.float64)
        x.flat[0] = poison
    try:
        out = m.predict(x)
    except (ValueError, TypeError):
        assert cols != 8 or (poison is not None and not np.isfinite(poison) and x.dtype.kind == "f")
        return
    assert cols == 8 and out.shape == (rows, 3) and np.isfinite(out).all()


def test_assemble_features_matches_numpy():
    rng = np.random.default_rng(8)
    user = rng.standard_normal(24).astype(np.float32)
    table = rng.standard_normal((1000, 40)).astype(np.float32)
    rows = rng.integers(0, 1000, size=300)
    dots = [(0, 0, 16), (16, 16, 8), (8, 32, 8)]
    got = assemble_features(user, table, rows, dots)
    crosses = [table[rows, io : io + n] @ user[uo : uo + n] for uo, io, n in dots]
    want = np.hstack([table[rows], np.stack(crosses, axis=1)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    full = assemble_features(user, table, rows, dots, include_user=True)
    np.testing.assert_array_equal(full[:, :24], np.broadcast_to(user, (300, 24)))
    np.testing.assert_array_equal(full[:, 24:], got)
    # feeds predict_request and predict identically
    ws, bs = random_mlp(rng, [24 + 40 + 3, 16, 2])
    m = MlpRanker(ws, bs)
    np.testing.assert_array_equal(m.predict_request(user, got), m.predict(full))
    with pytest.raises(ValueError, match="out of range"):
        assemble_features(user, table, [1000])
    with pytest.raises(ValueError, match="negative"):
        assemble_features(user, table, [-1])
    with pytest.raises(ValueError, match="overruns"):
        assemble_features(user, table, [0], [(20, 0, 8)])
    assert assemble_features(user, table, np.zeros(0, np.int64)).shape == (0, 40)


def test_with_kernel_agrees_across_kernels():
    rng = np.random.default_rng(9)
    ws, bs = random_mlp(rng, [70, 50, 13, 3])
    m = MlpRanker(ws, bs, "silu", ["sigmoid", "softplus", "identity"], version="k")
    x = rng.standard_normal((45, 70)).astype(np.float32)
    want = m.predict(x)
    for k in KERNELS:
        other = m.with_kernel(k)
        assert other.kernel == k and other.version == "k"
        np.testing.assert_allclose(other.predict(x), want, rtol=1e-4, atol=1e-5)
    info = MlpRanker.kernel_info()
    assert info["default"] in info["available"] and info["peak_gflops"] == {}
