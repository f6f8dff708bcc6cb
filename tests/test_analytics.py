"""fyp_core.analytics: every SQL file against an independent pyarrow/numpy computation on a
simulated log, and against the simulator's ground truth where it is known."""

from __future__ import annotations

import re

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from _analytics_fixtures import sim_log

from fyp_core import analytics

US_H = 3_600_000_000


@pytest.fixture(scope="module")
def truth():
    return sim_log()


@pytest.fixture(scope="module")
def ref(truth):
    """Reference outcomes built with pyarrow joins (no DuckDB), as numpy columns."""
    imp = analytics.read_table(truth.root, "impressions")
    eng = analytics.read_table(truth.root, "engagements")
    pos_any = pc.or_(pc.or_(eng["completed"], eng["liked"]), pc.or_(eng["shared"], eng["followed"]))
    eng = eng.append_column("pos_any", pos_any)
    win = 24 * US_H
    cols = {}
    its = imp["ts"].cast(pa.int64())
    base = pa.table({"impression_id": imp["impression_id"], "its": its})
    for flag in ("pos_any", "completed", "liked"):
        e = eng.filter(eng[flag]).group_by("impression_id").aggregate([("ts", "min")])
        e = e.append_column("t", e["ts_min"].cast(pa.int64())).select(["impression_id", "t"])
        j = base.join(e, "impression_id", join_type="left outer").sort_by("impression_id")
        t = j["t"].to_numpy(zero_copy_only=False).astype(float)
        cols[flag] = t <= j["its"].to_numpy().astype(float) + win
        cols[flag + "_late"] = t > j["its"].to_numpy().astype(float) + win
    imp = imp.sort_by("impression_id")
    out = {
        c: imp[c].to_numpy(zero_copy_only=False)
        for c in (
            "impression_id",
            "user_token",
            "position",
            "source",
            "topic",
            "creator_id",
            "item_id",
            "sampled_pct",
        )
    }
    out["ts"] = imp["ts"].cast(pa.int64()).to_numpy()
    out["w"] = 100.0 / out["sampled_pct"]
    out["engaged"] = cols["pos_any"]
    out["engaged_late"] = cols["pos_any_late"]
    out["completed"] = cols["completed"]
    out["liked"] = cols["liked"]
    out["day"] = out["ts"] // (24 * US_H)
    return out


def rows(t: pa.Table) -> list:
    return t.to_pylist()


def wrate(w, y, mask):
    return (w[mask] * y[mask]).sum() / w[mask].sum()


def test_impression_outcomes_match_reference(truth, ref):
    t = analytics.impression_outcomes(truth.root).sort_by("impression_id")
    assert t.num_rows == len(ref["impression_id"]) == truth.n_impressions_logged
    assert t["impression_id"].to_pylist() == ref["impression_id"].tolist()
    for c in ("engaged", "engaged_late", "completed", "liked"):
        np.testing.assert_array_equal(t[c].to_numpy(), ref[c], err_msg=c)
    np.testing.assert_allclose(t["w"].to_numpy(), ref["w"])
    # a tiny window turns (almost) every engagement late
    short = analytics.impression_outcomes(truth.root, window_hours=1e-4)
    assert pc.sum(short["engaged"]).as_py() < 0.01 * ref["engaged"].sum()


def test_daily_summary_reweights_to_the_served_slots(truth, ref):
    d = rows(analytics.daily_summary(truth.root))
    assert len(d) == truth.days
    w, src = ref["w"], ref["source"]
    for r, day in zip(d, np.unique(ref["day"])):
        m = ref["day"] == day
        assert r["slots"] == pytest.approx(w[m].sum())
        assert r["exploration_share"] == pytest.approx(
            w[m & (src == "exploration")].sum() / w[m].sum()
        )
        assert r["engagement_rate"] == pytest.approx(wrate(w, ref["engaged"], m))
    # reweighting recovers the slots actually served (sampling drops ~half the firehose rows)
    assert sum(r["slots"] for r in d) == pytest.approx(truth.n_slots, rel=0.02)
    assert truth.n_impressions_logged < 0.8 * truth.n_slots
    late = sum(r["late_share"] * 1 for r in d) / len(d)
    assert late == pytest.approx(truth.late_share, abs=0.01)


