"""Trains the heavy ranker (the multi-task ``MlpRanker``) on the feed's own log.

Input: ``fyp_core.features.training_set`` rows, i.e. the served feature vectors replayed through
the serving code, with their engagement labels, so training == serving by construction. Loss:
binary cross-entropy per binary task, Huber for watch seconds; Adam (optax); early stopping on a
time-based hold-out (the last share of rows by ``ts``). Export: an ``MlpRanker`` whose first layer
absorbs the input standardisation, tagged with the training set's feature-set version.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fyp_core._core import MlpRanker
from fyp_core.train import _data, _mlp

__all__ = ["RankerFit", "fit_ranker", "train_ranker", "ranker_outputs"]


@dataclass
class RankerFit:
    """A trained ranker with what it took to get there."""

    ranker: MlpRanker
    params: _mlp.Params  # trained (W, b) over standardised inputs
    mean: np.ndarray  # input standardisation folded into the ranker's first layer
    scale: np.ndarray
    tasks: list[str]
    trained_tasks: list[str]
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: train/holdout
    best_epoch: int = 0
    seconds: float = 0.0
    n_train: int = 0
    n_holdout: int = 0


def ranker_outputs(tasks: Sequence[str]) -> list[str]:
    """Output transform per task: softplus for watch seconds, sigmoid for probabilities."""
    return ["softplus" if t == "watch_seconds" else "sigmoid" for t in tasks]


def _check_args(
    hidden: Sequence[int],
    epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    huber_delta: float,
) -> None:
    if not hidden or any(int(h) <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty list of positive widths, got {hidden}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("patience", patience)):
        if int(v) <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if not (lr > 0 and huber_delta > 0):
        raise ValueError(f"lr and huber_delta must be > 0, got {lr} and {huber_delta}")


def _loss_fn(binary: np.ndarray, watch: np.ndarray, task_w: np.ndarray, delta: float) -> Any:
    import jax.numpy as jnp
    import optax

    bmask, wmask, tw = jnp.asarray(binary), jnp.asarray(watch), jnp.asarray(task_w)

    def loss(params: Any, x: Any, y: Any) -> Any:
        z = _mlp.forward(params, x)
        bce = optax.sigmoid_binary_cross_entropy(z, y)
        hub = optax.huber_loss(jnp.logaddexp(z, 0.0), y, delta=delta)  # softplus(z) vs seconds
        per_task = jnp.where(bmask, bce, 0.0) + jnp.where(wmask, hub, 0.0)
        return jnp.mean(per_task @ tw)

    return loss


def _train_loop(
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    xh: np.ndarray,
    yh: np.ndarray,
    loss: Any,
    cfg: dict[str, Any],
) -> tuple[Any, list[dict[str, float]], int]:
    import jax
    import optax

    opt = optax.adamw(cfg["lr"], weight_decay=cfg["weight_decay"])
    state = opt.init(params)

    @jax.jit
    def epoch(params: Any, state: Any, idx: Any, xj: Any, yj: Any) -> Any:
        def step(carry: Any, b: Any) -> Any:
            p, s = carry
            val, g = jax.value_and_grad(loss)(p, xj[b], yj[b])
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), val

        (params, state), vals = jax.lax.scan(step, (params, state), idx)
        return params, state, vals.mean()

    eval_loss = jax.jit(loss)
    rng = np.random.default_rng(cfg["seed"])
    xj, yj, xhj, yhj = (jax.numpy.asarray(a) for a in (x, y, xh, yh))
    best, best_params, best_epoch, history = np.inf, params, 0, []
    for e in range(cfg["epochs"]):
        idx = _mlp.epoch_batches(len(x), cfg["batch_size"], rng)
        params, state, tr = epoch(params, state, jax.numpy.asarray(idx), xj, yj)
        ho = float(eval_loss(params, xhj, yhj))
        history.append({"epoch": float(e), "train": float(tr), "holdout": ho})
        if ho < best - 1e-6:
            best, best_params, best_epoch = ho, params, e
        elif e - best_epoch >= cfg["patience"]:
            break
    return best_params, history, best_epoch


def _export(
    params: _mlp.Params,
    mu: np.ndarray,
    sd: np.ndarray,
    tasks: list[str],
    trained: np.ndarray,
    names: list[str],
    fsv: str,
    version: str,
    unlabeled_prior: float,
) -> MlpRanker:
    weights = [w.copy() for w, _ in params]
    biases = [b.copy() for _, b in params]
    weights[0], biases[0] = _data.fold_standardisation(weights[0], biases[0], mu, sd)
    for j in np.flatnonzero(~trained):  # no label in the log: a constant prior, not noise
        weights[-1][:, j] = 0.0
        biases[-1][j] = np.float32(np.log(unlabeled_prior / (1.0 - unlabeled_prior)))
    return MlpRanker(
        weights,
        biases,
        activation="relu",
        outputs=ranker_outputs(tasks),
        version=version,
        task_names=list(tasks),
        input_schema=_data.input_schema(names, fsv),
    )


def _default_version(fsv: str, x: np.ndarray, seed: int) -> str:
    h = hashlib.sha256(x[: min(len(x), 4096)].tobytes() + str(seed).encode()).hexdigest()[:10]
    return f"trained-{fsv[:8]}-{h}"


def fit_ranker(
    training_set: Any,
    *,
    feature_set_version: Optional[str],
    tasks: Sequence[str] = ("finish", "like", "share", "follow", "comment", "watch_seconds"),
    hidden: Sequence[int] = (64, 32),
    version: Optional[str] = None,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    holdout: float = 0.15,
    patience: int = 3,
    huber_delta: float = 5.0,
    watch_weight: float = 0.05,
    unlabeled_prior: float = 0.02,
    seed: int = 0,
) -> RankerFit:
    """Trains a multi-task ranker and returns it with its parameters and learning curve.

    ``feature_set_version``: the serving pipeline's (``FeedPipeline.feature_set_version``); a
    training set built with another refuses to train (``None`` skips the check, e.g. for a
    model that will be served only by a pipeline you construct for it). Tasks follow the live
    model's (``fyp_core.synth.TASKS`` in the demo); a task whose label is not in the log
    ("comment") outputs the constant ``unlabeled_prior``. Raises ``ValueError`` before training
    on a version mismatch, an empty set, single-class labels or non-finite features.
    """
    _check_args(hidden, epochs, batch_size, lr, patience, huber_delta)
    tasks = list(tasks)
    fsv = _data.check_version(training_set, feature_set_version, "training_set")
    x = _data.feature_matrix(training_set, "training_set")
    y, trained = _data.labels(training_set, tasks, "training_set")
    tr, ho = _data.time_split(training_set, holdout)
    names = _data.table_feature_names(training_set)
    t0 = time.perf_counter()
    mu, sd = _data.standardise(x[tr])
    xs = (x - mu) / sd
    binary = np.array([t != "watch_seconds" for t in tasks]) & trained
    watch = np.array([t == "watch_seconds" for t in tasks]) & trained
    task_w = np.where(watch, watch_weight, 1.0).astype(np.float32) * trained
    loss = _loss_fn(binary, watch, task_w, huber_delta)
    sizes = [x.shape[1], *[int(h) for h in hidden], len(tasks)]
    cfg = {
        "lr": lr,
        "epochs": int(epochs),
        "batch_size": int(batch_size),
        "patience": int(patience),
        "seed": seed,
        "weight_decay": weight_decay,
    }
    params, history, best = _train_loop(
        _mlp.init_params(sizes, seed), xs[tr], y[tr], xs[ho], y[ho], loss, cfg
    )
    params = _mlp.to_numpy(params)
    version = version or _default_version(fsv, x, seed)
    ranker = _export(params, mu, sd, tasks, trained, names, fsv, version, unlabeled_prior)
    return RankerFit(
        ranker=ranker,
        params=params,
        mean=mu,
        scale=sd,
        tasks=tasks,
        trained_tasks=[t for t, k in zip(tasks, trained) if k],
        history=history,
        best_epoch=best,
        seconds=time.perf_counter() - t0,
        n_train=len(tr),
        n_holdout=len(ho),
    )


def train_ranker(
    training_set: Any, *, feature_set_version: Optional[str], **kwargs: Any
) -> MlpRanker:
    """``fit_ranker(...).ranker``: the trained ``MlpRanker``, ready for ``add_shadow`` or
    ``save``. See ``fit_ranker`` for the arguments."""
    return fit_ranker(training_set, feature_set_version=feature_set_version, **kwargs).ranker
