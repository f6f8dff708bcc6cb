"""Two-tower retrieval trained on the feed's own log: a user tower over the user block the
pipeline assembles (pooled history embedding, long-term vector, counters) and an item tower over
the content embedding plus the item's long-window engagement, trained with in-batch sampled
softmax and the logQ popularity correction (Yi et al., RecSys 2019).

Examples are ``fyp_core.features.training_set`` rows (user state at request time, the item
served), positives being engaged rows, so the user block is point in time by construction.
Towers export as ``MlpRanker`` files with identity outputs; ``item_tower="content"`` keeps the
item side fixed to the content embedding, so the user tower queries the existing index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fyp_core._core import MlpRanker
from fyp_core.train import _data, _mlp

__all__ = [
    "ITEM_STATS",
    "catalogue_item_inputs",
    "TwoTowerFit",
    "fit_two_tower",
    "item_tower_inputs",
    "l2_rows",
    "pooled_history",
    "user_vectors",
    "with_long_term",
    "recall_at_k",
    "train_two_tower",
    "user_tower_inputs",
]

#: item-intrinsic long-window statistics the item tower sees beside the content embedding
ITEM_STATS = ("i_log_imp_l", "i_compl_rate_l", "i_like_rate_l")
#: their values for an item never shown (empty windows): log1p(0), (0+1)/(0+4), (0+1)/(0+4)
ITEM_STATS_PRIOR = (0.0, 0.25, 0.25)
#: training objectives of ``fit_two_tower``
OBJECTIVES = ("softmax", "pointwise")


@dataclass
class TwoTowerFit:
    """Trained towers, their parameters and learning curve."""

    user_tower: MlpRanker
    item_tower: MlpRanker
    user_params: _mlp.Params
    item_params: Optional[_mlp.Params]  # None for the fixed content tower
    item_mode: str
    temperature: float
    long_term: str
    user_mean: np.ndarray  # the user tower's input standardisation (folded into its layer 0)
    user_scale: np.ndarray
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    n_examples: int = 0


def _columns(names: list[str], prefix: str) -> np.ndarray:
    return np.array([i for i, n in enumerate(names) if n.startswith(prefix)], dtype=np.int64)


def user_tower_inputs(x: np.ndarray, names: list[str]) -> np.ndarray:
    """The user block of served feature rows (the columns named ``u_*``)."""
    return np.ascontiguousarray(x[:, _columns(names, "u_")])


def item_tower_inputs(x: np.ndarray, names: list[str]) -> np.ndarray:
    """Content embedding (``i_emb_*``) plus ``ITEM_STATS`` of served feature rows."""
    cols = np.concatenate([_columns(names, "i_emb_"), [names.index(s) for s in ITEM_STATS]])
    return np.ascontiguousarray(x[:, cols])


def _positives(table: Any, positive: Sequence[str]) -> np.ndarray:
    mask = np.zeros(table.num_rows, dtype=bool)
    for col in positive:
        if col not in table.column_names:
            raise ValueError(f"examples has no label column {col!r} (positive={list(positive)})")
        mask |= np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=bool)
    return mask


def _softmax_loss(temperature: float, item_mode: str, dim: int) -> Any:
    import jax.numpy as jnp
    import optax

    def loss(params: Any, u: Any, v: Any, logq: Any, item: Any) -> Any:
        eu, ev = _embed(params, u, v, item_mode, dim)
        logits = eu @ ev.T / temperature - logq[None, :]  # logQ: popular items are over-sampled
        same = (item[:, None] == item[None, :]) & ~jnp.eye(len(item), dtype=bool)
        logits = jnp.where(same, -1e9, logits)  # the positive's duplicates are not negatives
        labels = jnp.arange(len(item))
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return loss


def _embed(
    params: Any, u: Any, v: Any, item_mode: str, dim: int, skip: Any = None
) -> tuple[Any, Any]:
    """Unit user and item tower outputs (the content embedding for the fixed item side).
    ``skip``: (raw ``u_emb``, raw content) added to the towers' outputs (residual towers: at
    the start they are the heuristic's query and the content index)."""
    import jax.numpy as jnp

    eu = _mlp.forward(params["user"], u)
    ev = v[:, :dim] if item_mode == "content" else _mlp.forward(params["item"], v)
    if skip is not None:
        eu = eu + skip[0]
        ev = ev if item_mode == "content" else ev + skip[1]
    eu = eu / (jnp.linalg.norm(eu, axis=1, keepdims=True) + 1e-6)
    ev = ev / (jnp.linalg.norm(ev, axis=1, keepdims=True) + 1e-6)
    return eu, ev