def test_lift_by_topic_reference_and_truth(truth, ref):
    t = rows(analytics.lift_by_topic(truth.root))
    assert [r["topic"] for r in t] == list(range(truth.n_topics)) + [None]
    w, y, src, top = ref["w"], ref["engaged"].astype(float), ref["source"], ref["topic"]
    z2 = []
    for r in t:
        m = np.ones_like(w, bool) if r["topic"] is None else top == r["topic"]
        mr, me = m & (src == "ranked"), m & (src == "exploration")
        pr, pe = wrate(w, y, mr), wrate(w, y, me)
        vr = (w[mr] ** 2 * (y[mr] - pr) ** 2).sum() / w[mr].sum() ** 2
        ve = (w[me] ** 2 * (y[me] - pe) ** 2).sum() / w[me].sum() ** 2
        se = np.sqrt(vr / pr**2 + ve / pe**2)
        assert r["ranked_rate"] == pytest.approx(pr)
        assert r["exploration_rate"] == pytest.approx(pe)
        assert r["lift"] == pytest.approx(pr / pe - 1)
        assert r["lift_lo"] == pytest.approx(np.exp(np.log(pr / pe) - 1.959964 * se) - 1)
        assert r["lift_hi"] == pytest.approx(np.exp(np.log(pr / pe) + 1.959964 * se) - 1)
        true = truth.lift if r["topic"] is None else truth.lift_by_topic[r["topic"]]
        if r["topic"] is not None:
            z2.append(((np.log1p(r["lift"]) - np.log1p(true)) / r["se_log_ratio"]) ** 2)
        else:
            assert r["lift_lo"] <= true <= r["lift_hi"]
            assert r["ranked_rate"] == pytest.approx(truth.ranked_rate, rel=0.03)
    # per-topic errors are standard normal on the log scale: chi-square(topics) test at 0.1%
    assert sum(z2) < 26.1 and len(z2) == 8


def test_position_bias_reference_and_true_curve(truth, ref):
    t = rows(analytics.position_bias(truth.root))
    w, y, src, pos = ref["w"], ref["engaged"].astype(float), ref["source"], ref["position"]
    for r in t:
        m = pos == r["position"]
        if r["arm"] != "all":
            m &= src == r["arm"]
        assert r["rate"] == pytest.approx(wrate(w, y, m))
        assert r["n_rows"] == m.sum()
    ex = sorted((r["position"], r["rate"], r["se"]) for r in t if r["arm"] == "exploration")
    k = np.array([e[0] for e in ex])
    rate = np.array([e[1] for e in ex])
    se = np.array([e[2] for e in ex])
    # the causal curve: log rate = c - alpha log(1 + k); the simulator's alpha is 0.5
    wt = (rate / se) ** 2
    X = np.stack([np.ones_like(k, float), -np.log1p(k)], axis=1)
    coef = np.linalg.solve(X.T @ (X * wt[:, None]), X.T @ (wt * np.log(rate)))
    true_alpha = -np.log(truth.pos_curve[1] / truth.pos_curve[0]) / np.log(2)
    assert coef[1] == pytest.approx(true_alpha, abs=0.15)
    # the ranked arm's curve is steeper than the exploration arm's (confounded with quality)
    rel = {(r["arm"], r["position"]): r["rel_to_top"] for r in t}
    assert rel[("exploration", 0)] == rel[("ranked", 0)] == 1.0


def test_slot_residuals(truth, ref):
    t = analytics.slot_residuals(truth.root)
    pos = t["position"].to_numpy()
    w = t["w"].to_numpy()
    y = t["engaged"].to_numpy().astype(float)
    norm = t["slot_norm"].to_numpy()
    for k in np.unique(pos):
        m = pos == k
        assert norm[m] == pytest.approx(np.full(m.sum(), wrate(w, y, m)))
        assert (w[m] * t["residual"].to_numpy()[m]).sum() == pytest.approx(0, abs=1e-6)


