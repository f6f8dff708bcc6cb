"""Trains the heavy ranker (the multi-task ``MlpRanker``) on the feed's own log.

Input: ``fyp_core.features.training_set`` rows, i.e. the served feature vectors replayed through
the serving code, with their engagement labels, so training == serving by construction. Loss:
binary cross-entropy per binary task, Huber for watch seconds; Adam (optax); early stopping on a
time-based hold-out (the last share of rows by ``ts``). Export: an ``MlpRanker`` whose first layer
absorbs the input standardisation, tagged with the training set's feature-set version.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fyp_core._core import MlpRanker
from fyp_core.train import _data, _mlp

__all__ = ["RankerFit", "finetune_ranker", "fit_ranker", "ranker_outputs", "train_ranker"]


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
    #: ``finetune_ranker`` only: the loss of the base model on the rows before any step, and
    #: the optimizer state to continue the next fine-tune of the same chain from
    start_loss: Optional[float] = None
    opt_state: Any = None


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


def _row_loss_fn(binary: np.ndarray, watch: np.ndarray, task_w: np.ndarray, delta: float) -> Any:
    """Per-row loss: binary cross-entropy on the logits of the binary tasks, Huber on
    softplus(logit) for watch seconds, weighted per task."""
    import jax.numpy as jnp
    import optax

    bmask, wmask, tw = jnp.asarray(binary), jnp.asarray(watch), jnp.asarray(task_w)

    def row_loss(params: Any, x: Any, y: Any) -> Any:
        z = _mlp.forward(params, x)
        bce = optax.sigmoid_binary_cross_entropy(z, y)
        hub = optax.huber_loss(jnp.logaddexp(z, 0.0), y, delta=delta)  # softplus(z) vs seconds
        per_task = jnp.where(bmask, bce, 0.0) + jnp.where(wmask, hub, 0.0)
        return per_task @ tw

    return row_loss


def _loss_fn(binary: np.ndarray, watch: np.ndarray, task_w: np.ndarray, delta: float) -> Any:
    """The training loss: the mean of ``_row_loss_fn`` over the rows."""
    import jax.numpy as jnp

    row_loss = _row_loss_fn(binary, watch, task_w, delta)

    def loss(params: Any, x: Any, y: Any) -> Any:
        return jnp.mean(row_loss(params, x, y))

    return loss


@functools.lru_cache(maxsize=32)
def _compiled(
    binary: tuple[bool, ...],
    watch: tuple[bool, ...],
    task_w: tuple[float, ...],
    delta: float,
    lr: float,
    weight_decay: float,
) -> tuple[Any, Any, Any, Any, Any]:
    """(loss, optimizer, jitted epoch, jitted loss, jitted row-masked mean loss) for one loss
    and optimizer setting, shared
    by ``fit_ranker`` and ``finetune_ranker`` (cached: a fine-tune per chunk compiles once).
    The epoch is one ``jax.lax.scan`` of AdamW steps over the rows of an index matrix."""
    import jax
    import optax

    loss = _loss_fn(np.array(binary), np.array(watch), np.array(task_w, dtype=np.float32), delta)
    opt = optax.adamw(lr, weight_decay=weight_decay)

    @jax.jit
    def epoch(params: Any, state: Any, idx: Any, xj: Any, yj: Any) -> Any:
        def step(carry: Any, b: Any) -> Any:
            p, s = carry
            val, g = jax.value_and_grad(loss)(p, xj[b], yj[b])
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), val

        (params, state), vals = jax.lax.scan(step, (params, state), idx)
        return params, state, vals.mean()

    row_loss = _row_loss_fn(
        np.array(binary), np.array(watch), np.array(task_w, dtype=np.float32), delta
    )

    @jax.jit
    def masked_loss(params: Any, x: Any, y: Any, w: Any) -> Any:
        return (row_loss(params, x, y) * w).sum() / w.sum()

    return loss, opt, epoch, jax.jit(loss), masked_loss


def _padded_loss(masked_loss: Any, params: Any, x: np.ndarray, y: np.ndarray) -> float:
    """The mean loss over all rows, evaluated on rows padded to a power of two (mask 0 on the
    padding), so chunks of any size share a few compilations."""
    import jax.numpy as jnp

    n = len(x)
    size = max(256, 1 << (n - 1).bit_length())
    w = np.zeros(size, np.float32)
    w[:n] = 1.0
    xp = np.zeros((size, x.shape[1]), np.float32)
    yp = np.zeros((size, y.shape[1]), np.float32)
    xp[:n], yp[:n] = x, y
    return float(masked_loss(params, jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(w)))


def _task_masks(
    tasks: list[str], trained: np.ndarray, watch_weight: float
) -> tuple[tuple[bool, ...], tuple[bool, ...], tuple[float, ...]]:
    """Which outputs take the binary cross-entropy, which the Huber loss, and their weights
    (0 for a task without labels)."""
    binary = np.array([t != "watch_seconds" for t in tasks]) & trained
    watch = np.array([t == "watch_seconds" for t in tasks]) & trained
    task_w = np.where(watch, watch_weight, 1.0).astype(np.float32) * trained
    return (
        tuple(bool(v) for v in binary),
        tuple(bool(v) for v in watch),
        tuple(float(v) for v in task_w),
    )


def _train_loop(
    params: Any,
    x: np.ndarray,
    y: np.ndarray,
    xh: np.ndarray,
    yh: np.ndarray,
    compiled: tuple[Any, Any, Any, Any, Any],
    cfg: dict[str, Any],
) -> tuple[Any, list[dict[str, float]], int]:
    import jax

    _, opt, epoch, eval_loss, _ = compiled
    state = opt.init(params)
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
    compiled = _compiled(
        *_task_masks(tasks, trained, watch_weight),
        float(huber_delta),
        float(lr),
        float(weight_decay),
    )
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
        _mlp.init_params(sizes, seed), xs[tr], y[tr], xs[ho], y[ho], compiled, cfg
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


def _base_params(
    base: Any, x: np.ndarray, tasks: list[str]
) -> tuple[_mlp.Params, np.ndarray, np.ndarray]:
    """(parameters over standardised inputs, mean, scale) that compute exactly what ``base``
    computes: a ``RankerFit``'s own, or an ``MlpRanker``'s raw-input weights unfolded over the
    rows' standardisation (``W = W0 * sd``, ``b = b0 + mu W0``, the inverse of the export's
    folding)."""
    if isinstance(base, RankerFit) and len(base.params) > 1:
        # the output layer as exported (a head without labels is the constant prior there)
        last = (
            np.asarray(base.ranker.weights()[-1], np.float32),
            np.asarray(base.ranker.biases()[-1], np.float32),
        )
        return [(w.copy(), b.copy()) for w, b in base.params[:-1]] + [last], base.mean, base.scale
    if isinstance(base, RankerFit):
        base = base.ranker
    mu, sd = _data.standardise(x)
    ws, bs = base.weights(), base.biases()
    w0 = np.asarray(ws[0], np.float64)
    first = (
        (w0 * sd.astype(np.float64)[:, None]).astype(np.float32),
        (np.asarray(bs[0], np.float64) + mu.astype(np.float64) @ w0).astype(np.float32),
    )
    rest = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in zip(ws, bs)]
    return [first, *rest[1:]], mu, sd


def _check_base(base: Any, fsv: str, d: int) -> tuple[MlpRanker, list[str]]:
    """The base's model and tasks, refusing one the fine-tuner cannot continue from: another
    feature set, another input width, or not a plain relu MLP with the trainer's outputs."""
    from fyp_core.train._data import model_feature_set_version

    model = base.ranker if isinstance(base, RankerFit) else base
    if not isinstance(model, MlpRanker):
        raise TypeError(f"base must be an MlpRanker or a RankerFit, got {type(base).__name__}")
    have = model_feature_set_version(model)
    if have is not None and have != fsv:
        raise ValueError(
            f"base model {model.version!r} was trained for feature set {have!r}, the training "
            f"set was built with {fsv!r}: fine-tune a model of the serving feature set"
        )
    if model.input_dim != d:
        raise ValueError(
            f"base model {model.version!r} takes {model.input_dim} inputs, the training set "
            f"has {d} features"
        )
    tasks = list(model.task_names)
    if model.activation != "relu" or model.cross_layers():
        raise ValueError(
            f"base model {model.version!r} must be a plain relu MLP (the trainer's form), got "
            f"activation {model.activation!r} with {len(model.cross_layers())} cross layers"
        )
    if list(model.outputs) != ranker_outputs(tasks):
        raise ValueError(
            f"base model {model.version!r} has outputs {model.outputs}, the trainer's for tasks "
            f"{tasks} are {ranker_outputs(tasks)}"
        )
    return model, tasks


