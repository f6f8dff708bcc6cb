"""OPE of a shadow model on a real FeedPipeline log, end to end (docs/ope.md): the logged
propensities follow the one semantics, the replay gives 0 (never NaN) outside the target's
support, and IPS/SNIPS/DR match the textbook formulas computed independently, slot by slot,
and cover the world's true value of the target policy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import build_pipeline

from fyp_core import MlpRanker, analytics, ope
from fyp_core.analytics import ope_log
from fyp_core.loop.sim import true_finish
from fyp_core.synth import TASKS, demo_ranker_weights, make_world

NOW = 1.8e9
N_REQUESTS = 3000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    world = make_world(n_items=8000, n_users=600, seed=3, now=NOW)
    root = tmp_path_factory.mktemp("ope-log")
    # a 20% exploration arm: 4x the uniform slots of the default for the same serving time
    pipe = build_pipeline(world, log_dir=root, config={"candidates": 300}, explore_rate=0.2)
    # a shadow that ranks differently from live: the user-item affinity units cut from its
    # output, so it ranks candidates by the items' completion and like rates alone
    w, b, o = demo_ranker_weights(world.dim, seed=5)
    w[-1][:2, :] = 0.0
    pipe.add_shadow(MlpRanker(w, b, outputs=o, version="v2", task_names=list(TASKS)))
    rng = np.random.default_rng(0)
    user_of = {}
    for i in range(N_REQUESTS):
        u = int(rng.integers(len(world.user_ids)))
        user_of[f"q{i}"] = u
        r = pipe.feed(world.user_ids[u], f"q{i}", n=20, now=NOW + i)
        rows = np.searchsorted(world.item_ids, r.item_ids)
        out = world.engagement(np.full(len(rows), u), rows, np.arange(len(rows)), rng)
        for j in np.flatnonzero(out["completed"]):
            pipe.engage(r.impression_ids[j], completed=True, now=NOW + i + 1)
    pipe.close()
    return world, str(root), user_of


def test_logged_propensities_follow_the_semantics(served):
    world, root, _ = served
    imp = analytics.read_table(root, "impressions")
    src = np.asarray(imp.column("source").to_numpy(zero_copy_only=False))
    p = np.asarray(imp.column("propensity"))
    assert (p[src != "exploration"] == 1.0).all()  # the ranked pick is fixed given the arm
    ex = p[src == "exploration"]
    assert 0.17 < len(ex) / len(p) < 0.23
    # 1/|admissible|: the catalogue less the items drawn earlier in the request, and (rarely)
    # less a creator or topic whose cap the earlier pins filled
    size = np.rint(1.0 / ex)
    assert np.all(size <= world.n_items)
    assert np.mean(size < world.n_items - 20) < 0.03


def brute_force_pi(req: pa.Table, exp: pa.Table, version: str, temp: float) -> np.ndarray:
    """Softmax over the candidates minus earlier exploration draws; 0 outside; per slot."""
    reqs = {r["request_id"]: r for r in req.to_pylist()}
    drawn: dict = {}
    for x in exp.to_pylist():
        drawn.setdefault(x["request_id"], []).append((x["position"], x["item_id"]))
    out = []
    for x in exp.to_pylist():
        r = reqs[x["request_id"]]
        cands = r["candidate_item_ids"]
        j = r["shadow_versions"].index(version)
        s = np.array(r["shadow_candidate_scores"][j * len(cands) : (j + 1) * len(cands)])
        earlier = {it for p, it in drawn[x["request_id"]] if p < x["position"]}
        keep = np.array([c not in earlier for c in cands])
        if x["item_id"] not in cands or x["item_id"] in earlier:
            out.append(0.0)
            continue
        z = np.exp(s / temp - (s[keep] / temp).max()) * keep
        out.append(z[cands.index(x["item_id"])] / z.sum())
    return np.array(out)


def test_shadow_ope_matches_the_textbook_formulas(served):
    world, root, user_of = served
    res = ope_log.shadow_ope(root, "v2")
    assert res is not None and res.version == "v2"
    s = res.slots
    assert res.n_used == res.n_exploration > 100  # every request row logged (100% sampling)
    assert not np.isnan(s["pi"]).any()
    hit = s["pi"] > 0
    assert 0.01 < hit.mean() < 0.2  # ~300 candidates of 8000 items; the rest weigh 0

    req = analytics.read_table(root, "requests")
    out = analytics.impression_outcomes(root)
    exp = out.filter(pc.equal(out.column("source"), "exploration"))
    order = pc.index_in(pa.array(s["impression_id"]), value_set=exp.column("impression_id"))
    exp = exp.take(order)
    pi = brute_force_pi(req, exp, "v2", res.temperature)
    np.testing.assert_allclose(s["pi"], pi, rtol=1e-9, atol=1e-15)

    r = np.asarray(exp.column("completed"), dtype=float)
    p = np.asarray(exp.column("propensity"))
    np.testing.assert_array_equal(s["r"], r)
    w = pi / p
    n = len(r)
    ips = np.mean(w * r)
    snips = np.sum(w * r) / np.sum(w)
    dr_terms = s["q_target"] + w * (r - s["q_logged"])
    z95 = 1.959963984540054
    for est, v, psi in (
        (res.ips, ips, w * r - ips),
        (res.snips, snips, w * (r - snips) / w.mean()),
        (res.dr, dr_terms.mean(), dr_terms - dr_terms.mean()),
    ):
        se = np.sqrt(np.sum(psi**2) / (n * (n - 1)))
        assert est.value == pytest.approx(v, rel=1e-9)
        assert est.stderr == pytest.approx(se, rel=1e-9)
        assert est.ci == pytest.approx((v - z95 * se, v + z95 * se), rel=1e-9)
        assert est.ess == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)
    assert 5 < res.ips.ess < n
    live = ope_log.shadow_ope(root)  # the served model's own candidate scores
    assert live is not None and live.version == "v1"
    assert live.snips.value != res.snips.value

    # the world's true value of the target on the same slots: sum over every candidate c of
    # pi(c) * P(finish | c, slot), pi from one replay of every (slot, candidate) pair
    users = np.array([user_of[q] for q in exp.column("request_id").to_pylist()])
    pos = np.asarray(exp.column("position"))
    at = np.asarray(pc.index_in(exp.column("request_id"), value_set=req.column("request_id")))
    cands = req.column("candidate_item_ids").combine_chunks()
    offs = np.asarray(cands.offsets)
    k = np.diff(offs)[at]
    slot = np.repeat(np.arange(n), k)
    cand_at = offs[at][slot] + np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
    items = np.asarray(cands.flatten())[cand_at]
    pairs = pa.table(
        {
            "request_id": exp.column("request_id").take(pa.array(slot)),
            "item_id": pa.array(items),
            "position": pa.array(pos[slot].astype(np.int32)),
            "source": pa.array(np.full(len(slot), "ranked")),
        }
    )
    both = pa.concat_tables([pairs, exp.select(pairs.column_names)])
    scores = ope_log.model_candidate_scores(req, "v2")[1]
    pis = ope.replay_propensities(req, both, scores, policy="softmax", temperature=res.temperature)[
        : len(slot)
    ]
    np.testing.assert_allclose(np.bincount(slot, weights=pis), 1.0, rtol=1e-9)
    rows = np.searchsorted(world.item_ids, items)
    p_true = true_finish(world, users[slot], rows, pos[slot])
    value = float(np.bincount(slot, weights=pis * p_true).mean())
    for est in (res.ips, res.snips, res.dr):
        assert abs(est.value - value) < 3.5 * est.stderr, (est, value)
        assert est.stderr < 0.07  # an informative interval (95% CI within ±14 points)


def test_replay_gives_zero_outside_the_support_never_nan(served):
    _, root, _ = served
    req = analytics.read_table(root, "requests")
    imp = analytics.read_table(root, "impressions")
    exp = imp.filter(pc.equal(imp.column("source"), "exploration"))
    flat = np.asarray(req.column("candidate_scores").combine_chunks().flatten())
    pi = ope.replay_propensities(req, exp, flat, policy="softmax", temperature=0.1)
    assert not np.isnan(pi).any()
    assert (pi == 0).mean() > 0.8  # catalogue-wide draws outside the candidate set


def test_report_shows_the_shadow_ope(served, tmp_path):
    import subprocess
    import sys

    _, root, _ = served
    out = tmp_path / "report.html"
    subprocess.run(
        [sys.executable, "-m", "fyp_core.cli", "report", root, "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    page = out.read_text()
    table = page[page.index("Shadow OPE on the exploration arm") :]
    assert "<td>v2</td><td>shadow</td>" in table and "<td>v1</td><td>live</td>" in table
    assert '<div class="t">Shadow OPE</div><div class="v">v2 ' in page


def test_shadow_candidates_share_bounds_the_scoring(tmp_path):
    world = make_world(n_items=2000, n_users=50, seed=4, now=NOW)
    w, b, o = demo_ranker_weights(world.dim, seed=5)
    logged = {}
    for share in (0.0, 0.3, 1.0):
        root = tmp_path / f"s{share}"
        pipe = build_pipeline(
            world, log_dir=root, config={"candidates": 100, "shadow_candidates": share}
        )
        assert pipe.config["shadow_candidates"] == share
        pipe.add_shadow(MlpRanker(w, b, outputs=o, version="v2", task_names=list(TASKS)))
        for i in range(200):
            pipe.feed(world.user_ids[i % 50], f"s{i}", n=10, now=NOW + i)
        pipe.close()
        req = analytics.read_table(str(root), "requests")
        n_v = np.asarray(pc.list_value_length(req.column("shadow_versions")))
        n_s = np.asarray(pc.list_value_length(req.column("shadow_candidate_scores")))
        k = np.asarray(pc.list_value_length(req.column("candidate_item_ids")))
        assert req.num_rows == 200 and np.array_equal(n_s, n_v * k)
        logged[share] = set(np.asarray(req.column("request_id"))[n_v == 1])
    assert not logged[0.0] and len(logged[1.0]) == 200
    assert 30 < len(logged[0.3]) < 90  # ~60 of 200, by the request hash
    with pytest.raises(ValueError, match="shadow_candidates must be in"):
        build_pipeline(world, config={"shadow_candidates": 1.5})
