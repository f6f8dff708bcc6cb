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


def _load_onnx(model: Any) -> Any:
    """The ``onnx.ModelProto`` of a path, bytes or an already loaded model."""
    import onnx  # noqa: PLC0415  (optional dependency)

    if isinstance(model, (str, os.PathLike)):
        model = onnx.load(os.fspath(model))
    elif isinstance(model, (bytes, bytearray)):
        model = onnx.load_from_string(bytes(model))
    return model


def _onnx_initializers(g: Any) -> dict[str, np.ndarray]:
    """The graph's constant tensors as float32: its initializers and its ``Constant`` nodes."""
    from onnx import numpy_helper  # noqa: PLC0415  (optional dependency)

    inits = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    inits[node.output[0]] = numpy_helper.to_array(a.t).astype(np.float32)
    return inits


def _onnx_attr(node: Any, name: str, default: Any) -> Any:
    """The value of ``node``'s attribute ``name``, or ``default`` when it is not set."""
    import onnx  # noqa: PLC0415  (optional dependency)

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _OnnxChain:
    """The MLP read so far from an ONNX node chain: layers, hidden activation, output transform,
    and the running tensor's name."""

    def __init__(self, cur: str) -> None:
        self.cur = cur
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.activation: str | None = None
        self.trailing: str | None = None
        self.pending = False  # a MatMul without its Add yet

    def other(self, node: Any, inits: dict[str, np.ndarray]) -> str:
        """The name of ``node``'s one initializer operand beside the running tensor."""
        ins = list(node.input)
        if self.cur not in ins:
            raise ValueError(f"node {node.name or node.op_type} does not consume {self.cur!r}")
        rest = [i for i in ins if i != self.cur]
        if len(rest) != 1 or rest[0] not in inits:
            raise ValueError(f"node {node.name or node.op_type} needs one initializer operand")
        return rest[0]

    def gemm(self, node: Any, inits: dict[str, np.ndarray]) -> None:
        """Append a ``Gemm`` layer (``transA=0``; ``transB``, ``alpha`` and ``beta`` folded in)."""
        if _onnx_attr(node, "transA", 0):
            raise ValueError("Gemm with transA=1 is not supported")
        if node.input[0] != self.cur or node.input[1] not in inits:
            raise ValueError("Gemm must take the running tensor and an initializer weight")
        w = inits[node.input[1]]
        w = (w.T if _onnx_attr(node, "transB", 0) else w) * float(_onnx_attr(node, "alpha", 1.0))
        b = (
            inits[node.input[2]] * float(_onnx_attr(node, "beta", 1.0))
            if len(node.input) > 2 and node.input[2]
            else np.zeros(w.shape[1], np.float32)
        )
        self.weights.append(np.ascontiguousarray(w, np.float32))
        self.biases.append(np.broadcast_to(b.reshape(-1), (w.shape[1],)).astype(np.float32))

    def matmul(self, node: Any, inits: dict[str, np.ndarray]) -> None:
        """Append a ``MatMul`` layer with a zero bias, pending the ``Add`` that sets it."""
        if node.input[0] != self.cur or node.input[1] not in inits:
            raise ValueError("MatMul must be (running tensor) @ (initializer weight)")
        w = inits[node.input[1]]
        self.weights.append(np.ascontiguousarray(w, np.float32))
        self.biases.append(np.zeros(w.shape[1], np.float32))
        self.pending = True

    def add_bias(self, node: Any, inits: dict[str, np.ndarray]) -> None:
        """Set the pending ``MatMul`` layer's bias from its ``Add``."""
        b = inits[self.other(node, inits)].reshape(-1)
        self.biases[-1] = np.broadcast_to(b, self.biases[-1].shape).astype(np.float32)
        self.pending = False

    def activate(self, node: Any, nodes: list[Any]) -> None:
        """Record a hidden activation, or the output transform when no layer follows it."""
        op = node.op_type
        self.pending = False
        if not self.weights:
            raise ValueError(f"{op} before the first layer")
        is_last = not any(n.op_type in ("Gemm", "MatMul") for n in nodes[nodes.index(node) + 1 :])
        if is_last and op in _OUTPUT:
            self.trailing = _OUTPUT[op]
        elif op in _HIDDEN:
            if op == "Gelu" and _onnx_attr(node, "approximate", "none") != "none":
                raise ValueError("only exact Gelu (approximate='none') is supported")
            kind = _HIDDEN[op]
            if self.activation is not None and self.activation != kind:
                raise ValueError(f"mixed hidden activations {self.activation!r} and {kind!r}")
            self.activation = kind
        else:
            raise ValueError(f"{op} as a hidden activation is not supported")

    def step(self, node: Any, inits: dict[str, np.ndarray], nodes: list[Any]) -> None:
        """Consume one node of the chain."""
        op = node.op_type
        if op == "Constant" or (op == "Identity" and self.trailing is not None):
            self.cur = node.output[0] if op == "Identity" else self.cur
            return
        if self.trailing is not None:
            raise ValueError(f"{op} follows the output transform {self.trailing!r}")
        if op in ("Identity", "Flatten", "Dropout"):
            pass
        elif op == "Gemm":
            self.gemm(node, inits)
        elif op == "MatMul":
            self.matmul(node, inits)
        elif op == "Add" and self.pending:
            self.add_bias(node, inits)
        elif op in _HIDDEN or op in _OUTPUT:
            self.activate(node, nodes)
        else:
            raise ValueError(
                f"unsupported ONNX op {op!r}; supported: Gemm, MatMul+Add, Relu, Gelu, and a final "
                "Sigmoid or Softplus"
            )
        self.cur = node.output[0]


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
    g = _load_onnx(model).graph
    inits = _onnx_initializers(g)
    feeds = [i.name for i in g.input if i.name not in inits]
    if len(feeds) != 1:
        raise ValueError(f"expected one graph input, got {feeds}")
    chain = _OnnxChain(feeds[0])
    nodes = list(g.node)
    for node in g.node:
        chain.step(node, inits, nodes)
    if not chain.weights:
        raise ValueError("the ONNX graph has no Gemm or MatMul layer")
    return MlpRanker(
        chain.weights,
        chain.biases,
        activation=chain.activation or "relu",
        outputs=_outputs_for(chain.weights[-1].shape[1], outputs, chain.trailing),
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
