"""Import and export for `fyp_core.MlpRanker`: PyTorch ``nn.Sequential`` and ONNX MLPs in, ONNX out.

The ranker's own file format is `MlpRanker.save` / `MlpRanker.load` (safetensors plus metadata,
see docs/ranker.md); this module converts models trained elsewhere into it:

    ranker = from_torch(torch_seq, version="v7", outputs=["sigmoid"] * 4 + ["softplus"])
    ranker = from_onnx("model.onnx", version="v7")
    ranker.save("ranker-v7.safetensors")

and exports a ranker to ONNX (``to_onnx``) for peers such as onnxruntime. PyTorch and onnx are
optional: they are imported only when these functions run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fyp_core._core import MlpRanker

__all__ = ["from_onnx", "from_torch", "to_onnx"]

_HIDDEN = {"Relu": "relu", "Gelu": "gelu"}
_OUTPUT = {"Sigmoid": "sigmoid", "Softplus": "softplus"}


def _outputs_for(
    n_tasks: int, outputs: Sequence[str] | str | None, trailing: str | None
) -> list[str]:
    if outputs is not None and trailing is not None:
        raise ValueError(
            f"the model already ends in a {trailing!r} transform; do not pass outputs as well"
        )
    if outputs is None:
        return [trailing or "identity"] * n_tasks
    if isinstance(outputs, str):
        return [outputs] * n_tasks
    return list(outputs)


def from_torch(
    module: Any,
    version: str = "v0",
    outputs: Sequence[str] | str | None = None,
    task_names: Sequence[str] | None = None,
    input_schema: Sequence[tuple[str, int]] | None = None,
) -> MlpRanker:
    """Converts a PyTorch ``nn.Sequential`` of ``Linear`` layers with ``ReLU``/``GELU``/``SiLU``
    between them (one kind throughout; ``GELU(approximate="none")`` only), optionally ending in
    ``Sigmoid`` or ``Softplus`` (applied to every task), into an `MlpRanker`.

    ``outputs`` sets per-task transforms when the module ends in the last ``Linear``.
    """
    import torch  # noqa: PLC0415  (optional dependency)
    from torch import nn  # noqa: PLC0415

    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    activation: str | None = None
    trailing: str | None = None
    layers = list(module.children()) if isinstance(module, nn.Sequential) else [module]
    for i, layer in enumerate(layers):
        if trailing is not None:
            raise ValueError(f"module {i} ({type(layer).__name__}) follows the output transform")
        if isinstance(layer, nn.Linear):
            w = layer.weight.detach().cpu().to(dtype=torch.float32).numpy()
            weights.append(np.ascontiguousarray(w.T))
            b = layer.bias
            biases.append(
                np.zeros(w.shape[0], np.float32)
                if b is None
                else b.detach().cpu().float().numpy().copy()
            )
            continue
        kind = None
        if isinstance(layer, nn.ReLU):
            kind = "relu"
        elif isinstance(layer, nn.GELU):
            if getattr(layer, "approximate", "none") != "none":
                raise ValueError("only exact GELU (approximate='none') is supported")
            kind = "gelu"
        elif isinstance(layer, nn.SiLU):
            kind = "silu"
        elif isinstance(layer, (nn.Sigmoid, nn.Softplus)):
            if isinstance(layer, nn.Softplus) and (layer.beta != 1 or layer.threshold != 20):
                raise ValueError("only Softplus(beta=1) is supported")
            trailing = "sigmoid" if isinstance(layer, nn.Sigmoid) else "softplus"
            continue
        elif isinstance(layer, (nn.Identity, nn.Dropout)):
            continue
        else:
            raise ValueError(
                f"module {i} is {type(layer).__name__}; supported: Linear, ReLU, GELU, SiLU, "
                "Dropout/Identity (ignored), and a final Sigmoid or Softplus"
            )
        if activation is not None and activation != kind:
            raise ValueError(f"mixed hidden activations {activation!r} and {kind!r}")
        activation = kind
    if not weights:
        raise ValueError("the module has no Linear layer")
    return MlpRanker(
        weights,
        biases,
        activation=activation or "relu",
        outputs=_outputs_for(weights[-1].shape[1], outputs, trailing),
        version=version,
        task_names=task_names,
        input_schema=input_schema,
    )


def from_onnx(
    model: Any,
    version: str = "v0",
    outputs: Sequence[str] | str | None = None,
    task_names: Sequence[str] | None = None,
    input_schema: Sequence[tuple[str, int]] | None = None,
) -> MlpRanker:
    """Imports a feed-forward ONNX MLP (a path, bytes or ``onnx.ModelProto``): a chain of ``Gemm``
    (``transA=0``) or ``MatMul`` + ``Add`` layers with ``Relu`` or ``Gelu`` between them, optionally
    ending in ``Sigmoid`` or ``Softplus``. Weights must be initializers. ``Identity``, ``Flatten``
    and ``Dropout`` are skipped."""
    import onnx  # noqa: PLC0415  (optional dependency)
    from onnx import numpy_helper  # noqa: PLC0415

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t).astype(np.float32)
    feeds = [i.name for i in g.input if i.name not in inits]
    if len(feeds) != 1:
        raise ValueError(f"expected one graph input, got {feeds}")
    cur = feeds[0]
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    activation: str | None = None
    trailing: str | None = None
    pending = False  # a MatMul without its Add yet

    def attr(node: Any, name: str, default: Any) -> Any:
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def other(node: Any) -> str:
        ins = list(node.input)
        if cur not in ins:
            raise ValueError(f"node {node.name or node.op_type} does not consume {cur!r}")
        rest = [i for i in ins if i != cur]
        if len(rest) != 1 or rest[0] not in inits:
            raise ValueError(f"node {node.name or node.op_type} needs one initializer operand")
        return rest[0]

    for node in g.node:
        op = node.op_type
        if op == "Constant" or (op == "Identity" and trailing is not None):
            cur = node.output[0] if op == "Identity" else cur
            continue
        if trailing is not None:
            raise ValueError(f"{op} follows the output transform {trailing!r}")
        if op in ("Identity", "Flatten", "Dropout"):
            pass
        elif op == "Gemm":
            if attr(node, "transA", 0):
                raise ValueError("Gemm with transA=1 is not supported")
            if node.input[0] != cur or node.input[1] not in inits:
                raise ValueError("Gemm must take the running tensor and an initializer weight")
            w = inits[node.input[1]]
            w = (w.T if attr(node, "transB", 0) else w) * float(attr(node, "alpha", 1.0))
            b = (
                inits[node.input[2]] * float(attr(node, "beta", 1.0))
                if len(node.input) > 2 and node.input[2]
                else np.zeros(w.shape[1], np.float32)
            )
            weights.append(np.ascontiguousarray(w, np.float32))
            biases.append(np.broadcast_to(b.reshape(-1), (w.shape[1],)).astype(np.float32))
        elif op == "MatMul":
            if node.input[0] != cur or node.input[1] not in inits:
                raise ValueError("MatMul must be (running tensor) @ (initializer weight)")
            w = inits[node.input[1]]
            weights.append(np.ascontiguousarray(w, np.float32))
            biases.append(np.zeros(w.shape[1], np.float32))
            pending = True
        elif op == "Add" and pending:
            b = inits[other(node)].reshape(-1)
            biases[-1] = np.broadcast_to(b, biases[-1].shape).astype(np.float32)
            pending = False
        elif op in _HIDDEN or op in _OUTPUT:
            pending = False
            if not weights:
                raise ValueError(f"{op} before the first layer")
            is_last = not any(
                n.op_type in ("Gemm", "MatMul") for n in g.node[list(g.node).index(node) + 1 :]
            )
            if is_last and op in _OUTPUT:
                trailing = _OUTPUT[op]
            elif op in _HIDDEN:
                if op == "Gelu" and attr(node, "approximate", "none") != "none":
                    raise ValueError("only exact Gelu (approximate='none') is supported")
                kind = _HIDDEN[op]
                if activation is not None and activation != kind:
                    raise ValueError(f"mixed hidden activations {activation!r} and {kind!r}")
                activation = kind
            else:
                raise ValueError(f"{op} as a hidden activation is not supported")
        else:
            raise ValueError(
                f"unsupported ONNX op {op!r}; supported: Gemm, MatMul+Add, Relu, Gelu, and a final "
                "Sigmoid or Softplus"
            )
        cur = node.output[0]
    if not weights:
        raise ValueError("the ONNX graph has no Gemm or MatMul layer")
    return MlpRanker(
        weights,
        biases,
        activation=activation or "relu",
        outputs=_outputs_for(weights[-1].shape[1], outputs, trailing),
        version=version,
        task_names=task_names,
        input_schema=input_schema,
    )


def to_onnx(ranker: MlpRanker, path: str | os.PathLike[str] | None = None, opset: int = 17) -> Any:
    """Exports `ranker` (cross layers, activation and per-task output transforms included) as an
    ONNX model with input ``features`` ``[N, input_dim]`` and output ``preds`` ``[N, n_tasks]``.
    Saves it to ``path`` when given; returns the ``onnx.ModelProto``."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    nodes: list[Any] = []
    inits: list[Any] = []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(a: np.ndarray, prefix: str) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), n))
        return n

    def op(kind: str, *inputs: str, **attrs: Any) -> str:
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def affine(x: str, w: np.ndarray, b: np.ndarray) -> str:
        return op("Add", op("MatMul", x, const(w, "W")), const(b, "b"))

    def act(x: str, kind: str) -> str:
        if kind == "relu":
            return op("Relu", x)
        if kind == "silu":
            return op("Mul", x, op("Sigmoid", x))
        # exact GELU without opset-20 Gelu: 0.5 x (1 + erf(x / sqrt 2))
        e = op("Erf", op("Mul", x, const(np.array(1.0 / math.sqrt(2.0)), "c")))
        half_x = op("Mul", x, const(np.array(0.5), "c"))
        return op("Mul", half_x, op("Add", e, const(np.array(1.0), "c")))

    x0 = "features"
    cur = x0
    for w, b in ranker.cross_layers():
        cur = op("Add", op("Mul", x0, affine(cur, w, b)), cur)
    ws, bs = ranker.weights(), ranker.biases()
    for i, (w, b) in enumerate(zip(ws, bs)):
        cur = affine(cur, w, b)
        if i + 1 < len(ws):
            cur = act(cur, ranker.activation)
    outs = ranker.outputs
    kinds = {"sigmoid": "Sigmoid", "softplus": "Softplus"}
    if len(set(outs)) == 1:
        if outs[0] != "identity":
            cur = op(kinds[outs[0]], cur)
    else:
        split = const(np.ones(len(outs), np.int64), "split")
        inits[-1] = numpy_helper.from_array(np.ones(len(outs), np.int64), split)
        parts = [name("task") for _ in outs]
        nodes.append(helper.make_node("Split", [cur, split], parts, axis=1))
        cols = [p if o == "identity" else op(kinds[o], p) for p, o in zip(parts, outs)]
        cur = op("Concat", *cols, axis=1)
    nodes.append(helper.make_node("Identity", [cur], ["preds"]))
    graph = helper.make_graph(
        nodes,
        f"fyp_core_mlp_{ranker.version}",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, ranker.input_dim])],
        [helper.make_tensor_value_info("preds", TensorProto.FLOAT, [None, ranker.n_tasks])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