def _pointwise_loss(item_mode: str, dim: int, residual: bool) -> Any:
    """Binary cross-entropy over every impression (engaged or not): logit = scale x cosine of
    the towers + an item bias (linear in ``ITEM_STATS``). Shown-but-skipped items are the
    negatives, so what the serving retrieval chose to show cancels out (exposure is the
    conditioning, not the target), and the bias absorbs item quality, leaving taste to the
    towers."""
    import jax.numpy as jnp
    import optax

    def loss(params: Any, u: Any, v: Any, stats: Any, y: Any, rw: Any, su: Any, sv: Any) -> Any:
        eu, ev = _embed(params, u, v, item_mode, dim, (su, sv) if residual else None)
        w, b = params["bias"]
        logit = jnp.exp(params["log_scale"]) * jnp.sum(eu * ev, axis=1) + stats @ w + b
        return jnp.sum(rw * optax.sigmoid_binary_cross_entropy(logit, y)) / jnp.sum(rw)

    return loss


def _fit_loop(
    params: Any,
    data: tuple[np.ndarray, ...],
    hold: tuple[np.ndarray, ...],
    loss: Any,
    cfg: dict[str, Any],
) -> tuple[Any, list[dict[str, float]], int]:
    import jax
    import jax.numpy as jnp
    import optax

    opt = optax.adam(cfg["lr"])
    state = opt.init(params)

    @jax.jit
    def epoch(params: Any, state: Any, idx: Any, *arrays: Any) -> Any:
        def step(carry: Any, b: Any) -> Any:
            p, s = carry
            val, g = jax.value_and_grad(loss)(p, *(a[b] for a in arrays))
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), val

        (params, state), vals = jax.lax.scan(step, (params, state), idx)
        return params, state, vals.mean()

    rng = np.random.default_rng(cfg["seed"])
    dj = [jnp.asarray(a) for a in data]
    hj = [jnp.asarray(a) for a in hold]
    hold_idx = _mlp.epoch_batches(len(hold[0]), cfg["batch_size"], rng)
    hold_loss = jax.jit(lambda p, idx: jax.vmap(lambda b: loss(p, *(a[b] for a in hj)))(idx).mean())
    best, best_params, best_epoch, history = np.inf, params, 0, []
    for e in range(cfg["epochs"]):
        idx = jnp.asarray(_mlp.epoch_batches(len(data[0]), cfg["batch_size"], rng))
        params, state, tr = epoch(params, state, idx, *dj)
        ho = float(hold_loss(params, jnp.asarray(hold_idx)))
        history.append({"epoch": float(e), "train": float(tr), "holdout": ho})
        if ho < best - 1e-6:
            best, best_params, best_epoch = ho, params, e
        elif e - best_epoch >= cfg["patience"]:
            break
    return best_params, history, best_epoch


def _log_q(item_ids: np.ndarray) -> np.ndarray:
    """log of each positive's sampling probability in a batch: its share among positives."""
    _, inv, counts = np.unique(item_ids, return_inverse=True, return_counts=True)
    return np.log(counts[inv] / len(item_ids)).astype(np.float32)


def _with_skip(weights: list[np.ndarray], biases: list[np.ndarray], d: int) -> None:
    """Adds the identity on the first ``d`` raw inputs to a relu MLP's output, in place: 2d
    extra hidden units per layer carry relu(x) and relu(-x) (non-negative, so relu passes them
    on), and the last layer adds their difference, x."""
    eye = np.eye(d, dtype=np.float32)
    if len(weights) == 1:
        weights[0][:d, :d] += eye
        return
    n_in = weights[0].shape[0]
    first = np.zeros((n_in, 2 * d), np.float32)
    first[:d, :d], first[:d, d:] = eye, -eye
    weights[0] = np.hstack([weights[0], first])
    biases[0] = np.concatenate([biases[0], np.zeros(2 * d, np.float32)])
    for k in range(1, len(weights) - 1):
        a, b = weights[k].shape
        w = np.zeros((a + 2 * d, b + 2 * d), np.float32)
        w[:a, :b], w[a:, b:] = weights[k], np.eye(2 * d, dtype=np.float32)
        weights[k] = w
        biases[k] = np.concatenate([biases[k], np.zeros(2 * d, np.float32)])
    weights[-1] = np.vstack([weights[-1], eye, -eye])


