"""Float64 numpy reference forward pass for the MLP ranker tests (not a test module)."""

from __future__ import annotations

import numpy as np
from scipy.special import erf


def act(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(x, 0.0)
    if kind == "gelu":
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    if kind == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(kind)


def out_transform(x: np.ndarray, kind: str) -> np.ndarray:
    if kind == "identity":
        return x
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if kind == "softplus":
        return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))
    raise ValueError(kind)


def forward(weights, biases, x, activation="relu", outputs=None, cross=()):
    h0 = np.asarray(x, np.float64)
    h = h0
    for w, b in cross:
        h = h0 * (h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)) + h
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
        if i + 1 < len(weights):
            h = act(h, activation)
    outputs = outputs or ["identity"] * h.shape[1]
    return np.stack([out_transform(h[:, t], o) for t, o in enumerate(outputs)], axis=1)


def random_mlp(rng: np.random.Generator, dims: list[int], scale: float = 1.0):
    ws = [
        (rng.standard_normal((a, b)) * scale * np.sqrt(2.0 / a)).astype(np.float32)
        for a, b in zip(dims, dims[1:])
    ]
    bs = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in dims[1:]]
    return ws, bs


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Max |got - want| / max(|want|, scale) with scale the largest |want| of the column, so
    values near zero are judged against the column's magnitude."""
    scale = np.maximum(np.abs(want).max(axis=0, keepdims=True), 1e-6)
    return float((np.abs(got - want) / np.maximum(np.abs(want), scale)).max(initial=0.0))
