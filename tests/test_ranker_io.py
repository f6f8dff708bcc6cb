"""Model import/export: ONNX in (checked against onnxruntime), ONNX out, PyTorch in (if
installed; it is an optional, multi-GB dependency)."""

from __future__ import annotations

import numpy as np
import pytest
from ranker_ref import forward, max_rel_err, random_mlp

from fyp_core import MlpRanker
from fyp_core.ranker_io import from_onnx, from_torch, to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def build_onnx(ws, bs, use_gemm: bool, final: str | None):
    nodes, inits, cur = [], [], "x"
    for i, (w, b) in enumerate(zip(ws, bs)):
        if use_gemm:  # torch.onnx style: weight stored (out, in) with transB=1
            inits += [
                numpy_helper.from_array(np.ascontiguousarray(w.T), f"W{i}"),
                numpy_helper.from_array(b, f"b{i}"),
            ]
            nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"b{i}"], [f"h{i}"], transB=1))
        else:
            inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
            nodes.append(helper.make_node("MatMul", [cur, f"W{i}"], [f"m{i}"]))
            nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"]))
        cur = f"h{i}"
        if i + 1 < len(ws):
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    if final:
        nodes.append(helper.make_node(final, [cur], ["y"]))
        cur = "y"
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, ws[0].shape[0]])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, [None, ws[-1].shape[1]])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("use_gemm", [True, False])
@pytest.mark.parametrize("final", [None, "Sigmoid", "Softplus"])
def test_onnx_import_matches_onnxruntime(use_gemm, final):
    rng = np.random.default_rng(0)
    ws, bs = random_mlp(rng, [37, 64, 19, 4])
    model = build_onnx(ws, bs, use_gemm, final)
    ranker = from_onnx(model, version="onnx-v1", task_names=["a", "b", "c", "d"])
    x = rng.standard_normal((123, 37)).astype(np.float32)
    want = session(model).run(None, {"x": x})[0]
    got = ranker.predict(x)
    assert max_rel_err(got, want.astype(np.float64)) <= 1e-4
    names = {None: "identity", "Sigmoid": "sigmoid", "Softplus": "softplus"}
    assert ranker.outputs == [names[final]] * 4
    assert from_onnx(model.SerializeToString()).n_tasks == 4


def test_onnx_import_from_path_and_errors(tmp_path):
    rng = np.random.default_rng(1)
    ws, bs = random_mlp(rng, [5, 3])
    model = build_onnx(ws, bs, True, None)
    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    assert from_onnx(p).input_dim == 5
    model.graph.node.append(helper.make_node("Tanh", ["h0"], ["t"]))
    with pytest.raises(ValueError, match="unsupported ONNX op 'Tanh'"):
        from_onnx(model)


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu"])
def test_to_onnx_round_trip_with_cross_and_mixed_outputs(activation):
    rng = np.random.default_rng(2)
    ws, bs = random_mlp(rng, [12, 20, 3])
    cross = [
        (
            rng.standard_normal((12, 12)).astype(np.float32) * 0.2,
            rng.standard_normal(12).astype(np.float32) * 0.1,
        )
    ]
    outs = ["sigmoid", "softplus", "identity"]
    r = MlpRanker(ws, bs, activation, outs, cross_layers=cross)
    x = rng.standard_normal((50, 12)).astype(np.float32)
    onnx_out = session(to_onnx(r)).run(None, {"features": x})[0]
    want = forward(ws, bs, x, activation, outs, cross)
    assert max_rel_err(onnx_out.astype(np.float64), want) <= 1e-4
    assert max_rel_err(r.predict(x), want) <= 1e-4
    if activation == "relu":  # plain chains re-import
        plain = MlpRanker(ws, bs, outputs=["sigmoid"] * 3)
        back = from_onnx(to_onnx(plain))
        np.testing.assert_allclose(back.predict(x), plain.predict(x), rtol=1e-6, atol=1e-7)


def test_from_torch_sequential():
    torch = pytest.importorskip("torch")  # not installed in CI: a multi-GB optional dependency
    nn = torch.nn
    torch.manual_seed(0)
    seq = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3), nn.Sigmoid()
    )
    r = from_torch(seq, version="torch-v1")
    x = np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32)
    with torch.no_grad():
        want = seq(torch.from_numpy(x)).numpy()
    assert r.outputs == ["sigmoid"] * 3
    assert max_rel_err(r.predict(x), want.astype(np.float64)) <= 1e-4
    with pytest.raises(ValueError, match="Tanh"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