def _tower(
    params: _mlp.Params,
    mu: np.ndarray,
    sd: np.ndarray,
    version: str,
    fsv: str,
    side: str,
    skip: int = 0,
) -> MlpRanker:
    weights = [w.copy() for w, _ in params]
    biases = [b.copy() for _, b in params]
    weights[0], biases[0] = _data.fold_standardisation(weights[0], biases[0], mu, sd)
    if skip:
        _with_skip(weights, biases, skip)
    out = weights[-1].shape[1]
    return MlpRanker(
        weights,
        biases,
        activation="relu",
        outputs=["identity"] * out,
        version=version,
        task_names=[f"e{k}" for k in range(out)],
        input_schema=[(f"{side}/{_data.SCHEMA_TAG}{fsv}", weights[0].shape[0])],
    )


def _content_tower(width: int, dim: int, version: str, fsv: str) -> MlpRanker:
    w = np.zeros((width, dim), dtype=np.float32)
    w[np.arange(dim), np.arange(dim)] = 1.0  # the content embedding, unchanged
    return MlpRanker(
        [w],
        [np.zeros(dim, np.float32)],
        outputs=["identity"] * dim,
        version=version,
        task_names=[f"e{k}" for k in range(dim)],
        input_schema=[(f"item/{_data.SCHEMA_TAG}{fsv}", width)],
    )


def _init_params(
    du: int,
    dv: int,
    user_hidden: Sequence[int],
    item_hidden: Sequence[int],
    out: int,
    item_tower: str,
    seed: int,
) -> dict[str, Any]:
    params: dict[str, Any] = {"user": _mlp.init_params([du, *user_hidden, out], seed)}
    if item_tower == "mlp":
        params["item"] = _mlp.init_params([dv, *item_hidden, out], seed + 1)
    return params


