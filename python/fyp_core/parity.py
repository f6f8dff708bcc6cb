"""Online/offline feature parity: does the model see at serving time what it was trained on?

Compares the feature values of a training set (offline, usually backfilled) with the values logged
at serving time (the `served_features` table, DESIGN §4) feature by feature: PSI, two-sample KS,
mean shift, variance ratio, Jensen-Shannon distance for categoricals, and the non-finite share,
then gives each feature a verdict against `ParityThresholds`. Pure numpy, one pass per feature.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "FeatureParity",
    "ParityReport",
    "ParityThresholds",
    "js_distance",
    "ks_statistic",
    "parity_report",
    "psi",
    "quantile_edges",
    "served_features_matrix",
]

#: Floor for an empty bin's share in PSI (ln(0) is undefined); the usual 1e-4 of the literature.
PSI_EPS = 1e-4

Sample = Union[Any, Mapping[str, Any], Tuple[np.ndarray, Sequence[str]]]
VERDICTS = ("skew", "warn", "insufficient", "ok")  # worst first


@dataclass(frozen=True)
class ParityThresholds:
    """When a feature's difference between training and serving is a warning or a skew.

    The thresholds are effect sizes, meaningful at any sample size. So that small samples do not
    trip them by chance, a statistic only counts when it also exceeds its null-hypothesis critical
    value at level `alpha` (the noise floor: KS ``c(alpha) sqrt(1/n + 1/m)``, PSI and JS from the
    chi-square approximation, mean shift ``z sqrt(1/n + 1/m)``). Set ``alpha=1`` to turn that off.
    """

    psi_warn: float = 0.1  # PSI 0.1-0.25 is the classic "moderate shift" band
    psi_skew: float = 0.25  # PSI > 0.25: "major shift"
    ks_skew: float = 0.1  # largest CDF gap
    mean_shift_skew: float = 0.25  # |mean_served - mean_train| in training standard deviations
    var_ratio_low: float = 0.5  # var_served / var_train outside [low, high] is a skew
    var_ratio_high: float = 2.0
    js_warn: float = 0.05  # Jensen-Shannon distance (base 2, in [0, 1]) for categoricals
    js_skew: float = 0.1
    nonfinite_skew: float = 0.05  # |share of NaN/inf served - share in training|
    min_rows: int = 100  # fewer finite values on either side: verdict "insufficient"
    alpha: float = 0.001  # noise-floor level (see above); 1.0 disables the guard

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"ParityThresholds.{f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"ParityThresholds.{f.name} must be >= 0, got {v}")
        if self.psi_warn > self.psi_skew:
            raise ValueError(f"psi_warn ({self.psi_warn}) must be <= psi_skew ({self.psi_skew})")
        if self.js_warn > self.js_skew:
            raise ValueError(f"js_warn ({self.js_warn}) must be <= js_skew ({self.js_skew})")
        if not 0 < self.var_ratio_low <= 1 <= self.var_ratio_high:
            raise ValueError(
                "need 0 < var_ratio_low <= 1 <= var_ratio_high, got "
                f"[{self.var_ratio_low}, {self.var_ratio_high}]"
            )
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.min_rows < 1 or int(self.min_rows) != self.min_rows:
            raise ValueError(f"min_rows must be a positive integer, got {self.min_rows}")


@dataclass(frozen=True)
class FeatureParity:
    """Parity statistics and verdict of one feature (NaN where a statistic does not apply)."""

    name: str
    kind: str  # "numeric" | "categorical"
    verdict: str  # "ok" | "warn" | "skew" | "insufficient"
    reasons: Tuple[str, ...]
    n_train: int  # finite values used
    n_served: int
    nonfinite_train: float  # share of NaN/inf/null values on each side (excluded from the stats)
    nonfinite_served: float
    psi: float
    ks: float = math.nan
    mean_shift: float = math.nan  # (mean_served - mean_train) / std_train
    var_ratio: float = math.nan  # var_served / var_train
    js: float = math.nan  # Jensen-Shannon distance, base 2 (categoricals)
    n_bins: int = 0  # PSI bins actually used (after deduplicating quantile edges) or categories

    @property
    def severity(self) -> Tuple[int, float]:
        """Sort key, worst first: verdict rank, then the largest of PSI/KS/JS."""
        scores = [s for s in (self.psi, self.ks, self.js) if not math.isnan(s)]
        return VERDICTS.index(self.verdict), -max(scores, default=0.0)


@dataclass(frozen=True)
class ParityReport:
    """Per-feature parity of a training set against served features."""

    features: List[FeatureParity]
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    bins: int = 10

    @property
    def flagged(self) -> List[str]:
        """Names of the features whose verdict is "skew"."""
        return [f.name for f in self.features if f.verdict == "skew"]

    def __getitem__(self, name: str) -> FeatureParity:
        for f in self.features:
            if f.name == name:
                return f
        have = [f.name for f in self.features]
        raise KeyError(f"no feature {name!r} in this report; it has {have}")

    def to_table(self) -> Any:
        """A pyarrow Table, one row per feature, in input order; `reasons` joined with "; "."""
        import pyarrow as pa

        cols: Dict[str, List[Any]] = {f.name: [] for f in fields(FeatureParity)}
        for fp in self.features:
            for k, v in asdict(fp).items():
                cols[k].append("; ".join(v) if k == "reasons" else v)
        types = {
            "name": pa.string(),
            "kind": pa.string(),
            "verdict": pa.string(),
            "reasons": pa.string(),
            "n_train": pa.int64(),
            "n_served": pa.int64(),
            "n_bins": pa.int32(),
        }
        return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in cols.items()})

    def to_markdown(self) -> str:
        """A readable table, worst feature first."""
        head = (
            "| feature | verdict | n train / served | non-finite t / s | PSI | KS | mean shift "
            "| var ratio | JS | reasons |"
        )
        lines = [head, "|" + "---|" * 10]
        for f in sorted(self.features, key=lambda f: f.severity):
            lines.append(
                f"| {f.name.replace('|', '/')}{' (cat)' if f.kind == 'categorical' else ''} "
                f"| **{f.verdict}** "
                f"| {f.n_train} / {f.n_served} | {_pct(f.nonfinite_train)} / "
                f"{_pct(f.nonfinite_served)} | {_num(f.psi)} | {_num(f.ks)} | "
                f"{_num(f.mean_shift)} | {_num(f.var_ratio)} | {_num(f.js)} "
                f"| {'; '.join(f.reasons).replace('|', '/')} |"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        counts = {v: sum(f.verdict == v for f in self.features) for v in VERDICTS}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        return f"feature parity: {len(self.features)} features ({summary})\n{self.to_markdown()}"


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.2g}%"


# ----------------------------------------------------------------------------- statistics


def ks_statistic(a: Any, b: Any) -> float:
    """Two-sample Kolmogorov-Smirnov statistic sup |F_a - F_b| (scipy's `ks_2samp(a, b).statistic`).

    Both samples must be finite and non-empty. The supremum is attained at a sample point; with
    ties the CDFs are compared only after the last copy of each value.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.size == 0 or y.size == 0:
        raise ValueError(f"ks_statistic needs two non-empty samples, got {x.size} and {y.size}")
    return _ks_sorted(np.sort(x), np.sort(y))


def _ks_sorted(x: np.ndarray, y: np.ndarray) -> float:
    n1, n2 = x.size, y.size
    v = np.concatenate([x, y])
    order = np.argsort(v, kind="stable")  # two sorted runs: timsort merges them in linear time
    # n1 * n2 * (F_x - F_y) after the i-th merged value, in exact integers: with c = values of x
    # among the first i + 1, that is c * n2 - (i + 1 - c) * n1 = c * (n1 + n2) - (i + 1) * n1
    d: np.ndarray = np.cumsum(order < n1, dtype=np.int64)
    d *= n1 + n2
    d -= np.arange(n1, n1 * (v.size + 1), n1)
    vs = v.take(order)
    last = vs[1:] != vs[:-1]  # with ties, compare only after the last copy of a value
    if last.all():
        hi, lo = int(d.max()), int(d.min())
    else:
        ends = d[:-1][last]
        hi = max(int(ends.max(initial=0)), int(d[-1]))
        lo = min(int(ends.min(initial=0)), int(d[-1]))
    return float(max(hi, -lo, 0) / (n1 * n2))


def _psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.maximum(expected, PSI_EPS)
    a = np.maximum(actual, PSI_EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(sorted_train: np.ndarray, bins: int) -> np.ndarray:
    """Interior PSI bin edges: the training quantiles 1/bins, ..., (bins-1)/bins, deduplicated.

    The bins are (-inf, e_1], (e_1, e_2], ..., (e_k, +inf): open-ended, so served values outside
    the training range still land in a bin.
    """
    # numpy's "linear" quantile read straight off the sorted sample (np.quantile would partition
    # and copy it again): virtual index q (n - 1), and numpy's own lerp, so edges match exactly
    pos = (np.arange(1, bins) / bins) * (sorted_train.size - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, sorted_train.size - 1)
    frac = pos - lo
    a, b = sorted_train[lo], sorted_train[hi]
    diff = b - a
    edges = np.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)
    return np.unique(edges)


def _bin_shares(sorted_x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    cum = np.searchsorted(sorted_x, edges, side="right")  # values <= each edge
    counts = np.diff(np.concatenate([[0], cum, [sorted_x.size]]))
    return counts / sorted_x.size


def psi(expected: Any, actual: Any, bins: int = 10) -> float:
    """Population stability index of `actual` (served) against `expected` (training).

    ``sum_i (a_i - e_i) ln(a_i / e_i)`` over the quantile bins of `expected` (see
    `quantile_edges`); an empty bin's share is floored at `PSI_EPS` = 1e-4.
    """
    e = np.sort(np.asarray(expected, dtype=np.float64).ravel())
    a = np.sort(np.asarray(actual, dtype=np.float64).ravel())
    if e.size == 0 or a.size == 0:
        raise ValueError(f"psi needs two non-empty samples, got {e.size} and {a.size}")
    edges = quantile_edges(e, _check_bins(bins))
    return _psi_from_shares(_bin_shares(e, edges), _bin_shares(a, edges))


def js_distance(p: Any, q: Any) -> float:
    """Jensen-Shannon distance, base 2, of two count or probability vectors (each normalised).

    Equals `scipy.spatial.distance.jensenshannon(p, q, base=2)`: sqrt of the JS divergence, in
    [0, 1].
    """
    p_ = np.asarray(p, dtype=np.float64).ravel()
    q_ = np.asarray(q, dtype=np.float64).ravel()
    if p_.shape != q_.shape or p_.size == 0:
        raise ValueError(f"p and q must be non-empty and the same length, got {p_.size}, {q_.size}")
    if (p_ < 0).any() or (q_ < 0).any() or p_.sum() <= 0 or q_.sum() <= 0:
        raise ValueError("p and q must be non-negative with a positive sum")
    p_ = p_ / p_.sum()
    q_ = q_ / q_.sum()
    m = (p_ + q_) / 2
    div = _kl_terms(p_, m) + _kl_terms(q_, m)
    return float(np.sqrt(max(div / np.log(2.0), 0.0) / 2))


def _kl_terms(p: np.ndarray, m: np.ndarray) -> float:
    nz = p > 0  # m >= p/2 > 0 wherever p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / m[nz])))


# ----------------------------------------------------------------------------- inputs


def served_features_matrix(table: Any) -> Tuple[np.ndarray, List[str]]:
    """(matrix, names) from a `served_features` table: its `features` list<float32> column and the
    `fyp.feature_names` schema metadata the event log writes."""
    import pyarrow as pa

    if not isinstance(table, pa.Table) or "features" not in table.column_names:
        raise TypeError("expected a pyarrow Table with a `features` list column (served_features)")
    meta = table.schema.metadata or {}
    raw = meta.get(b"fyp.feature_names")
    if raw is None:
        raise ValueError(
            "the table has no `fyp.feature_names` metadata; pass (matrix, names) "
            "to parity_report yourself"
        )
    names = json.loads(raw)
    col = table.column("features").combine_chunks()
    if isinstance(col, pa.ChunkedArray):  # an empty table has no chunk to combine
        col = pa.array([], pa.list_(pa.float32()))
    flat = col.flatten().to_numpy(zero_copy_only=False)
    lengths = np.diff(col.offsets.to_numpy()) if len(col) else np.zeros(0, np.int64)
    if len(col) and (lengths != len(names)).any():
        bad = int(np.flatnonzero(lengths != len(names))[0])
        raise ValueError(
            f"row {bad} of `features` has {lengths[bad]} values, metadata names "
            f"{len(names)} features"
        )
    return flat.reshape(len(col), len(names)), list(names)


def _columns(data: Sample, side: str) -> Dict[str, Any]:
    """name -> raw column (not yet converted) for any of the accepted input forms."""
    if isinstance(data, tuple):
        if len(data) != 2:
            raise TypeError(f"{side}: a tuple must be (matrix, names), got {len(data)} items")
        mat, names = data
        mat = np.asarray(mat)
        names = list(names) if not isinstance(names, str) else [names]
        if mat.ndim != 2:
            raise ValueError(f"{side}: matrix must be 2-D (rows, features), got shape {mat.shape}")
        if mat.shape[1] != len(names):
            raise ValueError(
                f"{side}: matrix has {mat.shape[1]} columns but {len(names)} names "
                "were given; pass one name per column"
            )
        _no_duplicates(names, side)
        return {str(n): mat[:, j] for j, n in enumerate(names)}
    if isinstance(data, Mapping):
        return {str(k): v for k, v in data.items()}
    if hasattr(data, "column_names") and hasattr(data, "column"):  # pyarrow.Table
        _no_duplicates(data.column_names, side)
        return {n: data.column(n) for n in data.column_names}
    raise TypeError(
        f"{side} must be a pyarrow.Table, a dict name -> 1-D array, or a tuple "
        f"(matrix, names); got {type(data).__name__}"
    )


def _no_duplicates(names: Sequence[str], side: str) -> None:
    seen = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dup:
        raise ValueError(f"{side}: duplicate feature names {dup}; names must be unique")


def _raw_array(col: Any, name: str, side: str) -> np.ndarray:
    if hasattr(col, "to_numpy") and not isinstance(col, np.ndarray):  # pyarrow (Chunked)Array
        col = col.to_numpy(zero_copy_only=False)
    arr = np.asarray(col)
    if arr.ndim != 1:
        raise ValueError(f"{side} feature {name!r} must be 1-D, got shape {arr.shape}")
    return arr


def _numeric(col: Any, name: str, side: str) -> Tuple[np.ndarray, int]:
    """(finite values as float64, count of all values)."""
    arr = _raw_array(col, name, side)
    if arr.dtype.kind not in "biuf":
        if arr.dtype.kind == "O":  # e.g. pyarrow ints with nulls, or Python floats and None
            try:
                conv = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
                if conv.ndim == 1:  # not a column of lists (served_features' `features`)
                    arr = conv
            except (TypeError, ValueError):
                pass
        if arr.dtype.kind not in "biuf":
            hint = (
                "; for a served_features table pass served_features_matrix(table)"
                if arr.size and isinstance(arr[0], (list, np.ndarray))
                else ""
            )
            raise TypeError(
                f"{side} feature {name!r} is not numeric (dtype {arr.dtype}); list "
                f"it in categorical=... or convert it to numbers{hint}"
            )
    x = np.array(arr, dtype=np.float64)  # always our own copy: _numeric_stats sorts it in place
    finite = np.isfinite(x)
    return (x if finite.all() else x[finite]), x.size


def _categorical(col: Any, name: str, side: str) -> Tuple[np.ndarray, int]:
    """(non-missing values as int64 or str, count of all values); missing = None/NaN/inf."""
    arr = _raw_array(col, name, side)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64, copy=False), arr.size
    if arr.dtype.kind == "f":
        x = arr[np.isfinite(arr)]
        if (x != np.round(x)).any():
            raise TypeError(
                f"{side} categorical feature {name!r} has non-integer float codes; "
                "categories must be integer codes or strings"
            )
        return x.astype(np.int64), arr.size
    if arr.dtype.kind in "US":
        return arr.astype(str), arr.size
    if arr.dtype.kind == "O":
        keep = np.array(
            [v is not None and not (isinstance(v, float) and not math.isfinite(v)) for v in arr],
            dtype=bool,
        )
        vals = arr[keep]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
            return vals.astype(np.int64), arr.size
        return vals.astype(str), arr.size
    raise TypeError(
        f"{side} categorical feature {name!r} has dtype {arr.dtype}; categories must "
        "be integer codes or strings"
    )


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    return int(bins)


# ----------------------------------------------------------------------------- report


def parity_report(
    training: Sample,
    served: Sample,
    *,
    categorical: Sequence[str] = (),
    features: Optional[Sequence[str]] = None,
    thresholds: Optional[ParityThresholds] = None,
    bins: int = 10,
) -> ParityReport:
    """Compare each feature's training sample with its served sample.

    `training`, `served`: a pyarrow Table (one column per feature), a dict name -> 1-D array, or a
    tuple (matrix (n, f), names) -- the form of logged served features (`served_features_matrix`).
    `features`: the names to compare (default: those present on both sides, in training order).
    `categorical`: names whose values are category codes (ints or strings).
    """
    th = thresholds if thresholds is not None else ParityThresholds()
    if not isinstance(th, ParityThresholds):
        raise TypeError(f"thresholds must be a ParityThresholds, got {type(th).__name__}")
    bins = _check_bins(bins)
    if isinstance(categorical, str):
        categorical = [categorical]
    cat = set(categorical)
    tcols = _columns(training, "training")
    scols = _columns(served, "served")
    if features is None:
        names = [n for n in tcols if n in scols]
        if not names:
            raise ValueError(
                "training and served have no feature name in common; training has "
                f"{list(tcols)[:10]}, served has {list(scols)[:10]}"
            )
    else:
        names = [features] if isinstance(features, str) else [str(n) for n in features]
        _no_duplicates(names, "features")
        missing = []
        for n in names:
            sides = [
                side for side, cols in (("training", tcols), ("served", scols)) if n not in cols
            ]
            if sides:
                missing.append(f"{n!r} (missing from {' and '.join(sides)})")
        if missing:
            raise ValueError(f"unknown features: {', '.join(missing)}")
        if not names:
            raise ValueError("features is empty; pass at least one name or None for all")
    unknown_cat = sorted(cat - set(names))
    if unknown_cat and features is None:
        raise ValueError(f"categorical names {unknown_cat} are not features present on both sides")
    results = [_compare(n, tcols[n], scols[n], n in cat, th, bins) for n in names]
    return ParityReport(results, th, bins)


def _compare(
    name: str, tcol: Any, scol: Any, is_cat: bool, th: ParityThresholds, bins: int
) -> FeatureParity:
    conv = _categorical if is_cat else _numeric
    t, t_all = conv(tcol, name, "training")
    s, s_all = conv(scol, name, "served")
    if t_all == 0 or s_all == 0:
        side = "training" if t_all == 0 else "served"
        raise ValueError(f"feature {name!r} has an empty {side} sample; pass at least one row")
    if is_cat and t.size and s.size and t.dtype.kind != s.dtype.kind:
        raise TypeError(
            f"categorical feature {name!r} has {_kind(t)} in training and {_kind(s)} "
            "when served; encode both sides the same way"
        )
    nt, ns = t.size, s.size
    nf_t, nf_s = (t_all - nt) / t_all, (s_all - ns) / s_all
    base: Dict[str, Any] = dict(
        name=name,
        kind="categorical" if is_cat else "numeric",
        n_train=nt,
        n_served=ns,
        nonfinite_train=nf_t,
        nonfinite_served=nf_s,
    )
    reasons: List[str] = []
    if nt == 0 or ns == 0:
        if nt == 0 and ns == 0:
            return FeatureParity(
                verdict="insufficient",
                psi=math.nan,
                reasons=("no finite value on either side",),
                **base,
            )
        side, total = ("training", t_all) if nt == 0 else ("served", s_all)
        return FeatureParity(
            verdict="skew",
            psi=math.nan,
            reasons=(f"all {total} {side} values are NaN/inf/null",),
            **base,
        )
    with np.errstate(over="ignore", invalid="ignore"):  # values near 1e308 give inf/NaN stats
        stats = _categorical_stats(t, s) if is_cat else _numeric_stats(t, s, bins)
        skew, warn = _judge(stats, nt, ns, th)
    stats.pop("_log_var_se", None)
    if abs(nf_s - nf_t) >= th.nonfinite_skew:
        skew.append(f"non-finite share {nf_t:.1%} -> {nf_s:.1%}")
    if min(nt, ns) < th.min_rows:
        reasons = [f"{min(nt, ns)} finite values < min_rows={th.min_rows}"]
        verdict = "insufficient"
    else:
        reasons = skew + warn
        verdict = "skew" if skew else "warn" if warn else "ok"
    return FeatureParity(verdict=verdict, reasons=tuple(reasons), **base, **stats)


def _kind(a: np.ndarray) -> str:
    return "integer codes" if a.dtype.kind in "iu" else "strings"


def _numeric_stats(t: np.ndarray, s: np.ndarray, bins: int) -> Dict[str, Any]:
    t.sort()  # our own copies (_numeric)
    s.sort()
    ts, ss = t, s
    edges = quantile_edges(ts, bins)
    psi_ = _psi_from_shares(_bin_shares(ts, edges), _bin_shares(ss, edges))
    mt, ms = float(ts.mean()), float(ss.mean())
    vt, vs = _var(ts, mt), _var(ss, ms)
    if math.isnan(vt) or math.isnan(vs):
        shift = ratio = math.nan
    elif vt > 0:
        shift, ratio = (ms - mt) / math.sqrt(vt), vs / vt
    else:  # a constant training feature: any movement at all is infinitely many stds
        shift = 0.0 if ms == mt else math.copysign(math.inf, ms - mt)
        ratio = 1.0 if vs == 0 else math.inf

    def log_var_se() -> float:
        # sd of ln(var_served / var_train) under H0 by the delta method, Var(s^2)/sigma^4 ~
        # (kurtosis - 1)/n; only computed when the ratio is out of bounds (two more passes)
        kt, ks_ = _kurtosis(ts, mt), _kurtosis(ss, ms)
        return math.sqrt(max(kt - 1, 0) / ts.size + max(ks_ - 1, 0) / ss.size)

    return dict(
        psi=psi_,
        ks=_ks_sorted(ts, ss),
        mean_shift=shift,
        var_ratio=ratio,
        n_bins=edges.size + 1,
        _log_var_se=log_var_se,
    )


def _var(x: np.ndarray, mean: float) -> float:
    """Sample variance (ddof=1), NaN below two values."""
    if x.size < 2:
        return math.nan
    d = x - mean
    return float(np.dot(d, d)) / (x.size - 1)


def _kurtosis(x: np.ndarray, mean: float) -> float:
    """m4 / m2^2 (3 for a normal); 1 where undefined (fewer than two distinct values)."""
    d = x - mean
    sd = math.sqrt(float(np.dot(d, d)) / x.size)
    if not 0 < sd < math.inf:
        return 1.0
    return float(np.mean(np.square(np.square(d / sd))))


def _categorical_stats(t: np.ndarray, s: np.ndarray) -> Dict[str, Any]:
    cats, inv = np.unique(np.concatenate([t, s]), return_inverse=True)
    ct = np.bincount(inv[: t.size], minlength=cats.size)
    cs = np.bincount(inv[t.size :], minlength=cats.size)
    p, q = ct / t.size, cs / s.size
    return dict(psi=_psi_from_shares(p, q), js=js_distance(p, q), n_bins=int(cats.size))


def _judge(st: Dict[str, Any], n: int, m: int, th: ParityThresholds) -> Tuple[List[str], List[str]]:
    """(skew reasons, warn reasons): each statistic against max(threshold, its noise floor)."""
    skew: List[str] = []
    warn: List[str] = []
    inv_nm = 1 / n + 1 / m
    z1 = NormalDist().inv_cdf(1 - th.alpha / 2) if th.alpha < 1 else 0.0
    chi = _chi2_quantile(st["n_bins"] - 1, th.alpha) * inv_nm  # ~ PSI and 8 ln2 JS^2 under H0
    psi_floor = chi
    for lvl, thr, out in (("skew", th.psi_skew, skew), ("warn", th.psi_warn, warn)):
        if st["psi"] >= max(thr, psi_floor):
            out.append(f"psi={st['psi']:.3g} >= {lvl} {thr:g}")
            break
    if "js" in st:
        js_floor = math.sqrt(chi / (8 * math.log(2)))
        for lvl, thr, out in (("skew", th.js_skew, skew), ("warn", th.js_warn, warn)):
            if st["js"] >= max(thr, js_floor):
                out.append(f"js={st['js']:.3g} >= {lvl} {thr:g}")
                break
        return skew, warn
    ks_floor = math.sqrt(-0.5 * math.log(th.alpha / 2) * inv_nm) if th.alpha < 1 else 0.0
    if st["ks"] >= max(th.ks_skew, ks_floor):
        skew.append(f"ks={st['ks']:.3g} >= {th.ks_skew:g}")
    shift = st["mean_shift"]
    if not math.isnan(shift) and abs(shift) >= max(th.mean_shift_skew, z1 * math.sqrt(inv_nm)):
        skew.append(f"mean shift={shift:+.3g} std, beyond ±{th.mean_shift_skew:g}")
    ratio = st["var_ratio"]
    # a heavy-tailed feature's variance is too noisy to compare: its floor is its sampling sd
    if (
        not math.isnan(ratio)
        and not th.var_ratio_low <= ratio <= th.var_ratio_high
        and not abs(math.log(ratio) if ratio > 0 else math.inf) < z1 * st["_log_var_se"]()
    ):
        skew.append(f"var ratio={ratio:.3g} outside [{th.var_ratio_low:g}, {th.var_ratio_high:g}]")
    return skew, warn


def _chi2_quantile(dof: int, alpha: float) -> float:
    """Upper-alpha quantile of chi-square(dof), Wilson-Hilferty (within ~1% for dof >= 3)."""
    if dof <= 0 or alpha >= 1:
        return 0.0
    z = NormalDist().inv_cdf(1 - alpha)
    c = 2 / (9 * dof)
    return dof * max(1 - c + z * math.sqrt(c), 0.0) ** 3