def test_cohort_diversity(truth, ref):
    t = rows(analytics.cohort_diversity(truth.root))
    day = ref["day"]
    week = day - (day + 3) % 7  # Monday-based week, in days since the epoch
    users, uinv = np.unique(ref["user_token"], return_inverse=True)
    key = uinv * 100_000 + week
    uk, kinv = np.unique(key, return_inverse=True)
    topics = np.array([len(np.unique(ref["topic"][kinv == i])) for i in range(len(uk))])
    k_user, k_week = uk // 100_000, uk % 100_000
    cohort = np.full(len(users), 10**9)
    np.minimum.at(cohort, k_user, k_week)
    age = (k_week - cohort[k_user]) // 7
    assert len(t) == len({(c, a) for c, a in zip(cohort[k_user], age)})
    for r in t:
        c = np.datetime64(r["cohort_week"], "D").astype(int)
        m = (cohort[k_user] == c) & (age == r["age_weeks"])
        assert r["users"] == m.sum()
        assert r["mean_topics"] == pytest.approx(topics[m].mean())


def gini(x: np.ndarray) -> float:
    x = np.sort(x)
    n = len(x)
    return float(((2 * np.arange(1, n + 1) - n - 1) * x).sum() / (n * x.sum()))


def test_creator_gini(truth, ref):
    t = rows(analytics.creator_gini(truth.root, young_days=3))
    cre, w, day, ts = ref["creator_id"], ref["w"], ref["day"], ref["ts"]
    uc, cinv = np.unique(cre, return_inverse=True)
    first = np.full(len(uc), np.iinfo(np.int64).max)
    np.minimum.at(first, cinv, ts)
    age = ts - first[cinv]
    for r, d in zip(t, np.unique(day)):
        m = day == d
        per = np.bincount(cinv[m], weights=w[m])
        assert r["creators"] == (per > 0).sum()
        assert r["gini"] == pytest.approx(gini(per[per > 0]))
        young = m & (age < 3 * 24 * US_H)
        assert r["young_creator_share"] == pytest.approx(w[young].sum() / w[m].sum())
        assert r["censored"] == (d < day.min() + 3)
    assert all(0 <= r["gini"] < 1 for r in t)


def test_young_creator_share_is_zero_not_null_without_young_creators(truth):
    """young_days=0: no creator is young on any day, so the share is 0.0 on every day."""
    t = rows(analytics.creator_gini(truth.root, young_days=0))
    assert t and all(r["young_creator_share"] == 0.0 for r in t), t[:2]


def weighted_auc(p, y, w):
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    up, inv = np.unique(p, return_inverse=True)
    pos = np.bincount(inv, weights=w * y)
    neg = np.bincount(inv, weights=w * (1 - y))
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


@pytest.fixture(scope="module")
def scores(truth, ref):
    s = analytics.read_table(
        truth.root, "ranker_scores", ["impression_id", "model_version", "is_shadow", "pred_finish"]
    )
    return s


def test_shadow_vs_live(truth, ref, scores):
    t = {r["shadow_version"]: r for r in rows(analytics.shadow_vs_live(truth.root))}
    expected = {m.version: m.expected_verdict for m in truth.models if m.is_shadow}
    assert {k: r["verdict"] for k, r in t.items()} == expected
    idx = {k: i for i, k in enumerate(ref["impression_id"])}
    for version, r in t.items():
        preds = {}
        for v in (version, truth.live_version):
            s = scores.filter(pc.equal(scores["model_version"], v))
            at = np.array([idx[i] for i in s["impression_id"].to_pylist()])
            p = np.full(len(ref["w"]), np.nan)
            p[at] = s["pred_finish"].to_numpy().astype(np.float64)
            preds[v] = np.clip(p, 1e-7, 1 - 1e-7)
        y, w = ref["completed"].astype(float), ref["w"]
        assert r["n"] == len(y)
        ll = {}
        for v, role in ((version, "shadow"), (truth.live_version, "live")):
            p = preds[v]
            ll[role] = -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()
            assert r[f"{role}_log_loss"] == pytest.approx(ll[role], rel=1e-9)
            # AUC over predictions binned at 1e-4 (exact Mann-Whitney on the bins) ...
            assert r[f"{role}_auc"] == pytest.approx(
                weighted_auc(np.floor(p * 1e4), y, w), rel=1e-9
            )
            # ... which is within 1e-3 of the AUC on the raw predictions
            assert r[f"{role}_auc"] == pytest.approx(weighted_auc(p, y, w), abs=1e-3)
            assert r[f"{role}_brier"] == pytest.approx((w * (p - y) ** 2).sum() / w.sum())
        assert r["ll_diff"] == pytest.approx(ll["shadow"] - ll["live"], rel=1e-6)
        assert r["ll_diff_lo"] < r["ll_diff"] < r["ll_diff_hi"]