def _check_tower_args(
    item_tower: str, temperature: float, long_term: str, objective: str, residual: bool
) -> None:
    if long_term not in ("pooled", "served"):
        raise ValueError(f"long_term must be 'pooled' or 'served', got {long_term!r}")
    if item_tower not in ("mlp", "content"):
        raise ValueError(f"item_tower must be 'mlp' or 'content', got {item_tower!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if residual and objective != "pointwise":
        raise ValueError("residual towers need objective='pointwise'")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_row_weights(w: Any, n: int, objective: str) -> Optional[np.ndarray]:
    if w is None:
        return None
    if objective != "pointwise":
        raise ValueError("row_weights need objective='pointwise'")
    w = np.asarray(w, dtype=np.float32)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(
            f"row_weights must be {n} finite non-negative weights (one per row, not all zero)"
        )
    return w


def _examples(
    examples: Any,
    fsv: Optional[str],
    positive: Sequence[str],
    batch_size: int,
    item_stats: bool,
) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Checked examples over every row: (feature set, positive mask, user inputs, item-tower
    inputs, item stats, dim)."""
    fsv_ = _data.check_version(examples, fsv, "examples")
    names = _data.table_feature_names(examples)
    pos = _positives(examples, positive)
    need = 2 * min(batch_size, 64)
    if pos.sum() < need:
        raise ValueError(
            f"examples has {int(pos.sum())} positive rows ({list(positive)}); "
            f"need at least {need} to train towers"
        )
    x = _data.feature_matrix(examples, "examples")
    dim = int(len(_columns(names, "i_emb_")))
    v = item_tower_inputs(x, names)
    return fsv_, pos, user_tower_inputs(x, names), v if item_stats else v[:, :dim], v[:, dim:], dim


def _train_arrays(
    objective: str,
    table: Any,
    pos: np.ndarray,
    us: np.ndarray,
    vs: np.ndarray,
    stats: np.ndarray,
    row_weights: Optional[np.ndarray],
    skips: tuple[np.ndarray, np.ndarray],
) -> tuple[Any, tuple[np.ndarray, ...]]:
    """The rows an objective trains on and its per-row arrays: the engaged rows with logQ and
    item codes (softmax), or every impression with its item stats and label (pointwise)."""
    if objective == "pointwise":
        mu, sd = _data.standardise(stats)
        st = ((stats - mu) / sd).astype(np.float32)
        rw = np.ones(len(pos), np.float32) if row_weights is None else row_weights
        return table, (us, vs, st, pos.astype(np.float32), rw.astype(np.float32), *skips)
    items = np.asarray(table.column("item_id").to_numpy(zero_copy_only=False))[pos]
    codes = np.unique(items, return_inverse=True)[1].reshape(-1).astype(np.int32)
    return table.filter(pos), (us[pos], vs[pos], _log_q(codes), codes)


def _objective(
    objective: str,
    params: dict[str, Any],
    n_stats: int,
    item_tower: str,
    dim: int,
    temperature: float,
    residual: bool,
) -> Any:
    """The loss of ``objective``; the pointwise one adds its item bias and scale to ``params``
    (and, ``residual``, scales the towers' MLP parts' last layers down, so they start as the
    identity skip)."""
    if objective == "pointwise":
        params["bias"] = (np.zeros(n_stats, np.float32), np.float32(-1.0))
        params["log_scale"] = np.float32(np.log(5.0))
        if residual:
            for side in ("user", "item"):
                if side in params:
                    w, b = params[side][-1]
                    params[side][-1] = (w * 0.1, b)
        return _pointwise_loss(item_tower, dim, residual)
    return _softmax_loss(temperature, item_tower, dim)


def fit_two_tower(
    examples: Any,
    *,
    feature_set_version: Optional[str],
    item_tower: str = "mlp",
    item_stats: bool = True,
    objective: str = "softmax",
    row_weights: Optional[np.ndarray] = None,
    residual: bool = False,
    user_hidden: Sequence[int] = (128,),
    item_hidden: Sequence[int] = (128,),
    out_dim: Optional[int] = None,
    temperature: float = 0.05,
    positive: Sequence[str] = ("completed", "liked"),
    long_term: str = "pooled",
    version: str = "tt-v1",
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 2e-3,
    holdout: float = 0.15,
    patience: int = 3,
    seed: int = 0,
) -> TwoTowerFit:
    """Trains the user and item towers on a training set.

    ``examples``: a ``fyp_core.features.training_set`` table (user state at request time, the
    item served, its engagement). ``objective``: "softmax" (in-batch sampled softmax over the
    rows with a ``positive`` label, logQ corrected, ``temperature``) or "pointwise" (binary
    cross-entropy over every impression, skipped items the negatives, with an item bias from
    ``ITEM_STATS`` that is not part of the exported towers; ``row_weights``, one per row,
    weight its loss, e.g. the exploration arm up; ``residual``: each tower is its MLP plus the
    identity on ``u_emb`` / the content embedding, so it starts as the heuristic blend's
    query over the content index and learns a correction; exported as a plain MLP with 2 x dim
    extra hidden units carrying relu(x) - relu(-x) = x). ``item_tower``: "mlp" (learned over
    the content embedding, plus ``ITEM_STATS`` when ``item_stats``) or "content" (fixed to the
    content embedding: the user tower then queries the serving index as it is); ``out_dim``
    defaults to the content width. An "mlp" item tower with ``item_stats=False`` maps the
    content embedding alone, the input ``FeedPipeline.set_retrieval`` embeds uploads with.
    ``long_term``: "pooled" puts ``pooled_history`` (point in time) in the user block's
    long-term slot, so the offline pass (``user_vectors``) can feed the user's whole logged
    history; "served" keeps the logged batch vector (what the serving user tower sees).
    ``ValueError`` before training on a feature-set mismatch, NaN features, too few positives.
    """
    _check_tower_args(item_tower, temperature, long_term, objective, residual)
    row_weights = _check_row_weights(row_weights, examples.num_rows, objective)
    fsv, pos, u, v, stats, dim = _examples(
        examples, feature_set_version, positive, batch_size, item_stats
    )
    if long_term == "pooled":  # point in time, from the whole examples table
        names = _data.table_feature_names(examples)
        u = with_long_term(u, names, pooled_history(examples))
    out = int(out_dim or dim)
    if (item_tower == "content" or residual) and out != dim:
        raise ValueError(
            f"out_dim must equal the content dim {dim} with item_tower='content' or residual"
        )
    t0 = time.perf_counter()
    mu_u, sd_u = _data.standardise(u)
    mu_v, sd_v = _data.standardise(v)
    us = ((u - mu_u) / sd_u).astype(np.float32)
    vs = v if item_tower == "content" else ((v - mu_v) / sd_v).astype(np.float32)
    skips = (np.ascontiguousarray(u[:, :dim]), np.ascontiguousarray(v[:, :dim]))
    table, arrays = _train_arrays(objective, examples, pos, us, vs, stats, row_weights, skips)
    tr, ho = _data.time_split(table, holdout)
    params = _init_params(u.shape[1], v.shape[1], user_hidden, item_hidden, out, item_tower, seed)
    loss = _objective(objective, params, stats.shape[1], item_tower, dim, temperature, residual)
    cfg = _mlp.loop_config(lr, epochs, batch_size, patience, seed)
    best, history, best_epoch = _fit_loop(
        params, tuple(a[tr] for a in arrays), tuple(a[ho] for a in arrays), loss, cfg
    )
    rest = {"temperature": temperature, "long_term": long_term, "history": history}
    rest.update(best_epoch=best_epoch, seconds=time.perf_counter() - t0, n_examples=len(tr))
    norm = (mu_u, sd_u, mu_v, sd_v)
    skip = dim if residual else 0
    return _export(best, item_tower, norm, fsv, version, dim, v.shape[1], rest, skip)


def _export(
    best: Any,
    item_tower: str,
    norm: tuple[np.ndarray, ...],
    fsv: str,
    version: str,
    dim: int,
    item_width: int,
    rest: dict[str, Any],
    skip: int,
) -> TwoTowerFit:
    mu_u, sd_u, mu_v, sd_v = norm
    up = _mlp.to_numpy(best["user"])
    user = _tower(up, mu_u, sd_u, f"{version}-user", fsv, "user", skip)
    ip = _mlp.to_numpy(best["item"]) if item_tower == "mlp" else None
    item = (
        _tower(ip, mu_v, sd_v, f"{version}-item", fsv, "item", skip)
        if ip is not None
        else _content_tower(item_width, dim, f"{version}-item", fsv)
    )
    return TwoTowerFit(
        user_tower=user,
        item_tower=item,
        user_params=up,
        item_params=ip,
        item_mode=item_tower,
        user_mean=mu_u,
        user_scale=sd_u,
        **rest,
    )


def train_two_tower(
    examples: Any, *, feature_set_version: Optional[str], **kwargs: Any
) -> tuple[MlpRanker, MlpRanker]:
    """``(user_tower, item_tower)`` of ``fit_two_tower`` (see it for the arguments)."""
    fit = fit_two_tower(examples, feature_set_version=feature_set_version, **kwargs)
    return fit.user_tower, fit.item_tower


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(n > 0, n, 1.0)).astype(np.float32)


def recall_at_k(
    user_vecs: np.ndarray, item_vecs: np.ndarray, true_scores: np.ndarray, k: int = 100
) -> float:
    """Mean over users of |predicted top-k ∩ true top-k| / k, by brute force.

    ``user_vecs`` (U, d) and ``item_vecs`` (N, d) score items by inner product;
    ``true_scores`` (U, N) is the ground truth (e.g. the synthetic world's affinity).
    """
    if true_scores.shape != (len(user_vecs), len(item_vecs)):
        raise ValueError(
            f"true_scores has shape {true_scores.shape}, expected "
            f"({len(user_vecs)}, {len(item_vecs)})"
        )
    if not 0 < k <= len(item_vecs):
        raise ValueError(f"k must be in [1, {len(item_vecs)}], got {k}")
    pred = user_vecs @ item_vecs.T
    top_p = np.argpartition(-pred, k - 1, axis=1)[:, :k]
    top_t = np.argpartition(-true_scores, k - 1, axis=1)[:, :k]
    hits = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(top_p, top_t)]
    return float(np.mean(hits) / k)


def catalogue_item_inputs(item_ids: np.ndarray, item_emb: np.ndarray, table: Any) -> np.ndarray:
    """Item-tower inputs for a whole catalogue (the offline pass that fills a new index):
    content embedding plus ``ITEM_STATS`` from each item's latest served row in ``table``,
    the empty-window values for items never served."""
    names = _data.table_feature_names(table)
    stats = np.tile(np.asarray(ITEM_STATS_PRIOR, np.float32), (len(item_ids), 1))
    if table.num_rows:
        x = _data.feature_matrix(table, "table")
        cols = [names.index(s) for s in ITEM_STATS]
        ts = np.asarray(table.column("ts").cast("int64").to_numpy(zero_copy_only=False))
        served = np.asarray(table.column("item_id").to_numpy(zero_copy_only=False))
        newest_first = np.argsort(-ts, kind="stable")
        ids, first = np.unique(served[newest_first], return_index=True)
        rows = np.searchsorted(item_ids, ids)
        ok = (rows < len(item_ids)) & (item_ids[np.minimum(rows, len(item_ids) - 1)] == ids)
        stats[rows[ok]] = x[newest_first[first[ok]]][:, cols]
    return np.ascontiguousarray(np.hstack([item_emb.astype(np.float32), stats]))


def pooled_history(
    table: Any, positive: Sequence[str] = ("completed",), point_in_time: bool = True
) -> np.ndarray:
    """Per row, the L2-normalised mean content embedding of the user's positive rows: the
    user's long engagement history pooled from the log (zeros without any).

    ``point_in_time``: only rows of earlier requests (``ts`` strictly before the row's), the
    training input; otherwise every row of the user in ``table`` (the offline pass's input).
    """
    names = _data.table_feature_names(table)
    emb = _data.feature_matrix(table, "table")[:, _columns(names, "i_emb_")].astype(np.float64)
    pos = _positives(table, positive)
    tok = np.asarray(table.column("user_token").to_pylist()).astype(str)
    ts = np.asarray(table.column("ts").cast("int64").to_numpy(zero_copy_only=False))
    order = np.lexsort((ts, tok))
    t_s, k_s = ts[order], tok[order]
    c = np.cumsum(emb[order] * pos[order, None], axis=0)
    c = np.vstack([np.zeros((1, emb.shape[1])), c])  # c[i] = sum of rows before i
    user_start = np.r_[0, np.flatnonzero(k_s[1:] != k_s[:-1]) + 1]
    start_of = np.repeat(user_start, np.diff(np.r_[user_start, len(order)]))
    if point_in_time:  # up to the first row of this (user, ts) group
        new_group = np.r_[True, (k_s[1:] != k_s[:-1]) | (t_s[1:] != t_s[:-1])]
        upto = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    else:  # the user's whole history in the table
        user_end = np.r_[user_start[1:], len(order)]
        upto = np.repeat(user_end, np.diff(np.r_[user_start, len(order)]))
    out = np.empty_like(emb)
    out[order] = c[upto] - c[start_of]
    return l2_rows(out)


def with_long_term(u: np.ndarray, names: list[str], long_term: np.ndarray) -> np.ndarray:
    """User-tower inputs with the long-term slot (``u_long_*``) replaced by ``long_term``."""
    out = u.copy()
    user_names = [n for n in names if n.startswith("u_")]
    cols = [i for i, n in enumerate(user_names) if n.startswith("u_long_")]
    out[:, cols] = long_term
    return out


def user_vectors(fit: TwoTowerFit, table: Any) -> tuple[list[str], np.ndarray]:
    """The user tower's offline pass: for each user in ``table``, the tower's output (unit
    rows) on their latest logged user block, its long-term slot holding their pooled history
    over the whole table when the tower was trained with ``long_term="pooled"``. Returns
    (user tokens, vectors)."""
    names = _data.table_feature_names(table)
    ts = np.asarray(table.column("ts").cast("int64").to_numpy(zero_copy_only=False))
    tok = np.asarray(table.column("user_token").to_pylist()).astype(str)
    newest_first = np.argsort(-ts, kind="stable")
    users, first = np.unique(tok[newest_first], return_index=True)
    rows = newest_first[first]
    u = user_tower_inputs(_data.feature_matrix(table, "table")[rows], names)
    if fit.long_term == "pooled":
        u = with_long_term(u, names, pooled_history(table, point_in_time=False)[rows])
    return [str(x) for x in users], l2_rows(fit.user_tower.predict(u))
