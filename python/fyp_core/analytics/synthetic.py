"""A deterministic simulated world writing the counterfactual log (schema v1) with a known truth.

It stands in for the serving pipeline + Rust writer offline: tests, benchmarks and the report demo
read its logs with the same SQL they would run on production logs, and check the answers against
the world's ground truth (`SimTruth`). Everything is vectorised numpy; nothing loops over slots.

World (one request = one feed of ``slots`` slots, K candidates per request):
    rel(u, i, day) = a0 + day_logit[day] + beta * quality[i] + gamma * affinity[u, topic[i]]
    P(engaged | shown at position k) = pos_curve[k] * sigmoid(rel), pos_curve[k] = (1+k) ** -alpha
Slots: exploration with prob ``explore_rate`` (uniform over the K candidates, propensity 1/K),
fresh with prob ``fresh_rate`` (uniform over items uploaded in the last ``fresh_hours``,
propensity 1/pool), else ranked (the live model's next-best candidate, propensity 1): the logged
propensity is the probability of the item given the slot's arm, as the pipeline logs it
(docs/ope.md); the arm is drawn independently of the items. An engaged impression "completes"
(and may like, share, follow); a share ``late_share`` of engaged impressions report after
``window_hours``.
Shadow models score every impression, and every candidate of a logged request, with a known
noise / calibration distortion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fyp_core import _core, eventlog
from fyp_core.eventlog import SCHEMA_VERSION
from fyp_core.synth import TASKS as SYNTH_TASKS

__all__ = [
    "DEFAULT_MODELS",
    "FEATURE_NAMES",
    "SCHEMAS",
    "SIM_TABLES",
    "TASKS",
    "TS",
    "US_PER_DAY",
    "US_PER_HOUR",
    "BanditLog",
    "BanditWorld",
    "ShadowSpec",
    "SimTruth",
    "generate_log",
    "user_token",
]

TS = pa.timestamp("us", tz="UTC")
#: The simulators' one task list (``fyp_core.synth.TASKS``): ranker_scores has a column per task.
TASKS = SYNTH_TASKS
US_PER_HOUR = 3_600_000_000
US_PER_DAY = 24 * US_PER_HOUR

#: The tables this simulator writes, with the writer's own schemas (``fyp_core.eventlog``).
SIM_TABLES = (
    "impressions",
    "engagements",
    "exploration_events",
    "ranker_scores",
    "requests",
    "served_features",
)
SCHEMAS: Dict[str, pa.Schema] = {t: eventlog.schema(t, TASKS) for t in SIM_TABLES}
FEATURE_NAMES = [
    "quality",
    "topic_affinity",
    "age_hours",
    "position_prior",
    "creator_age_days",
    "day_of_week",
    "score_live",
    "bias",
]


def user_token(user_id: str, key: bytes) -> str:
    """HMAC-SHA256(key, UTF-8 user id), first 16 bytes as lower-case hex (schema v1)."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).digest()[:16].hex()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _shadow_candidate_columns(
    models: Sequence[ShadowSpec], cand_rel: np.ndarray, pos0: float, seed: int, k: int
) -> Dict[str, pa.Array]:
    """The requests row's shadow columns: each shadow's value score of every candidate (its
    distortion of the candidate's position-0 truth), shadow-major, as the pipeline logs them.
    Own generator, so adding the columns left every other simulated draw unchanged."""
    rng = np.random.default_rng([seed, 0x5AD0])
    shadows = [m for m in models if m.is_shadow]
    logit_p = _logit(pos0 * _sigmoid(cand_rel))
    blocks = []
    for m in shadows:  # loops over models, not rows
        pf = _sigmoid(m.slope * logit_p + m.bias + rng.normal(0, m.noise, logit_p.shape))
        blocks.append(pf + 2 * 0.35 * pf + 4 * 0.06 * pf)  # the value model of ranker_scores
    n = cand_rel.shape[0]
    flat = np.stack(blocks, axis=1).reshape(-1) if blocks else np.zeros(0)
    offs = np.arange(n + 1, dtype=np.int32) * (k * len(shadows))
    versions = pa.array([m.version for m in shadows] * n, pa.string())
    return {
        "shadow_versions": pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * len(shadows)), versions
        ),
        "shadow_candidate_scores": pa.ListArray.from_arrays(
            pa.array(offs), pa.array(flat.astype(np.float32))
        ),
    }


@dataclass(frozen=True)
class ShadowSpec:
    """A model's frozen predictions: logit(pred) = slope * logit(p) + bias + N(0, noise)."""

    version: str
    noise: float
    slope: float = 1.0
    bias: float = 0.0
    is_shadow: bool = True
    expected_verdict: str = "ready"


DEFAULT_MODELS = (
    ShadowSpec("live-v1", noise=0.7, is_shadow=False, expected_verdict="live"),
    ShadowSpec("shadow-v2", noise=0.25, expected_verdict="ready"),
    ShadowSpec("shadow-v3", noise=0.25, slope=1.6, bias=1.2, expected_verdict="not ready"),
)


