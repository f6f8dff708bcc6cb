"""Counterfactual replay (`ope.replay_propensities`) against a brute-force loop, and OPE on the
exploration slots of a simulated log against the simulator's true value of the replayed policy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from _analytics_fixtures import sim_log

from fyp_core import analytics, ope


@pytest.fixture(scope="module")
def logged():
    truth = sim_log()
    req = analytics.read_table(truth.root, "requests")
    out = analytics.impression_outcomes(truth.root)
    return truth, req, out


def brute_force(
    req: pa.Table,
    imp: pa.Table,
    scores: np.ndarray,
    policy: str,
    temp: float,
    eps: float,
    inadmissible: frozenset = frozenset(),
) -> np.ndarray:
    """docs/ope.md, one slot at a time: S_k = candidates - earlier exploration draws of the
    request - inadmissible; pi = 0 outside S_k; NaN only for a request that was not logged."""
    reqs = req.to_pylist()
    row_of = {r["request_id"]: i for i, r in enumerate(reqs)}
    offs = np.r_[0, np.cumsum([len(r["candidate_item_ids"]) for r in reqs])]
    drawn: dict = {}
    for x in imp.to_pylist():
        if x["source"] == "exploration":
            drawn.setdefault(x["request_id"], []).append((x["position"], x["item_id"]))
    out = []
    for x in imp.to_pylist():
        i = row_of.get(x["request_id"])
        if i is None:
            out.append(np.nan)
            continue
        cands = reqs[i]["candidate_item_ids"]
        s = scores[offs[i] : offs[i + 1]]
        earlier = {it for p, it in drawn.get(x["request_id"], []) if p < x["position"]}
        support = [j for j, c in enumerate(cands) if c not in earlier and c not in inadmissible]
        ids = [cands[j] for j in support]
        if x["item_id"] not in ids:
            out.append(0.0)
            continue
        if policy == "greedy":
            best = sorted(support, key=lambda j: (-s[j], j))
            v = float(x["position"] < len(best) and cands[best[x["position"]]] == x["item_id"])
        else:
            z = np.exp(s[support] / temp - (s[support] / temp).max())
            v = z[ids.index(x["item_id"])] / z.sum()
        out.append((1 - eps) * v + eps / len(support))
    return np.array(out)


@pytest.mark.parametrize(
    "policy,temp,eps,blocked",
    [
        ("greedy", 1.0, 0.0, False),
        ("greedy", 1.0, 0.1, True),
        ("softmax", 0.5, 0.0, False),
        ("softmax", 2.0, 0.2, True),
    ],
)
def test_replay_matches_brute_force(logged, policy, temp, eps, blocked):
    _, req, out = logged
    req_s = req.slice(0, 150)
    ids = set(req_s.column("request_id").to_pylist()) | {"r-missing"}
    imp = out.filter(pa.compute.is_in(out.column("request_id"), pa.array(sorted(ids))))
    imp = imp.select(["request_id", "item_id", "position", "source"])
    flat = req_s.column("candidate_item_ids").combine_chunks().flatten().to_numpy()
    # a catalogue-wide draw that is not a candidate, and a request that was not logged
    extra = pa.table(
        {
            "request_id": ["r-missing", req_s.column("request_id")[0].as_py()],
            "item_id": pa.array([1, 12345], pa.uint64()),
            "position": pa.array([0, 3], pa.int32()),
            "source": ["exploration", "exploration"],
        }
    )
    imp = pa.concat_tables([imp, extra])
    rng = np.random.default_rng(0)
    scores = rng.normal(size=len(flat))
    bad = frozenset(int(x) for x in flat[::7]) if blocked else frozenset()
    got = ope.replay_propensities(
        req_s,
        imp,
        scores,
        policy=policy,
        temperature=temp,
        epsilon=eps,
        inadmissible=np.array(sorted(bad), dtype=np.uint64) if blocked else None,
    )
    want = brute_force(req_s, imp, scores, policy, temp, eps, bad)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert np.isnan(got[-2]) and got[-1] == 0.0
    assert np.isnan(got).sum() == 1  # outside the support is 0, never NaN
    if policy == "greedy" and eps == 0:
        assert set(np.unique(got[~np.isnan(got)])) <= {0.0, 1.0}


def test_replay_validates(logged):
    _, req, out = logged
    imp = out.slice(0, 10)
    with pytest.raises(ValueError, match="policy"):
        ope.replay_propensities(req, imp, np.zeros(1), policy="best")
    with pytest.raises(ValueError, match="scores has shape"):
        ope.replay_propensities(req, imp, np.zeros(3))
    with pytest.raises(ValueError, match="epsilon"):
        ope.replay_propensities(req, imp, lambda it, r: np.zeros(len(it)), epsilon=2)


@pytest.mark.parametrize("policy,temp", [("greedy", 1.0), ("softmax", 0.1)])
def test_ope_on_exploration_slots_recovers_true_value(logged, policy, temp):
    """A candidate ranker that scores by true relevance, replayed on the uniform exploration
    slots: IPS/SNIPS estimates cover the simulator's exact value of that policy."""
    truth, req, out = logged
    cands = req.column("candidate_item_ids").combine_chunks()
    flat = np.asarray(cands.flatten())
    req_row = np.repeat(np.arange(req.num_rows), np.diff(np.asarray(cands.offsets)))
    users = np.asarray(req.column("user_token").to_numpy(zero_copy_only=False))[req_row]
    ts = req.column("ts").cast(pa.int64()).to_numpy()[req_row]
    rel = truth.engagement_prob(users, flat, np.zeros(len(flat), int), ts)
    exp_imp = out.filter(pa.compute.equal(out.column("source"), "exploration"))
    # one exploration slot per request, so the target's pool at that slot is every candidate
    _, first = np.unique(np.asarray(exp_imp.column("request_id")), return_index=True)
    exp_imp = exp_imp.take(pa.array(np.sort(first)))
    pi = ope.replay_propensities(req, exp_imp, np.log(rel), policy=policy, temperature=temp)
    ok = ~np.isnan(pi)
    assert ok.mean() > 0.4  # exploration slots of logged (unsampled) requests
    r = np.asarray(exp_imp.column("engaged"))[ok].astype(float)
    p = np.asarray(exp_imp.column("propensity"))[ok]
    # exact target value on the same slots: sum over candidates of pi(c) * P(engaged | c, slot)
    pos = np.asarray(exp_imp.column("position"))[ok]
    row = pa.compute.index_in(exp_imp.column("request_id"), value_set=req.column("request_id"))
    row = np.asarray(row.fill_null(-1))[ok]
    k = truth.n_candidates
    cand_m = flat.reshape(-1, k)[row]
    rel_m = rel.reshape(-1, k)[row]
    p_slot = rel_m * truth.pos_curve[pos][:, None]  # rel is at position 0
    if policy == "greedy":
        best = np.argsort(-rel_m, axis=1, kind="stable")[np.arange(len(row)), pos]
        value = p_slot[np.arange(len(row)), best].mean()
    else:  # per candidate conditional softmax over those not shown earlier (same as replay)
        all_pi = np.stack(
            [
                ope.replay_propensities(
                    req,
                    pa.table(
                        {
                            "request_id": exp_imp.column("request_id").filter(pa.array(ok)),
                            "item_id": pa.array(cand_m[:, c]),
                            "position": pa.array(pos),
                            "source": pa.array(["exploration"] * len(pos)),
                        }
                    ),
                    np.log(rel),
                    policy="softmax",
                    temperature=temp,
                )
                for c in range(k)
            ],
            axis=1,
        )
        value = (all_pi * p_slot).sum(axis=1).mean()
    for e in (ope.ips(r, p, pi[ok]), ope.snips(r, p, pi[ok])):
        assert abs(e.value - value) < 3 * e.stderr, (e, value)
    assert value > r.mean()  # the relevance ranker beats uniform exploration