def test_shadow_calibration(truth, ref, scores):
    t = rows(analytics.shadow_calibration(truth.root))
    assert {r["model_version"] for r in t} == {m.version for m in truth.models}
    idx = {k: i for i, k in enumerate(ref["impression_id"])}
    for m in truth.models:
        got = [r for r in t if r["model_version"] == m.version]
        assert [r["decile"] for r in got] == list(range(1, 11))  # no tie spans a decile here
        s = scores.filter(pc.equal(scores["model_version"], m.version))
        at = np.array([idx[i] for i in s["impression_id"].to_pylist()])
        p = s["pred_finish"].to_numpy().astype(np.float64)
        y, w = ref["completed"][at].astype(float), ref["w"][at]
        # decile = 1 + floor(10 * rows in lower 1e-4 bins / rows): a bin stays in one decile
        up, inv, cnt = np.unique(np.floor(p * 1e4), return_inverse=True, return_counts=True)
        before = (np.cumsum(cnt) - cnt)[inv]
        dec = np.minimum(10, 1 + (10 * before) // len(p))
        for r in got:
            part = dec == r["decile"]
            assert r["n"] == part.sum()
            assert r["mean_pred"] == pytest.approx(wrate(w, p, part), rel=1e-6)
            assert r["observed"] == pytest.approx(wrate(w, y, part), rel=1e-9)
        ece = sum(abs(r["mean_pred"] - r["observed"]) for r in got) / 10
        if m.slope == 1 and m.bias == 0 and m.noise <= 0.3:
            assert ece < 0.02  # a well-calibrated model


def test_fresh_items(truth, ref):
    t = rows(analytics.fresh_items(truth.root, fresh_hours=12))
    req = analytics.read_table(truth.root, "requests", ["ts", "candidate_item_ids"])
    c = req["candidate_item_ids"].combine_chunks()
    c_items = np.asarray(c.flatten())
    c_ts = np.repeat(req["ts"].cast(pa.int64()).to_numpy(), np.diff(np.asarray(c.offsets)))
    items = np.concatenate([c_items, ref["item_id"]])
    ts = np.concatenate([c_ts, ref["ts"]])
    u, inv = np.unique(items, return_inverse=True)
    first = np.full(len(u), np.iinfo(np.int64).max)
    np.minimum.at(first, inv, ts)
    ui = np.searchsorted(u, ref["item_id"])
    first_imp = np.full(len(u), np.iinfo(np.int64).max)
    np.minimum.at(first_imp, ui, ref["ts"])
    shown = first_imp < np.iinfo(np.int64).max
    lag_h = np.where(shown, (first_imp - first) / US_H, np.inf)
    fday = first // (24 * US_H)
    by_day = {r["day"]: r for r in t}
    for d in np.unique(fday):
        r = by_day[np.datetime64(int(d), "D").astype(object)]
        m = fday == d
        assert r["new_items"] == m.sum()
        assert r["retrieval_rate"] == pytest.approx((lag_h[m] <= 12).mean())
        assert r["lag_p50_hours"] == pytest.approx(np.quantile(lag_h[m & shown], 0.5), rel=1e-6)
    assert [r["censored"] for r in t] == [True] + [False] * (len(t) - 1)
    fresh = [r["fresh_slot_share"] for r in t]
    assert np.mean(fresh) == pytest.approx(truth.fresh_rate, rel=0.15)


def test_sql_files_are_generated_from_one_source():
    """sql/<name>.sql are the standalone renderings of queries/ (none hand-edited or stale)."""
    from fyp_core.analytics import sqlsource

    assert sqlsource.main(["--check"]) == 0
    views = [name for name, _ in sqlsource.views()]
    assert views == ["imp", "eng", "outcomes"]
    for name in analytics.QUERIES:
        text = analytics.sql_text(name)
        assert text == sqlsource.standalone(name)
        assert "SET VARIABLE root" in text.split("WITH")[0], f"{name}.sql: document root"
        assert not re.search(r"\{\w+\}", text.replace("{'dt'", ""))
        # the query source reads the shared views, never the files itself
        assert "read_parquet" not in (sqlsource.QUERY_DIR / f"{name}.sql").read_text()
    stale = analytics.SQL_DIR / "lift_by_topic.sql"
    keep = stale.read_text()
    try:
        stale.write_text(keep.replace("1.959964", "1.96"))
        assert sqlsource.main(["--check"]) == 1
    finally:
        stale.write_text(keep)


def test_duckdb_connection_creates_the_views_once(truth):
    con = analytics.connect(truth.root, window_hours=24.0)
    got = {
        r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()
    }
    assert {"imp", "eng", "outcomes", "impressions", "engagements", "ranker_scores"} <= got
    a = analytics.lift_by_topic(truth.root, con=con).to_pylist()
    b = analytics.lift_by_topic(truth.root, window_hours=1e-4, con=con).to_pylist()
    assert a == analytics.lift_by_topic(truth.root).to_pylist()
    assert b[-1]["ranked_rate"] < 0.05 * a[-1]["ranked_rate"]  # the view sees the new window
    with pytest.raises(ValueError, match="engine must be one of"):
        analytics.connect(truth.root, engine="trino")


def test_sql_runs_in_a_bare_duckdb_connection(truth):
    """What a user of the DuckDB CLI does: set the variable, run the file as is."""
    con = duckdb.connect()
    con.execute("SET VARIABLE root = ?", [truth.root])
    got = con.sql(analytics.sql_text("lift_by_topic")).fetchall()
    assert len(got) == truth.n_topics + 1
    assert analytics.available_queries(truth.root) == list(analytics.QUERIES)


def test_errors_are_clear(tmp_path, truth):
    with pytest.raises(ValueError, match="unknown query"):
        analytics.run("nope", truth.root)
    with pytest.raises(ValueError, match="does not exist"):
        analytics.lift_by_topic(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs table"):
        analytics.lift_by_topic(str(tmp_path))
    assert analytics.available_queries(str(tmp_path)) == []


def test_simulator_writes_schema_v1(truth):
    """The simulated log follows docs/eventlog_schema.md: layout, types, metadata, tokens."""
    import pyarrow.parquet as pq

    from fyp_core.analytics.synthetic import SCHEMAS, TS

    for table, schema in SCHEMAS.items():
        files = analytics.table_files(truth.root, table)
        assert files, table
        for f in files[:3] + files[-2:]:
            assert re.search(rf"/{table}/dt=\d{{4}}-\d\d-\d\d/hour=\d\d/part-[\w-]+\.parquet$", f)
            s = pq.read_schema(f)
            assert s.remove_metadata().equals(schema.remove_metadata()), (table, s)
            assert s.metadata[b"fyp.schema_version"] == b"2"
            assert s.metadata[b"fyp.table"] == table.encode()
    assert SCHEMAS["impressions"].field("ts").type == TS
    tok = analytics.read_table(truth.root, "impressions", ["user_token"])["user_token"]
    assert pc.all(pc.match_substring_regex(tok, r"^[0-9a-f]{32}$")).as_py()
    for table in ("engagements", "requests", "exploration_events"):
        t = analytics.read_table(truth.root, table, ["user_token"])["user_token"]
        assert pc.all(pc.match_substring_regex(t, r"^[0-9a-f]{32}$")).as_py(), table


def test_queries_from_several_threads(truth):
    """Each call opens its own DuckDB connection: concurrent callers get the serial answers."""
    from concurrent.futures import ThreadPoolExecutor

    names = ["lift_by_topic", "position_bias", "creator_gini", "daily_summary"] * 2
    serial = {n: analytics.run(n, truth.root).to_pylist() for n in set(names)}
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda n: (n, analytics.run(n, truth.root).to_pylist()), names))
    for n, rows_ in got:
        assert rows_ == serial[n], n