@dataclass(frozen=True)
class SimTruth:
    """The simulated world's parameters and the true values the analytics should recover."""

    root: str
    start_us: int
    days: int
    slots: int
    n_candidates: int
    explore_rate: float
    fresh_rate: float
    window_hours: float
    late_share: float
    pos_curve: np.ndarray
    a0: float
    beta: float
    gamma: float
    day_logit: np.ndarray
    user_tokens: np.ndarray  # str, index = user
    affinity: np.ndarray  # [users, topics]
    item_ids: np.ndarray  # uint64, index = item (sorted by upload time)
    item_topic: np.ndarray
    item_quality: np.ndarray
    item_creator: np.ndarray
    item_upload_us: np.ndarray
    models: tuple
    live_version: str
    # population truths over every slot served (before sampling)
    ranked_rate_by_topic: np.ndarray  # P(engaged in window), ranked slots
    exploration_rate_by_topic: np.ndarray
    lift_by_topic: np.ndarray
    ranked_rate: float
    exploration_rate: float
    lift: float
    n_slots: int
    n_impressions_logged: int
    counts: Dict[str, int] = field(default_factory=dict)

    @property
    def n_topics(self) -> int:
        return int(self.affinity.shape[1])

    def engagement_prob(
        self,
        user_tokens: Sequence[str],
        item_ids: np.ndarray,
        positions: np.ndarray,
        ts_us: np.ndarray,
        within_window: bool = True,
    ) -> np.ndarray:
        """True P(engaged) of showing item_ids at positions to user_tokens at ts_us (vectorised)."""
        order = np.argsort(self.user_tokens)
        u = order[np.searchsorted(self.user_tokens, np.asarray(user_tokens), sorter=order)]
        iorder = np.argsort(self.item_ids)
        it = iorder[
            np.searchsorted(self.item_ids, np.asarray(item_ids, dtype=np.uint64), sorter=iorder)
        ]
        day = np.clip(
            (np.asarray(ts_us, dtype=np.int64) - self.start_us) // US_PER_DAY, 0, self.days - 1
        )
        rel = (
            self.a0
            + self.day_logit[day]
            + self.beta * self.item_quality[it]
            + self.gamma * self.affinity[u, self.item_topic[it]]
        )
        p = self.pos_curve[np.asarray(positions)] * _sigmoid(rel)
        return p * (1.0 - self.late_share) if within_window else p


def _write_partitioned(
    root: str,
    table: str,
    t: pa.Table,
    ts_us: np.ndarray,
    writer_id: str,
    metadata: Optional[Dict[str, str]] = None,
) -> int:
    """Write ``t`` under root/table/dt=/hour=/, one file per hour, via temp name + rename."""
    if t.num_rows == 0:
        return 0
    order = np.argsort(ts_us, kind="stable")
    ts_sorted = ts_us[order]
    t = t.take(pa.array(order))
    hours = ts_sorted // US_PER_HOUR
    cuts = np.flatnonzero(np.diff(hours)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(hours)]])
    md = {"fyp.schema_version": SCHEMA_VERSION, "fyp.table": table, **(metadata or {})}
    schema = SCHEMAS[table].with_metadata(md)
    if "impression_key" in schema.names and "impression_key" not in t.column_names:
        # the writer's derived join key, computed by the same core function
        ids = t.column("impression_id").to_pylist()
        t = t.append_column("impression_key", pa.array(eventlog.impression_keys(ids)))
    files = 0
    for s, e in zip(starts.tolist(), ends.tolist()):  # loops over hours, not rows
        h = int(hours[s])
        dt = np.datetime64(h * US_PER_HOUR, "us").astype("datetime64[D]").astype(str)
        d = os.path.join(root, table, f"dt={dt}", f"hour={h % 24:02d}")
        os.makedirs(d, exist_ok=True)
        final = os.path.join(d, f"part-{writer_id}-{files:06d}.parquet")
        tmp = os.path.join(d, f".part-{writer_id}-{files:06d}.parquet.tmp")
        pq.write_table(t.slice(s, e - s).cast(schema), tmp, compression="zstd")
        os.replace(tmp, final)
        files += 1
    return files