def _check_finetune_args(
    steps: int, batch_size: int, lr: float, huber_delta: float, weight_decay: float
) -> None:
    """Reject non-positive ``steps``/``batch_size``/``lr``/``huber_delta`` and a negative
    ``weight_decay``."""
    for name, v in (("steps", steps), ("batch_size", batch_size)):
        if int(v) <= 0:
            raise ValueError(f"{name} must be > 0, got {v}")
    if not (lr > 0 and huber_delta > 0 and weight_decay >= 0):
        raise ValueError(
            f"lr and huber_delta must be > 0 and weight_decay >= 0, got {lr}, {huber_delta} "
            f"and {weight_decay}"
        )


def _step_order(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of ``steps`` mini-batches of ``batch_size``, drawn without replacement within a
    pass over the ``n`` rows (passes repeat as needed): a fixed (steps x batch_size) gather, so
    every chunk has the same shapes and one compilation."""
    rng = np.random.default_rng(seed)
    k, bs = steps, batch_size
    return np.concatenate([rng.permutation(n) for _ in range(-(-k * bs // n))])[: k * bs]


def _keep_untrained_heads(params: list, params0: Any, trained: np.ndarray) -> list:
    """``params`` with the output layer's columns of tasks without labels in the rows put back
    to the base's (``params0``) weights; the output layer is copied, not changed in place."""
    last = len(params) - 1
    w_last, b_last = params[last][0].copy(), params[last][1].copy()
    params[last] = (w_last, b_last)
    for j in np.flatnonzero(~trained):  # no labels in these rows: the base's head, unchanged
        w_last[:, j], b_last[j] = params0[last][0][:, j], params0[last][1][j]
    return params


def finetune_ranker(
    base: Any,
    training_set: Any,
    *,
    feature_set_version: Optional[str],
    steps: int = 8,
    batch_size: int = 128,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    huber_delta: float = 5.0,
    watch_weight: float = 0.05,
    version: Optional[str] = None,
    seed: int = 0,
    opt_state: Any = None,
) -> RankerFit:
    """Warm-started fine-tuning: ``steps`` AdamW steps from ``base``'s weights over the rows of
    ``training_set`` (the newest log, ``features.training_set``), with ``fit_ranker``'s losses,
    exported as a new model version.

    ``base``: an ``MlpRanker`` in the trainer's form (relu, ``ranker_outputs`` of its tasks;
    a model file from ``fit_ranker`` or the hand-made weights) or a ``RankerFit`` (a previous
    fine-tune of the same chain: its parameters and standardisation are continued as they are;
    pass its ``opt_state`` to continue the optimizer too). The tasks are the base's. Each step
    is a mini-batch of ``batch_size`` rows drawn without replacement within a pass over the
    rows (passes repeat when ``steps x batch_size`` exceeds them); no hold-out, no early
    stopping: the next chunk of traffic is the judge. A binary task that is single-class in
    the rows is trained all the same (a chunk without a share is evidence, not an error); a
    task with no label in the log ("comment") is left out of the loss and its output layer
    keeps the base's weights. ``start_loss`` of the result is the base's loss on the
    rows (before any step).

    Raises ``ValueError`` before any step on: a training set whose feature-set version differs
    from ``feature_set_version`` (``None`` skips that check), a base tagged with another
    feature set or taking another input width, an empty set, non-finite features, a base not
    in the trainer's form, ``steps``/``batch_size``/``lr`` not positive.
    """
    import jax

    _check_finetune_args(steps, batch_size, lr, huber_delta, weight_decay)
    fsv = _data.check_version(training_set, feature_set_version, "training_set")
    x = _data.feature_matrix(training_set, "training_set")
    model, tasks = _check_base(base, fsv, x.shape[1])
    y, trained = _data.labels(training_set, tasks, "training_set", allow_single_class=True)
    names = _data.table_feature_names(training_set)
    t0 = time.perf_counter()
    params0, mu, sd = _base_params(base, x, tasks)
    xs = (x - mu) / sd
    _, opt, epoch, _, masked_loss = _compiled(
        *_task_masks(tasks, trained, watch_weight),
        float(huber_delta),
        float(lr),
        float(weight_decay),
    )
    n, bs, k = len(x), int(batch_size), int(steps)
    order = _step_order(n, k, bs, seed)
    xj, yj = jax.numpy.asarray(xs[order]), jax.numpy.asarray(y[order])
    idx = jax.numpy.asarray(np.arange(k * bs).reshape(k, bs))
    start = _padded_loss(masked_loss, params0, xs, y)
    state = opt.init(params0) if opt_state is None else opt_state
    params, state, tr = epoch(params0, state, idx, xj, yj)
    end = _padded_loss(masked_loss, params, xs, y)
    params = _keep_untrained_heads(_mlp.to_numpy(params), params0, trained)
    version = version or "ft" + _default_version(fsv, x, seed)[len("trained") :]
    ranker = _export(params, mu, sd, tasks, np.ones(len(tasks), bool), names, fsv, version, 0.5)
    return RankerFit(
        ranker=ranker,
        params=params,
        mean=mu,
        scale=sd,
        tasks=tasks,
        trained_tasks=[t for t, h in zip(tasks, trained) if h],
        history=[{"steps": float(k), "start": start, "train": float(tr), "end": end}],
        best_epoch=0,
        seconds=time.perf_counter() - t0,
        n_train=n,
        n_holdout=0,
        start_loss=start,
        opt_state=state,
    )
