"""The dense MLP shared by the trainers, in JAX: parameters as a list of (W, b) with W (in, out),
the same layout ``fyp_core.MlpRanker`` takes, so export is a copy (plus folding the input
standardisation into the first layer)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

Params = list[tuple[Any, Any]]


def init_params(sizes: Sequence[int], seed: int) -> Params:
    """He-initialised weights (relu), zero biases, as float32 numpy (JAX converts on first use)."""
    rng = np.random.default_rng(seed)
    params: Params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        w = (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        params.append((w, np.zeros(b, dtype=np.float32)))
    return params


def forward(params: Params, x: Any) -> Any:
    """Last-layer pre-activations (logits) of a relu MLP; works on jax and numpy arrays."""
    import jax.numpy as jnp

    h = x
    for w, b in params[:-1]:
        h = jnp.maximum(h @ w + b, 0.0)
    w, b = params[-1]
    return h @ w + b


def forward_numpy(params: Params, x: np.ndarray) -> np.ndarray:
    """The same forward pass in float64 numpy (the reference the exported model is checked
    against)."""
    h = np.asarray(x, dtype=np.float64)
    for w, b in params[:-1]:
        h = np.maximum(h @ np.asarray(w, np.float64) + np.asarray(b, np.float64), 0.0)
    w, b = params[-1]
    return h @ np.asarray(w, np.float64) + np.asarray(b, np.float64)


def to_numpy(params: Any) -> Params:
    """Device arrays -> float32 numpy copies."""
    return [(np.asarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32)) for w, b in params]


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffled (n_batches, batch_size) index matrix covering n rows (the last partial batch
    wraps around to the start of the permutation, so every step has the same shape)."""
    bs = max(1, min(batch_size, n))
    perm = rng.permutation(n)
    n_b = -(-n // bs)
    idx = np.resize(perm, n_b * bs)
    return idx.reshape(n_b, bs)


def loop_config(lr: float, epochs: int, batch_size: int, patience: int, seed: int) -> dict:
    """The training loop's settings as one dict."""
    return {
        "lr": lr,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "patience": int(patience),
        "seed": seed,
    }