def _ids(prefix: str, n: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(
        pa.scalar(prefix), pc.utf8_lpad(pc.cast(pa.array(n), pa.string()), 9, "0"), ""
    )


def _check_generate_args(
    n_items: int, n_candidates: int, explore_rate: float, fresh_rate: float
) -> None:
    """Reject world sizes and arm rates ``generate_log`` cannot simulate."""
    if n_items < 2 * n_candidates:
        raise ValueError(f"n_items ({n_items}) must be at least 2 * n_candidates ({n_candidates})")
    if not (explore_rate >= 0 and fresh_rate >= 0 and explore_rate + fresh_rate < 1):
        raise ValueError("explore_rate + fresh_rate must be in [0, 1)")


@dataclass(frozen=True)
class _World:
    """The simulated world's fixed parts: its time span, relevance model, users, creators, items."""

    start_us: int
    span: int
    pos_curve: np.ndarray
    a0: float
    beta: float
    gamma: float
    day_logit: np.ndarray
    users_join: np.ndarray
    tokens: np.ndarray  # str, index = user
    affinity: np.ndarray  # [users, topics]
    creator_ids: np.ndarray
    creator_birth: np.ndarray
    upload: np.ndarray  # item upload times, sorted
    item_creator: np.ndarray
    item_topic: np.ndarray
    item_quality: np.ndarray
    item_ids: np.ndarray

    def rel(self, u: np.ndarray, it: np.ndarray, d: np.ndarray) -> np.ndarray:
        """The relevance logit of items ``it`` for users ``u`` on days ``d`` (broadcasting)."""
        return (
            self.a0
            + self.day_logit[d]
            + self.beta * self.item_quality[it]
            + self.gamma * self.affinity[u, self.item_topic[it]]
        )


def _build_world(
    rng: np.random.Generator,
    *,
    start: str,
    days: int,
    slots: int,
    pos_alpha: float,
    n_users: int,
    n_topics: int,
    n_creators: int,
    n_items: int,
    n_candidates: int,
    key: bytes,
) -> _World:
    """Draw the world: day effects, users (join times, tokens, affinities), creators, items."""
    start_us = int(np.datetime64(start, "us").astype(np.int64))
    span = days * US_PER_DAY
    pos_curve = (1.0 + np.arange(slots)) ** -pos_alpha
    day_logit = np.where(np.arange(days) % 7 >= 5, 0.35, 0.0) + rng.normal(0, 0.1, days)

    # users: join times over the first 60% of the span; tokens never the raw id
    users_join = np.sort(rng.integers(0, int(span * 0.6), n_users)) + start_us
    users_join[: max(1, n_users // 5)] = start_us  # a founding cohort
    tokens = np.array([user_token(f"user-{u:07d}", key) for u in range(n_users)])
    affinity = np.log(rng.dirichlet(np.full(n_topics, 0.6), n_users) * n_topics + 1e-3)
    affinity = (affinity - affinity.mean()) / affinity.std()

    # creators are born over time; items are uploaded over time (half before the log starts)
    creator_ids = np.arange(n_creators, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(
        7_000_000_000
    )
    creator_birth = np.sort(rng.integers(-span, span, n_creators)) + start_us
    n_old = n_items // 2
    upload = np.sort(
        np.concatenate(
            [
                start_us - rng.integers(1, 60 * US_PER_DAY, n_old),
                start_us + rng.integers(0, span, n_items - n_old),
            ]
        )
    )
    upload[: 2 * n_candidates] = upload[0]
    born_before = np.maximum(np.searchsorted(creator_birth, upload, side="right"), 1)
    item_creator = (rng.random(n_items) * born_before).astype(np.int64)
    item_topic = rng.integers(0, n_topics, n_items).astype(np.int32)
    item_quality = rng.normal(0, 1, n_items)
    item_ids = np.arange(n_items, dtype=np.uint64) * np.uint64(2654435761) + np.uint64(1_000_003)
    return _World(
        start_us=start_us,
        span=span,
        pos_curve=pos_curve,
        a0=-2.2,
        beta=0.9,
        gamma=1.2,
        day_logit=day_logit,
        users_join=users_join,
        tokens=tokens,
        affinity=affinity,
        creator_ids=creator_ids,
        creator_birth=creator_birth,
        upload=upload,
        item_creator=item_creator,
        item_topic=item_topic,
        item_quality=item_quality,
        item_ids=item_ids,
    )


@dataclass(frozen=True)
class _Requests:
    """The simulated requests: when, for whom, their candidates and the live model's scores."""

    ts: np.ndarray
    user: np.ndarray
    day: np.ndarray
    n_avail: np.ndarray  # items uploaded by the request's time
    cand: np.ndarray  # [requests, K] item indices
    cand_rel: np.ndarray
    cand_score: np.ndarray  # the live model's scores, float32
    by_score: np.ndarray  # cand, best live score first
    live: ShadowSpec


def _draw_requests(
    rng: np.random.Generator,
    w: _World,
    models: Sequence[ShadowSpec],
    *,
    n_requests: int,
    n_candidates: int,
) -> _Requests:
    """Draw the requests (time, joined user), their K candidates and the live model's ranking."""
    req_ts = np.sort(rng.integers(0, w.span, n_requests)) + w.start_us
    n_joined = np.maximum(np.searchsorted(w.users_join, req_ts, side="right"), 1)
    req_user = (rng.random(n_requests) * n_joined).astype(np.int64)
    req_day = (req_ts - w.start_us) // US_PER_DAY
    n_avail = np.searchsorted(w.upload, req_ts, side="right")
    base = rng.integers(0, 2**62, n_requests) % n_avail
    step = 1 + rng.integers(0, 2**62, n_requests) % np.maximum(n_avail // n_candidates, 1)
    cand = (base[:, None] + np.arange(n_candidates)[None, :] * step[:, None]) % n_avail[:, None]

    live = next(m for m in models if not m.is_shadow)
    cand_rel = w.rel(req_user[:, None], cand, req_day[:, None])
    cand_score = _sigmoid(
        live.slope * cand_rel + live.bias + rng.normal(0, live.noise, cand.shape)
    ).astype(np.float32)
    by_score = np.take_along_axis(cand, np.argsort(-cand_score, axis=1, kind="stable"), axis=1)
    return _Requests(
        ts=req_ts,
        user=req_user,
        day=req_day,
        n_avail=n_avail,
        cand=cand,
        cand_rel=cand_rel,
        cand_score=cand_score,
        by_score=by_score,
        live=live,
    )


@dataclass(frozen=True)
class _Slots:
    """Every served slot ([requests, slots]): its arm, item, propensity and outcome."""

    item: np.ndarray
    is_exp: np.ndarray
    is_ranked: np.ndarray
    propensity: np.ndarray
    source: np.ndarray  # 0 ranked, 1 fresh, 2 exploration
    p_true: np.ndarray
    imp_ts: np.ndarray
    engaged: np.ndarray
    late: np.ndarray


def _serve_slots(
    rng: np.random.Generator,
    w: _World,
    rq: _Requests,
    *,
    explore_rate: float,
    fresh_rate: float,
    fresh_hours: float,
    late_share: float,
) -> _Slots:
    """Draw each slot's arm (exploration | fresh | ranked) and item, then its outcome."""
    n_requests, n_candidates = rq.cand.shape
    slots = len(w.pos_curve)
    # slots: exploration | fresh | ranked
    u01 = rng.random((n_requests, slots))
    is_exp = u01 < explore_rate
    fresh_lo = np.searchsorted(w.upload, rq.ts - int(fresh_hours * US_PER_HOUR), side="right")
    pool = (rq.n_avail - fresh_lo)[:, None]
    is_fresh = (~is_exp) & (u01 < explore_rate + fresh_rate) & (pool > 0)
    is_ranked = ~(is_exp | is_fresh)
    rank_idx = np.cumsum(is_ranked, axis=1) - 1
    item = np.take_along_axis(rq.by_score, np.clip(rank_idx, 0, n_candidates - 1), axis=1)
    exp_pick = rng.integers(0, n_candidates, (n_requests, slots))
    item = np.where(is_exp, np.take_along_axis(rq.cand, exp_pick, axis=1), item)
    fresh_pick = fresh_lo[:, None] + (rng.random((n_requests, slots)) * np.maximum(pool, 1))
    item = np.where(is_fresh, fresh_pick.astype(np.int64), item)
    propensity = np.where(
        is_exp,
        1.0 / n_candidates,
        np.where(is_fresh, 1.0 / np.maximum(pool, 1), 1.0),
    )  # P(item | the slot's arm): docs/ope.md (a ranked slot's pick is deterministic)
    source = np.where(is_exp, 2, np.where(is_fresh, 1, 0))  # 0 ranked, 1 fresh, 2 exploration

    # outcomes (engagements are never sampled)
    pos = np.broadcast_to(np.arange(slots), (n_requests, slots))
    p_true = w.pos_curve[pos] * _sigmoid(w.rel(rq.user[:, None], item, rq.day[:, None]))
    imp_ts = rq.ts[:, None] + pos * 1000
    engaged = rng.random((n_requests, slots)) < p_true
    late = engaged & (rng.random((n_requests, slots)) < late_share)
    return _Slots(
        item=item,
        is_exp=is_exp,
        is_ranked=is_ranked,
        propensity=propensity,
        source=source,
        p_true=p_true,
        imp_ts=imp_ts,
        engaged=engaged,
        late=late,
    )


def _rate_by_topic(
    w: _World, sl: _Slots, p_win: np.ndarray, mask: np.ndarray, n_topics: int
) -> np.ndarray:
    """Mean P(engaged within the window) per item topic over the slots in ``mask``."""
    t_flat = w.item_topic[sl.item].ravel()
    m = mask.ravel()
    num = np.bincount(t_flat[m], weights=p_win.ravel()[m], minlength=n_topics)
    return num / np.maximum(np.bincount(t_flat[m], minlength=n_topics), 1)


@dataclass(frozen=True)
class _Sample:
    """What the firehose keeps: sampled requests, logged slots and their ids."""

    req_pct: np.ndarray
    keep_req: np.ndarray
    slot_pct: np.ndarray
    ri: np.ndarray  # logged slots, row-major: request then position
    si: np.ndarray
    req_id_all: pa.Array
    tokens_pa: pa.Array
    imp_id: pa.Array


def _slot_ids(
    w: _World, rq: _Requests, req_id_all: pa.Array, reqs: np.ndarray, positions: np.ndarray
) -> pa.Array:
    """The pipeline's impression ids of these (request, position) slots (one derivation)."""
    return pa.array(
        _core.impression_ids(
            req_id_all.take(pa.array(reqs)).to_pylist(),
            w.tokens[rq.user[reqs]].tolist(),
            positions.astype(np.int64),
        ),
        pa.string(),
    )


def _sample_firehose(
    rng: np.random.Generator,
    w: _World,
    rq: _Requests,
    sl: _Slots,
    *,
    sampled_pct_by_day: Sequence[float],
    days: int,
) -> _Sample:
    """Sample per request by the request's day; exploration slots are always kept."""
    n_requests = len(rq.ts)
    pct_by_day = np.array([sampled_pct_by_day[d % len(sampled_pct_by_day)] for d in range(days)])
    req_pct = pct_by_day[rq.day]
    keep_req = rng.random(n_requests) * 100.0 < req_pct
    keep = sl.is_exp | keep_req[:, None]
    slot_pct = np.where(sl.is_exp, 100.0, req_pct[:, None])

    ri, si = np.nonzero(keep)  # row-major: request then position
    req_id_all = _ids("r", np.arange(n_requests))
    return _Sample(
        req_pct=req_pct,
        keep_req=keep_req,
        slot_pct=slot_pct,
        ri=ri,
        si=si,
        req_id_all=req_id_all,
        tokens_pa=pa.array(w.tokens),
        imp_id=_slot_ids(w, rq, req_id_all, ri, si),
    )


def _write_impressions(root: str, w: _World, rq: _Requests, sl: _Slots, sm: _Sample) -> int:
    """Write the logged impressions (every kept slot); returns rows."""
    ri, si = sm.ri, sm.si
    it_k = sl.item[ri, si]
    src_names = np.array(["ranked", "fresh", "exploration"])
    imp = pa.table(
        {
            "impression_id": sm.imp_id,
            "ts": pa.array(sl.imp_ts[ri, si], TS),
            "request_id": sm.req_id_all.take(pa.array(ri)),
            "user_token": sm.tokens_pa.take(pa.array(rq.user[ri])),
            "item_id": pa.array(w.item_ids[it_k]),
            "position": pa.array(si.astype(np.int32)),
            "source": pa.array(src_names[sl.source[ri, si]]),
            "propensity": pa.array(sl.propensity[ri, si]),
            "model_version": pa.array(np.full(len(ri), rq.live.version)),
            "experiments": pa.array(np.full(len(ri), "{}")),
            "topic": pa.array(w.item_topic[it_k]),
            "creator_id": pa.array(w.creator_ids[w.item_creator[it_k]]),
            "sampled_pct": pa.array(sm.slot_pct[ri, si]),
        }
    )
    os.makedirs(root, exist_ok=True)
    _write_partitioned(root, "impressions", imp, sl.imp_ts[ri, si], "sim")
    return imp.num_rows


def _write_exploration_events(
    root: str, w: _World, rq: _Requests, sl: _Slots, sm: _Sample, n_candidates: int
) -> int:
    """Write one exploration_events row per exploration slot (never sampled); returns rows."""
    ei, ej = np.nonzero(sl.is_exp)
    ee_pos = pa.array(ej.astype(np.int32))
    ee = pa.table(
        {
            "impression_id": _slot_ids(w, rq, sm.req_id_all, ei, ej),
            "ts": pa.array(sl.imp_ts[ei, ej], TS),
            "user_token": sm.tokens_pa.take(pa.array(rq.user[ei])),
            "item_id": pa.array(w.item_ids[sl.item[ei, ej]]),
            "position": ee_pos,
            "topic": pa.array(w.item_topic[sl.item[ei, ej]]),
            "propensity": pa.array(np.full(len(ei), 1.0 / n_candidates)),
            "policy": pa.array(np.full(len(ei), "uniform")),
        }
    )
    _write_partitioned(root, "exploration_events", ee, sl.imp_ts[ei, ej], "sim")
    return ee.num_rows


def _write_engagements(
    rng: np.random.Generator,
    root: str,
    w: _World,
    rq: _Requests,
    sl: _Slots,
    sm: _Sample,
    window_hours: float,
) -> int:
    """Write the engagements (never sampled); returns rows.

    Engaged slots get a completion row (+ a later like row for some); a share of non-engaged
    slots get a "view" row with a few seconds and no positive signal."""
    engaged, imp_ts = sl.engaged, sl.imp_ts
    ai, aj = np.nonzero(engaged)
    n_e = len(ai)
    delay = rng.exponential(20e6, n_e).astype(np.int64) + 2_000_000
    delay = np.where(
        sl.late[ai, aj],
        int(window_hours * US_PER_HOUR) + rng.integers(US_PER_HOUR, US_PER_DAY, n_e),
        delay,
    )
    liked = rng.random(n_e) < 0.35
    like_row = liked & (rng.random(n_e) < 0.5)  # half the likes come as a separate later row
    vi, vj = np.nonzero(~engaged & (rng.random(engaged.shape) < 0.3))
    e_req = np.concatenate([ai, ai[like_row], vi])
    e_pos = np.concatenate([aj, aj[like_row], vj])
    e_ts = np.concatenate(
        [
            imp_ts[ai, aj] + delay,
            imp_ts[ai[like_row], aj[like_row]] + delay[like_row] + 5_000_000,
            imp_ts[vi, vj] + rng.integers(500_000, 8_000_000, len(vi)),
        ]
    )
    n_like = int(like_row.sum())
    e_completed = np.concatenate(
        [np.ones(n_e, bool), np.zeros(n_like, bool), np.zeros(len(vi), bool)]
    )
    e_liked = np.concatenate([liked & ~like_row, np.ones(n_like, bool), np.zeros(len(vi), bool)])
    e_shared = np.concatenate([rng.random(n_e) < 0.06, np.zeros(n_like + len(vi), bool)])
    e_followed = np.concatenate([rng.random(n_e) < 0.03, np.zeros(n_like + len(vi), bool)])
    e_watch = np.concatenate(
        [rng.uniform(8, 60, n_e), np.zeros(n_like), rng.uniform(0.3, 4, len(vi))]
    ).astype(np.float32)
    eng = pa.table(
        {
            "impression_id": _slot_ids(w, rq, sm.req_id_all, e_req, e_pos),
            "ts": pa.array(e_ts, TS),
            "user_token": sm.tokens_pa.take(pa.array(rq.user[e_req])),
            "watched_seconds": pa.array(e_watch),
            "completed": pa.array(e_completed),
            "liked": pa.array(e_liked),
            "shared": pa.array(e_shared),
            "followed": pa.array(e_followed),
        }
    )
    _write_partitioned(root, "engagements", eng, e_ts, "sim")
    return eng.num_rows


def _write_ranker_scores(
    rng: np.random.Generator,
    root: str,
    sl: _Slots,
    sm: _Sample,
    models: Sequence[ShadowSpec],
) -> int:
    """Write ranker_scores: every logged impression, one row per model (frozen before the
    outcome); returns rows."""
    ri, si = sm.ri, sm.si
    logit_p = _logit(sl.p_true[ri, si])
    score_tables = []
    for m in models:  # loops over models, not rows
        pf = _sigmoid(m.slope * logit_p + m.bias + rng.normal(0, m.noise, len(ri)))
        preds = {
            "pred_finish": pf,
            "pred_like": 0.35 * pf,
            "pred_share": 0.06 * pf,
            "pred_follow": 0.03 * pf,
            "pred_comment": 0.02 * pf,
            "pred_watch_seconds": 2.0 + 30.0 * pf,
        }
        value = preds["pred_finish"] + 2 * preds["pred_like"] + 4 * preds["pred_share"]
        score_tables.append(
            pa.table(
                {
                    "impression_id": sm.imp_id,
                    "ts": pa.array(sl.imp_ts[ri, si] - 500, TS),
                    "model_version": pa.array(np.full(len(ri), m.version)),
                    "is_shadow": pa.array(np.full(len(ri), m.is_shadow)),
                    "value_score": pa.array(value.astype(np.float32)),
                    **{k: pa.array(v.astype(np.float32)) for k, v in preds.items()},
                    "sampled_pct": pa.array(sm.slot_pct[ri, si]),
                }
            )
        )
    scores = pa.concat_tables(score_tables)
    _write_partitioned(
        root, "ranker_scores", scores, np.tile(sl.imp_ts[ri, si] - 500, len(models)), "sim"
    )
    return scores.num_rows


def _write_requests(
    root: str,
    w: _World,
    rq: _Requests,
    sl: _Slots,
    sm: _Sample,
    models: Sequence[ShadowSpec],
    *,
    slots: int,
    n_candidates: int,
    seed: int,
) -> int:
    """Write the sampled requests with their candidates, scores and served items; returns rows."""
    kr = np.flatnonzero(sm.keep_req)
    flat_cand = w.item_ids[rq.cand[kr]].ravel()
    offs = pa.array(np.arange(len(kr) + 1, dtype=np.int32) * n_candidates)
    offs_s = pa.array(np.arange(len(kr) + 1, dtype=np.int32) * slots)
    reqs = pa.table(
        {
            "request_id": sm.req_id_all.take(pa.array(kr)),
            "ts": pa.array(rq.ts[kr], TS),
            "user_token": sm.tokens_pa.take(pa.array(rq.user[kr])),
            "candidate_item_ids": pa.ListArray.from_arrays(offs, pa.array(flat_cand)),
            "candidate_scores": pa.ListArray.from_arrays(offs, pa.array(rq.cand_score[kr].ravel())),
            "served_item_ids": pa.ListArray.from_arrays(
                offs_s, pa.array(w.item_ids[sl.item[kr]].ravel())
            ),
            "sampled_pct": pa.array(sm.req_pct[kr]),
            **_shadow_candidate_columns(
                models, rq.cand_rel[kr], w.pos_curve[0], seed, n_candidates
            ),
        }
    )
    _write_partitioned(root, "requests", reqs, rq.ts[kr], "sim")
    return reqs.num_rows


def _write_served_features(
    root: str, w: _World, rq: _Requests, sl: _Slots, sm: _Sample, slots: int
) -> int:
    """Write the served features of every slot of the sampled requests; returns rows."""
    fi, fj = np.nonzero(sm.keep_req[:, None] & np.ones((1, slots), bool))
    it_f = sl.item[fi, fj]
    nf = len(FEATURE_NAMES)
    feats = np.stack(
        [
            w.item_quality[it_f],
            w.affinity[rq.user[fi], w.item_topic[it_f]],
            (rq.ts[fi] - w.upload[it_f]) / US_PER_HOUR,
            w.pos_curve[fj],
            (rq.ts[fi] - w.creator_birth[w.item_creator[it_f]]) / US_PER_DAY,
            ((rq.ts[fi] - w.start_us) // US_PER_DAY) % 7,
            np.zeros(len(fi)),
            np.ones(len(fi)),
        ],
        axis=1,
    ).astype(np.float32)
    sf = pa.table(
        {
            "request_id": sm.req_id_all.take(pa.array(fi)),
            "ts": pa.array(rq.ts[fi], TS),
            "item_id": pa.array(w.item_ids[it_f]),
            "features": pa.ListArray.from_arrays(
                pa.array(np.arange(len(fi) + 1, dtype=np.int32) * nf), pa.array(feats.ravel())
            ),
            "feature_set_version": pa.array(np.full(len(fi), "fs-v1")),
            "sampled_pct": pa.array(sm.req_pct[fi]),
        }
    )
    _write_partitioned(
        root,
        "served_features",
        sf,
        rq.ts[fi],
        "sim",
        {"fyp.feature_names": json.dumps(FEATURE_NAMES)},
    )
    return sf.num_rows


def _write_tables(
    rng: np.random.Generator,
    root: str,
    w: _World,
    rq: _Requests,
    sl: _Slots,
    sm: _Sample,
    models: Sequence[ShadowSpec],
    *,
    window_hours: float,
    seed: int,
    served_features: bool,
) -> Dict[str, int]:
    """Write the log's tables in their fixed order (the later draws depend on it); returns the
    row count of each table written."""
    slots, n_candidates = sl.item.shape[1], rq.cand.shape[1]
    counts: Dict[str, int] = {}
    counts["impressions"] = _write_impressions(root, w, rq, sl, sm)
    counts["exploration_events"] = _write_exploration_events(root, w, rq, sl, sm, n_candidates)
    counts["engagements"] = _write_engagements(rng, root, w, rq, sl, sm, window_hours)
    counts["ranker_scores"] = _write_ranker_scores(rng, root, sl, sm, models)
    counts["requests"] = _write_requests(
        root, w, rq, sl, sm, models, slots=slots, n_candidates=n_candidates, seed=seed
    )
    if served_features:
        counts["served_features"] = _write_served_features(root, w, rq, sl, sm, slots)
    return counts


def _sim_truth(
    root: str,
    w: _World,
    rq: _Requests,
    sl: _Slots,
    counts: Dict[str, int],
    models: Sequence[ShadowSpec],
    *,
    explore_rate: float,
    fresh_rate: float,
    window_hours: float,
    late_share: float,
) -> SimTruth:
    """The ground truth: the world's parameters and the population truths over every served slot
    (P(engaged within the window), before sampling)."""
    n_requests, slots = sl.item.shape
    days, n_candidates, n_topics = len(w.day_logit), rq.cand.shape[1], w.affinity.shape[1]
    p_win = sl.p_true * (1.0 - late_share)
    ranked_by_t = _rate_by_topic(w, sl, p_win, sl.is_ranked, n_topics)
    exp_by_t = _rate_by_topic(w, sl, p_win, sl.is_exp, n_topics)
    rr = float((p_win * sl.is_ranked).sum() / max(sl.is_ranked.sum(), 1))
    er = float((p_win * sl.is_exp).sum() / max(sl.is_exp.sum(), 1))
    return SimTruth(
        root=root,
        start_us=w.start_us,
        days=days,
        slots=slots,
        n_candidates=n_candidates,
        explore_rate=explore_rate,
        fresh_rate=fresh_rate,
        window_hours=window_hours,
        late_share=late_share,
        pos_curve=w.pos_curve,
        a0=w.a0,
        beta=w.beta,
        gamma=w.gamma,
        day_logit=w.day_logit,
        user_tokens=w.tokens,
        affinity=w.affinity,
        item_ids=w.item_ids,
        item_topic=w.item_topic,
        item_quality=w.item_quality,
        item_creator=w.item_creator,
        item_upload_us=w.upload,
        models=tuple(models),
        live_version=rq.live.version,
        ranked_rate_by_topic=ranked_by_t,
        exploration_rate_by_topic=exp_by_t,
        lift_by_topic=ranked_by_t / np.maximum(exp_by_t, 1e-12) - 1.0,
        ranked_rate=rr,
        exploration_rate=er,
        lift=rr / er - 1.0,
        n_slots=n_requests * slots,
        n_impressions_logged=counts["impressions"],
        counts=counts,
    )


def generate_log(
    root: str,
    *,
    n_requests: int = 20_000,
    n_users: int = 2_000,
    n_items: int = 20_000,
    n_topics: int = 8,
    n_creators: int = 1_500,
    days: int = 14,
    slots: int = 10,
    n_candidates: int = 40,
    explore_rate: float = 0.05,
    fresh_rate: float = 0.04,
    fresh_hours: float = 6.0,
    sampled_pct_by_day: Sequence[float] = (100.0, 50.0, 25.0),
    late_share: float = 0.03,
    window_hours: float = 24.0,
    pos_alpha: float = 0.5,
    models: Sequence[ShadowSpec] = DEFAULT_MODELS,
    start: str = "2026-01-05",
    served_features: bool = True,
    seed: int = 0,
    key: bytes = b"fyp-sim-key",
) -> SimTruth:
    """Simulate ``n_requests`` feed requests over ``days`` days and write all six tables to root.

    ``sampled_pct_by_day`` cycles over days for the firehose (ranked and fresh impressions, their
    scores, requests, served features; sampled per request); the exploration arm is never sampled.
    Returns the ground truth. Deterministic in ``seed``.
    """
    _check_generate_args(n_items, n_candidates, explore_rate, fresh_rate)
    rng = np.random.default_rng(seed)  # drawn from stage by stage: the order is the determinism
    w = _build_world(
        rng,
        start=start,
        days=days,
        slots=slots,
        pos_alpha=pos_alpha,
        n_users=n_users,
        n_topics=n_topics,
        n_creators=n_creators,
        n_items=n_items,
        n_candidates=n_candidates,
        key=key,
    )
    rq = _draw_requests(rng, w, models, n_requests=n_requests, n_candidates=n_candidates)
    sl = _serve_slots(
        rng,
        w,
        rq,
        explore_rate=explore_rate,
        fresh_rate=fresh_rate,
        fresh_hours=fresh_hours,
        late_share=late_share,
    )
    sm = _sample_firehose(rng, w, rq, sl, sampled_pct_by_day=sampled_pct_by_day, days=days)
    counts = _write_tables(
        rng,
        root,
        w,
        rq,
        sl,
        sm,
        models,
        window_hours=window_hours,
        seed=seed,
        served_features=served_features,
    )
    return _sim_truth(
        root,
        w,
        rq,
        sl,
        counts,
        models,
        explore_rate=explore_rate,
        fresh_rate=fresh_rate,
        window_hours=window_hours,
        late_share=late_share,
    )


@dataclass(frozen=True)
class BanditLog:
    """One simulated logged-bandit dataset for OPE, with the target policy's true value."""

    r: np.ndarray
    p: np.ndarray
    pi: np.ndarray
    q_logged: np.ndarray
    q_target: np.ndarray
    true_value: float


class BanditWorld:
    """A finite contextual bandit with known mean rewards, for validating OPE estimators.

    Contexts are uniform over ``n_contexts``; the logging policy is softmax(mu / temp_log) mixed
    with ``floor`` uniform (propensities bounded below), the target is a sharper softmax. q-hat is
    mu plus fixed noise of scale ``q_noise`` (0 = perfect model). The true target value is exact.
    """

    def __init__(
        self,
        n_contexts: int = 50,
        n_actions: int = 10,
        seed: int = 0,
        temp_log: float = 0.5,
        temp_target: float = 0.15,
        floor: float = 0.2,
        q_noise: float = 0.03,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.mu = _sigmoid(rng.normal(-1.0, 1.0, (n_contexts, n_actions)))
        self.q = np.clip(self.mu + rng.normal(0, q_noise, self.mu.shape), 0, 1)

        def softmax(z: np.ndarray) -> np.ndarray:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)

        self.log_policy = (1 - floor) * softmax(self.mu / temp_log) + floor / n_actions
        self.target_policy = softmax(self.q / temp_target)
        self.true_value = float((self.target_policy * self.mu).sum(axis=1).mean())

    def sample(self, n: int, seed: int) -> BanditLog:
        rng = np.random.default_rng(seed)
        nc, na = self.mu.shape
        x = rng.integers(0, nc, n)
        cdf = np.cumsum(self.log_policy[x], axis=1)
        a = np.minimum((rng.random(n)[:, None] > cdf).sum(axis=1), na - 1)
        r = (rng.random(n) < self.mu[x, a]).astype(np.float64)
        return BanditLog(
            r=r,
            p=self.log_policy[x, a],
            pi=self.target_policy[x, a],
            q_logged=self.q[x, a],
            q_target=(self.target_policy[x] * self.q[x]).sum(axis=1),
            true_value=self.true_value,
        )
