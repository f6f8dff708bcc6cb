"""Feature parity report (fyp_core.parity): statistics against scipy and textbook formulas,
verdicts on identical and skewed samples (the snapshot-vs-stream watch count of issue #8), input
forms and the messages for bad input."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp

import fyp_core
from fyp_core import ParityReport, ParityThresholds, parity_report
from fyp_core.parity import (
    PSI_EPS,
    js_distance,
    ks_statistic,
    psi,
    quantile_edges,
    served_features_matrix,
)

# ----------------------------------------------------------------------------- statistics

_values = st.one_of(
    st.integers(-3, 3).map(float),  # many ties, within and across the samples
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
_sample = hnp.arrays(np.float64, st.integers(1, 60), elements=_values)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's p-value at n = 1
@settings(max_examples=300, deadline=None)
@given(_sample, _sample)
def test_ks_equals_scipy_ks_2samp(a: np.ndarray, b: np.ndarray) -> None:
    want = ks_2samp(a, b, method="asymp").statistic  # the p-value method only
    assert ks_statistic(a, b) == pytest.approx(want, abs=1e-12)
    got = parity_report({"x": a}, {"x": b}, thresholds=ParityThresholds(min_rows=1))["x"].ks
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n1,n2", [(1000, 1000), (5000, 777), (3, 20000)])
def test_ks_equals_scipy_on_large_samples_with_ties(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 + n2)
    for a, b in [
        (rng.normal(size=n1), rng.normal(0.1, 1.2, size=n2)),
        (rng.poisson(4, n1).astype(float), rng.poisson(4.5, n2).astype(float)),
        (np.round(rng.normal(size=n1), 1), np.round(rng.normal(size=n2), 1)),
    ]:
        assert ks_statistic(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


_counts = st.lists(st.integers(0, 50), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(_counts, _counts)
def test_js_equals_scipy_jensenshannon_base2(p: list, q: list) -> None:
    k = max(len(p), len(q))
    p_ = np.array(p + [0] * (k - len(p)), float)
    q_ = np.array(q + [0] * (k - len(q)), float)
    if p_.sum() == 0 or q_.sum() == 0:
        with pytest.raises(ValueError, match="positive sum"):
            js_distance(p_, q_)
        return
    want = jensenshannon(p_, q_, base=2)
    assert js_distance(p_, q_) == pytest.approx(want, abs=1e-9)
    # the same through the report: categories as codes, counts as repetitions
    t = np.repeat(np.arange(k), p_.astype(int))
    s = np.repeat(np.arange(k), q_.astype(int))
    fp = parity_report(
        {"c": t}, {"c": s}, categorical=["c"], thresholds=ParityThresholds(min_rows=1)
    )["c"]
    assert fp.js == pytest.approx(want, abs=1e-9)
    assert fp.kind == "categorical"


def test_js_of_string_categories_over_the_union() -> None:
    t = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    s = np.array(["a"] * 40 + ["b"] * 40 + ["d"] * 20)  # "c" vanished, "d" is new
    fp = parity_report({"c": t}, {"c": s}, categorical="c")["c"]
    # union in sorted order: a, b, c, d
    assert fp.js == pytest.approx(jensenshannon([50, 30, 20, 0], [40, 40, 0, 20], base=2))
    assert fp.n_bins == 4
    want_psi = sum(
        (a - e) * math.log(a / e)
        for e, a in [(0.5, 0.4), (0.3, 0.4), (0.2, PSI_EPS), (PSI_EPS, 0.2)]
    )
    assert fp.psi == pytest.approx(want_psi)
    assert fp.verdict == "skew"


def test_psi_against_a_textbook_computation() -> None:
    train = np.arange(1.0, 11.0)  # 1..10: quintile edges 2.8, 4.6, 6.4, 8.2 (linear quantiles)
    served = np.array([0, 1, 2, 2, 3, 4, 9, 10, 50, 100], float)
    edges = [2.8, 4.6, 6.4, 8.2]

    def shares(xs: np.ndarray) -> list:
        counts = [0] * 5
        for x in xs:  # bins (-inf, 2.8], (2.8, 4.6], ..., (8.2, inf)
            counts[sum(x > e for e in edges)] += 1
        return [c / len(xs) for c in counts]

    e, a = shares(train), shares(served)
    assert e == [0.2] * 5 and a == [0.4, 0.2, 0.0, 0.0, 0.4]
    want = sum((max(ai, 1e-4) - ei) * math.log(max(ai, 1e-4) / ei) for ei, ai in zip(e, a))
    assert want == pytest.approx(0.4 * math.log(2) + 2 * (1e-4 - 0.2) * math.log(1e-4 / 0.2))
    assert psi(train, served, bins=5) == pytest.approx(want, rel=1e-12)
    fp = parity_report(
        {"x": train}, {"x": served}, bins=5, thresholds=ParityThresholds(min_rows=1)
    )["x"]
    assert fp.psi == pytest.approx(want, rel=1e-12)
    assert fp.n_bins == 5


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 200), elements=_values), st.integers(2, 20))
def test_quantile_edges_equal_numpy_linear_quantiles(x: np.ndarray, bins: int) -> None:
    x.sort()
    want = np.unique(np.quantile(x, np.arange(1, bins) / bins))
    np.testing.assert_array_equal(quantile_edges(x, bins), want)


def test_psi_dedupes_quantile_edges_of_a_near_constant_feature() -> None:
    train = np.r_[np.zeros(950), np.arange(1.0, 51.0)]
    served = np.r_[np.zeros(900), np.arange(1.0, 101.0)]
    # deciles of train: 0 (x9, deduplicated to one edge) ... the last bin starts above 0
    fp = parity_report({"x": train}, {"x": served}, bins=10)["x"]
    assert fp.n_bins == 2
    want = (0.9 - 0.95) * math.log(0.9 / 0.95) + (0.1 - 0.05) * math.log(0.1 / 0.05)
    assert fp.psi == pytest.approx(want)


def test_mean_shift_and_variance_ratio() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(5, 2, 10_000)
    s = rng.normal(6, 3, 8_000)
    fp = parity_report({"x": t}, {"x": s})["x"]
    assert fp.mean_shift == pytest.approx((s.mean() - t.mean()) / t.std(ddof=1))
    assert fp.var_ratio == pytest.approx(s.var(ddof=1) / t.var(ddof=1))
    assert fp.verdict == "skew"
    assert any("mean shift" in r for r in fp.reasons)
    assert any("var ratio" in r for r in fp.reasons)


def test_constant_training_feature() -> None:
    same = parity_report({"x": np.ones(500)}, {"x": np.ones(400)})["x"]
    assert (same.mean_shift, same.var_ratio, same.ks, same.psi) == (0.0, 1.0, 0.0, 0.0)
    assert same.verdict == "ok"
    moved = parity_report({"x": np.ones(500)}, {"x": np.r_[np.ones(300), np.full(100, 2.0)]})["x"]
    assert moved.mean_shift == math.inf and moved.var_ratio == math.inf
    assert moved.verdict == "skew"


# ----------------------------------------------------------------------------- verdicts


def _other_features(rng: np.random.Generator, n: int) -> dict:
    """Ten features with the same distribution on both sides (drawn independently per side)."""
    near_constant = np.where(rng.random(n) < 0.01, rng.normal(1.0, 0.5, n), 1.0)
    with_nans = rng.gamma(2.0, 3.0, n)
    with_nans[rng.random(n) < 0.02] = np.nan
    return {
        "user_age_days": rng.exponential(300.0, n),
        "item_quality": rng.beta(2.0, 5.0, n),
        "topic_affinity": rng.normal(0.0, 1.0, n),
        "creator_followers": rng.lognormal(6.0, 1.5, n),
        "item_age_hours": rng.uniform(0.0, 72.0, n),
        "session_position": rng.integers(0, 20, n).astype(float),
        "likes_last_hour": rng.poisson(3.0, n).astype(float),
        "is_follower": (rng.random(n) < 0.1).astype(float),
        "bias": near_constant,
        "dwell_ms_p50": with_nans,
        "topic": rng.choice(
            np.array(["news", "music", "pets", "sport", "food", "diy"]),
            n,
            p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05],
        ),
    }


def _watch_day(rng: np.random.Generator, n_req: int, n_items: int = 3000) -> tuple:
    """One day of watch events on freshly uploaded items, and `item_watch_count` per request.

    Served: the count of the item's events up to the request instant (the event stream). Training:
    the count as of the last hourly snapshot before the request (the backfill). Requests follow
    engagement: they are a random sample of the day's watch events.
    """
    upload = rng.uniform(0.0, 23.0, n_items)  # hours since midnight
    n_events = rng.poisson(rng.lognormal(3.0, 1.0, n_items))
    item = np.repeat(np.arange(n_items), n_events)
    t = upload[item] + rng.exponential(2.0, item.size)  # attention decays over a few hours
    keep = t < 24.0
    key = np.sort(item[keep] * 100.0 + t[keep])  # sorted by (item, time): hours < 100
    req = key[rng.choice(key.size, n_req, replace=False)]
    req_item = np.floor(req / 100.0)
    req_t = req - req_item * 100.0
    first = np.searchsorted(key, req_item * 100.0, side="left")
    served = np.searchsorted(key, req_item * 100.0 + req_t, side="right") - first
    snapshot = np.searchsorted(key, req_item * 100.0 + np.floor(req_t), side="right") - first
    assert (snapshot <= served).all() and (served >= 1).all()
    return snapshot.astype(float), served.astype(float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_distributions_are_all_ok(seed: int) -> None:
    rng = np.random.default_rng(seed)
    train, served = _other_features(rng, 20_000), _other_features(rng, 15_000)
    report = parity_report(train, served, categorical=["topic"])
    assert {f.name: f.verdict for f in report.features} == dict.fromkeys(train, "ok")
    assert report.flagged == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_snapshot_backfill_skew_of_watch_count_is_the_only_flag(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 20_000
    snapshot, stream = _watch_day(rng, n)
    train = {"item_watch_count": snapshot, **_other_features(rng, n)}
    served = {"item_watch_count": stream, **_other_features(rng, n)}
    report = parity_report(train, served, categorical=["topic"])
    assert report.flagged == ["item_watch_count"], str(report)
    fp = report["item_watch_count"]
    assert fp.mean_shift > 0  # the backfill lags: training counts are too low
    assert fp.ks > 0.15 and fp.psi > 0.25
    assert report.to_markdown().splitlines()[2].startswith("| item_watch_count |")


def test_too_few_rows_is_insufficient() -> None:
    rng = np.random.default_rng(3)
    t, s = rng.normal(size=1000), rng.normal(3.0, 1.0, 60)
    fp = parity_report({"x": t}, {"x": s})["x"]
    assert fp.verdict == "insufficient"
    assert fp.reasons == ("60 finite values < min_rows=100",)
    assert fp.ks > 0.5  # still computed and reported
    fp = parity_report({"x": t}, {"x": s}, thresholds=ParityThresholds(min_rows=50))["x"]
    assert fp.verdict == "skew"


def test_noise_floor_keeps_small_identical_samples_ok() -> None:
    rng = np.random.default_rng(4)
    oks = 0
    for _ in range(20):
        a, b = rng.normal(size=120), rng.normal(size=120)
        oks += parity_report({"x": a}, {"x": b})["x"].verdict == "ok"
        # without the guard, ks > 0.1 happens by chance at n = 120 most of the time
    assert oks >= 19
    unguarded = [
        parity_report(
            {"x": rng.normal(size=120)},
            {"x": rng.normal(size=120)},
            thresholds=ParityThresholds(alpha=1.0),
        )["x"].verdict
        for _ in range(20)
    ]
    assert unguarded.count("skew") >= 5


def test_psi_warn_band() -> None:
    rng = np.random.default_rng(5)
    t = rng.normal(size=50_000)
    s = rng.normal(0.0, 1.0, 50_000)
    s[:7500] = rng.uniform(2.0, 3.0, 7500)  # 15% of the mass moves to the upper tail
    loose = ParityThresholds(ks_skew=0.5, mean_shift_skew=5.0, var_ratio_high=5.0)
    fp = parity_report({"x": t}, {"x": s}, thresholds=loose)["x"]
    assert 0.1 <= fp.psi < 0.25
    assert fp.verdict == "warn" and fp.reasons[0].startswith("psi=")


# ----------------------------------------------------------------------------- non-finite values


def test_nonfinite_values_are_excluded_and_reported() -> None:
    rng = np.random.default_rng(6)
    t = rng.normal(size=2000)
    s = rng.normal(size=1000)
    t_bad, s_bad = t.copy(), s.copy()
    t_bad[:100] = np.nan
    s_bad[:10] = np.inf
    s_bad[10:20] = -np.inf
    fp = parity_report({"x": t_bad}, {"x": s_bad})["x"]
    assert (fp.n_train, fp.n_served) == (1900, 980)
    assert fp.nonfinite_train == pytest.approx(0.05)
    assert fp.nonfinite_served == pytest.approx(0.02)
    assert fp.ks == pytest.approx(ks_2samp(t[100:], s[20:]).statistic)
    assert fp.psi == pytest.approx(psi(t[100:], s[20:]))
    assert fp.verdict == "ok"


def test_nonfinite_share_difference_is_a_skew() -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(size=5000)
    s[:1000] = np.nan  # the serving path drops 20% of values
    fp = parity_report({"x": rng.normal(size=5000)}, {"x": s})["x"]
    assert fp.verdict == "skew"
    assert fp.reasons == ("non-finite share 0.0% -> 20.0%",)


def test_all_nan_on_one_side_is_flagged() -> None:
    rng = np.random.default_rng(8)
    report = parity_report(
        {"dead": rng.normal(size=500), "both": np.full(500, np.nan), "ok": rng.normal(size=500)},
        {"dead": np.full(300, np.nan), "both": np.full(300, np.nan), "ok": rng.normal(size=300)},
    )
    assert report.flagged == ["dead"]
    assert report["dead"].reasons == ("all 300 served values are NaN/inf/null",)
    assert math.isnan(report["dead"].ks) and report["dead"].nonfinite_served == 1.0
    assert report["both"].verdict == "insufficient"
    assert report["ok"].verdict == "ok"
    str(report)  # NaN statistics render
    report.to_table()


def test_nulls_in_arrow_columns_and_missing_categories() -> None:
    t = pa.table(
        {"x": pa.array([1, 2, None, 4] * 50, pa.int64()), "c": pa.array(["a", None, "b", "a"] * 50)}
    )
    s = pa.table(
        {"x": pa.array([1.0, 2.0, 3.0, 4.0] * 50), "c": pa.array(["a", "b", "b", "a"] * 50)}
    )
    report = parity_report(t, s, categorical=["c"], thresholds=ParityThresholds(nonfinite_skew=1))
    assert report["x"].nonfinite_train == pytest.approx(0.25) and report["x"].n_train == 150
    assert report["c"].nonfinite_train == pytest.approx(0.25) and report["c"].n_bins == 2
    assert report["c"].js == pytest.approx(jensenshannon([100, 50], [100, 100], base=2))
    dead = parity_report({"c": ["a", "b"] * 100}, {"c": [None] * 150}, categorical=["c"])["c"]
    assert dead.verdict == "skew" and dead.reasons == ("all 150 served values are NaN/inf/null",)


# ----------------------------------------------------------------------------- input forms


def test_table_dict_and_matrix_forms_agree() -> None:
    rng = np.random.default_rng(9)
    names = ["a", "b", "c"]
    mt = rng.normal(size=(3000, 3)).astype(np.float32)
    ms = (rng.normal(size=(2000, 3)) + [0, 0.5, 0]).astype(np.float32)
    as_tuple = parity_report((mt, names), (ms, names))
    as_dict = parity_report(
        {n: mt[:, j] for j, n in enumerate(names)}, {n: ms[:, j] for j, n in enumerate(names)}
    )
    as_table = parity_report(pa.table({n: mt[:, j] for j, n in enumerate(names)}), (ms, names))
    assert as_tuple.features == as_dict.features == as_table.features
    assert as_tuple.flagged == ["b"]


def test_served_features_table_round_trip() -> None:
    names = ["quality", "age_hours", "bias"]
    rng = np.random.default_rng(10)
    m = rng.normal(size=(500, 3)).astype(np.float32)
    feats = pa.ListArray.from_arrays(
        pa.array(np.arange(501, dtype=np.int32) * 3), pa.array(m.ravel())
    )
    table = pa.table({"request_id": pa.array([f"r{i}" for i in range(500)]), "features": feats})
    table = table.replace_schema_metadata({b"fyp.feature_names": b'["quality","age_hours","bias"]'})
    got, got_names = served_features_matrix(table)
    assert got_names == names and np.array_equal(got, m)
    report = parity_report({n: m[:, j] for j, n in enumerate(names)}, (got, got_names))
    assert [f.verdict for f in report.features] == ["ok"] * 3
    with pytest.raises(ValueError, match="fyp.feature_names"):
        served_features_matrix(table.replace_schema_metadata({}))
    with pytest.raises(TypeError, match=r"pass served_features_matrix\(table\)"):
        parity_report(table, table, features=["features"])


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(15)
    t = {"a": rng.normal(size=500), "b": rng.normal(size=500)}
    m = rng.normal(size=(400, 2))
    t_copy, m_copy = {k: v.copy() for k, v in t.items()}, m.copy()
    parity_report(t, (m, ["a", "b"]))
    assert all(np.array_equal(t[k], t_copy[k]) for k in t) and np.array_equal(m, m_copy)


def test_features_subset_and_order() -> None:
    rng = np.random.default_rng(11)
    t = {"a": rng.normal(size=200), "b": rng.normal(size=200), "only_train": np.zeros(200)}
    s = {"b": rng.normal(size=200), "a": rng.normal(size=200), "only_served": np.zeros(200)}
    assert [f.name for f in parity_report(t, s).features] == ["a", "b"]
    assert [f.name for f in parity_report(t, s, features=["b"]).features] == ["b"]


def test_report_outputs() -> None:
    rng = np.random.default_rng(12)
    t = {
        "fine": rng.normal(size=1000),
        "moved": rng.normal(size=1000),
        "cat": rng.integers(0, 4, 1000),
        "few": rng.normal(size=50),
    }
    s = {
        "fine": rng.normal(size=1000),
        "moved": rng.normal(1.0, 1.0, 1000),
        "cat": rng.integers(0, 4, 1000),
        "few": rng.normal(size=50),
    }
    report = parity_report(t, s, categorical=["cat"])
    assert isinstance(report, ParityReport)
    table = report.to_table()
    assert table.column_names[:4] == ["name", "kind", "verdict", "reasons"]
    assert table.num_rows == 4 and table.column("name").to_pylist() == list(t)
    assert table.column("verdict").to_pylist() == ["ok", "skew", "ok", "insufficient"]
    assert math.isnan(table.column("ks").to_pylist()[2])  # no KS for a categorical
    md = report.to_markdown().splitlines()
    assert len(md) == 2 + 4
    assert [row.split("|")[1].strip() for row in md[2:]] == [
        "moved",
        "few",
        "fine",
        "cat (cat)",
    ] or [row.split("|")[1].strip() for row in md[2:]] == ["moved", "few", "cat (cat)", "fine"]
    assert all(row.count("|") == md[0].count("|") for row in md)
    text = str(report)
    assert text.startswith("feature parity: 4 features (1 skew, 1 insufficient, 2 ok)")
    with pytest.raises(KeyError, match="no feature 'nope'"):
        report["nope"]


def test_exports() -> None:
    for name in ("parity_report", "ParityReport", "ParityThresholds"):
        assert name in fyp_core.__all__ and hasattr(fyp_core, name)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "train,served,kwargs,exc,match",
    [
        ({"x": []}, {"x": [1.0]}, {}, ValueError, "empty training sample"),
        ({"x": [1.0]}, {"x": np.array([])}, {}, ValueError, "empty served sample"),
        ((np.zeros((5, 3)), ["a", "b"]), {"a": [1.0]}, {}, ValueError, "3 columns but 2 names"),
        ((np.zeros(5), ["a"]), {"a": [1.0]}, {}, ValueError, "must be 2-D"),
        ((np.zeros((5, 2)), ["a", "a"]), {"a": [1.0]}, {}, ValueError, "duplicate feature names"),
        ((np.zeros((5, 2)),), {"a": [1.0]}, {}, TypeError, r"\(matrix, names\)"),
        (
            {"x": ["a", "b"]},
            {"x": [1.0, 2.0]},
            {},
            TypeError,
            "training feature 'x' is not numeric.*categorical=",
        ),
        (
            {"x": [1.0]},
            {"x": [1.0]},
            {"features": ["x", "y"]},
            ValueError,
            "unknown features: 'y' \\(missing from training and served\\)",
        ),
        (
            {"x": [1.0], "y": [2.0]},
            {"x": [1.0]},
            {"features": ["y"]},
            ValueError,
            "'y' \\(missing from served\\)",
        ),
        ({"x": [1.0]}, {"z": [1.0]}, {}, ValueError, "no feature name in common"),
        ({"x": [1.0]}, {"x": [1.0]}, {"categorical": ["nope"]}, ValueError, "categorical names"),
        (
            {"x": [1, 2]},
            {"x": ["1", "2"]},
            {"categorical": ["x"]},
            TypeError,
            "integer codes in training and strings when served",
        ),
        ({"x": [1.5, 2.0]}, {"x": [1.0]}, {"categorical": ["x"]}, TypeError, "non-integer"),
        ({"x": [1.0]}, {"x": [1.0]}, {"bins": 1}, ValueError, "bins must be an integer >= 2"),
        ({"x": np.zeros((2, 2))}, {"x": [1.0]}, {}, ValueError, "must be 1-D"),
        ([1.0, 2.0], {"x": [1.0]}, {}, TypeError, "training must be a pyarrow.Table"),
        (
            {"x": [1.0]},
            {"x": [1.0]},
            {"thresholds": {"psi_skew": 1}},
            TypeError,
            "ParityThresholds",
        ),
    ],
)
def test_bad_input_says_what_to_fix(train, served, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        parity_report(train, served, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"psi_warn": 0.3, "psi_skew": 0.2}, "psi_warn"),
        ({"var_ratio_low": 1.5}, "var_ratio_low"),
        ({"alpha": 0.0}, "alpha"),
        ({"min_rows": 0}, "min_rows"),
        ({"ks_skew": float("nan")}, "ks_skew must be a finite number"),
        ({"js_skew": -1.0}, "js_skew must be >= 0"),
    ],
)
def test_threshold_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ParityThresholds(**kwargs)


def test_thresholds_are_frozen() -> None:
    th = ParityThresholds()
    with pytest.raises(AttributeError):
        th.psi_skew = 1.0  # type: ignore[misc]


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.integers(0, 30)), hnp.arrays(np.float64, st.integers(0, 30)))
def test_fuzzed_arrays_give_a_report_or_a_clear_error(a: np.ndarray, b: np.ndarray) -> None:
    try:
        fp = parity_report({"x": a}, {"x": b}, thresholds=ParityThresholds(min_rows=1))["x"]
    except ValueError as e:
        assert "empty" in str(e)
        return
    assert fp.verdict in ("ok", "warn", "skew", "insufficient")
    assert 0 <= fp.nonfinite_train <= 1 and 0 <= fp.nonfinite_served <= 1
    if fp.n_train and fp.n_served:
        assert 0 <= fp.ks <= 1 and fp.psi >= 0


# ----------------------------------------------------------------------------- scale, threads


def test_threads_get_the_same_report() -> None:
    rng = np.random.default_rng(13)
    t = {f"f{i}": rng.normal(size=20_000) for i in range(8)}
    s = {f"f{i}": rng.normal(0.02 * i, 1.0, 20_000) for i in range(8)}
    want = parity_report(t, s).features
    out: list = []

    def run() -> None:
        out.append(parity_report(t, s).features)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out == [want] * 4


def test_200_features_by_200k_rows() -> None:
    # FYP_PARITY_BIG_ROWS scales this down (or up) where time or memory is short
    n = int(os.environ.get("FYP_PARITY_BIG_ROWS", "200000"))
    rng = np.random.default_rng(14)
    names = [f"f{i}" for i in range(200)]
    t = rng.standard_normal((n, 200), dtype=np.float32)
    s = rng.standard_normal((n, 200), dtype=np.float32)
    s[:, 7] += 0.5
    # no time bound: 6-27 s on the shared 2-core dev box depending on load (docs/parity.md)
    report = parity_report((t, names), (s, names))
    assert report.flagged == ["f7"]


_cat_values = st.lists(
    st.one_of(
        st.none(),
        st.integers(-2, 3),
        st.sampled_from(["a", "b", ""]),
        st.floats(allow_nan=True, allow_infinity=True),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(_cat_values, _cat_values)
def test_fuzzed_categoricals_give_a_report_or_a_clear_error(a: list, b: list) -> None:
    arr_a, arr_b = np.array(a, dtype=object), np.array(b, dtype=object)
    try:
        fp = parity_report(
            {"c": arr_a}, {"c": arr_b}, categorical=["c"], thresholds=ParityThresholds(min_rows=1)
        )["c"]
    except (TypeError, ValueError) as e:
        assert any(w in str(e) for w in ("empty", "encode both sides", "non-integer")), str(e)
        return
    assert fp.verdict in ("ok", "warn", "skew", "insufficient")
    if fp.n_train and fp.n_served:
        assert 0 <= fp.js <= 1 and fp.psi >= 0
