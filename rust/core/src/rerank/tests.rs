//! The re-ranker against a naive re-implementation (every window recounted from scratch at every
//! slot) and an independent audit of every window of the output.

use super::*;

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f32 {
        (self.next() % (1 << 24)) as f32 / (1u32 << 24) as f32
    }
    /// Skewed: small values are much more likely.
    fn skewed(&mut self, m: u64) -> u64 {
        let a = self.next() % m;
        let b = self.next() % m;
        a.min(b)
    }
}

struct Owned {
    scores: Vec<f32>,
    topics: Vec<u64>,
    creators: Vec<u64>,
    cats: Vec<u64>,
    fresh: Vec<bool>,
    emb: Vec<f32>,
    dim: usize,
}

impl Owned {
    fn random(r: &mut Lcg, n: usize) -> Self {
        let dim = 4;
        Owned {
            scores: (0..n).map(|_| (r.next() % 50) as f32 / 10.0).collect(),
            topics: (0..n).map(|_| r.skewed(5) * 1000 + 7).collect(),
            creators: (0..n).map(|_| r.skewed(8)).collect(),
            cats: (0..n).map(|_| r.skewed(6)).collect(),
            fresh: (0..n).map(|_| r.next().is_multiple_of(4)).collect(),
            emb: (0..n * dim).map(|_| r.unit() - 0.5).collect(),
            dim,
        }
    }
    fn cands(&self) -> Candidates<'_> {
        Candidates {
            scores: &self.scores,
            topics: &self.topics,
            creators: &self.creators,
            embeddings: Some((&self.emb, self.dim)),
            categories: Some(&self.cats),
            is_fresh: Some(&self.fresh),
        }
    }
}

fn random_policy(r: &mut Lcg) -> Policy {
    let window = 1 + (r.next() % 8) as usize;
    let share_num = 1 + r.next() % window as u64;
    Policy {
        window,
        max_topic_share: (!r.next().is_multiple_of(3)).then_some(share_num as f64 / window as f64),
        max_per_creator: (!r.next().is_multiple_of(3)).then_some(1 + (r.next() % 3) as usize),
        blocked_categories: if r.next().is_multiple_of(2) {
            vec![5]
        } else {
            vec![]
        },
        category_caps: vec![
            CategoryCap {
                category: 3,
                share: ((r.next() % 3) as f64 / window as f64).min(1.0),
                safety: r.next().is_multiple_of(2),
            },
            CategoryCap {
                category: 4,
                share: 0.5,
                safety: false,
            },
        ],
        fresh_floor: (r.next() % (window as u64 + 1)) as usize,
        diversity: Diversity::None,
        ..Default::default()
    }
}

/// Per-slot breaches of each rule, recounted window by window; also asserts the safety rules.
fn audit(p: &Policy, c: &Candidates<'_>, out: &[usize]) -> [u32; 4] {
    let w = p.window;
    let mut breaches = [0u32; 4];
    let mut seen = std::collections::HashSet::new();
    for (pos, &i) in out.iter().enumerate() {
        assert!(seen.insert(i), "duplicate {i}");
        let cat = c.categories.map(|x| x[i]);
        assert!(
            !cat.is_some_and(|x| p.blocked_categories.contains(&x)),
            "blocked item {i} shown"
        );
        let win = &out[pos.saturating_sub(w - 1)..=pos];
        let count = |f: &dyn Fn(usize) -> bool| win.iter().filter(|&&j| f(j)).count();
        if let Some(s) = p.max_topic_share {
            if count(&|j| c.topics[j] == c.topics[i]) > cap_count(s, w) {
                breaches[Rule::MaxTopicShare as usize] += 1;
            }
        }
        if let Some(m) = p.max_per_creator {
            if count(&|j| c.creators[j] == c.creators[i]) > m {
                breaches[Rule::MaxPerCreator as usize] += 1;
            }
        }
        for cap in &p.category_caps {
            if cat == Some(cap.category) {
                let n = count(&|j| c.categories.unwrap()[j] == cap.category);
                if n > cap_count(cap.share, w) {
                    assert!(
                        !cap.safety,
                        "safety cap on {} broken at {pos}",
                        cap.category
                    );
                    breaches[Rule::CategoryCaps as usize] += 1;
                }
            }
        }
    }
    let first = w.min(out.len());
    if let Some(f) = c.is_fresh {
        let shown = out[..first].iter().filter(|&&j| f[j]).count();
        breaches[Rule::FreshFloor as usize] = p.fresh_floor.min(first).saturating_sub(shown) as u32;
    }
    breaches
}

/// The naive rules candidate `i` breaks with `win` placed before it: (violated relaxable rules,
/// safety violated).
fn naive_rules(
    p: &Policy,
    c: &Candidates<'_>,
    cats: &[u64],
    win: &[usize],
    forced: bool,
    i: usize,
) -> (Vec<Rule>, bool) {
    let w = p.window;
    let mut v = Vec::new();
    let mut safety = false;
    if forced && !c.is_fresh.unwrap()[i] {
        v.push(Rule::FreshFloor);
    }
    if let Some(s) = p.max_topic_share {
        if win.iter().filter(|&&j| c.topics[j] == c.topics[i]).count() + 1 > cap_count(s, w) {
            v.push(Rule::MaxTopicShare);
        }
    }
    for cap in &p.category_caps {
        if cats[i] == cap.category
            && win.iter().filter(|&&j| cats[j] == cap.category).count() + 1
                > cap_count(cap.share, w)
        {
            if cap.safety {
                safety = true;
            } else {
                v.push(Rule::CategoryCaps);
            }
        }
    }
    if let Some(m) = p.max_per_creator {
        if win
            .iter()
            .filter(|&&j| c.creators[j] == c.creators[i])
            .count()
            + 1
            > m
        {
            v.push(Rule::MaxPerCreator);
        }
    }
    (v, safety)
}

/// The naive re-ranker: recount every rule from the placed list for every candidate and level.
fn naive(p: &Policy, c: &Candidates<'_>, k: usize) -> Vec<usize> {
    let n = c.scores.len();
    let w = p.window;
    let cats = c.categories.unwrap();
    let eligible: Vec<usize> = (0..n)
        .filter(|&i| !p.blocked_categories.contains(&cats[i]))
        .collect();
    let first_len = w.min(k).min(eligible.len());
    let target = p.fresh_floor.min(first_len);
    let mut out: Vec<usize> = Vec::new();
    for pos in 0..k {
        let win = &out[pos.saturating_sub(w - 1)..];
        let fresh_so_far = out.iter().filter(|&&j| c.is_fresh.unwrap()[j]).count();
        let forced =
            pos < first_len && fresh_so_far < target && target - fresh_so_far >= first_len - pos;
        let rules = |i: usize| naive_rules(p, c, cats, win, forced, i);
        let mut pick = None;
        'levels: for level in 0..=Rule::ORDER.len() {
            let relaxed = &Rule::ORDER[..level];
            let mut best: Option<usize> = None;
            for &i in &eligible {
                if out.contains(&i) {
                    continue;
                }
                let (v, safety) = rules(i);
                if safety || !v.iter().all(|r| relaxed.contains(r)) {
                    continue;
                }
                if best.is_none_or(|b| c.scores[i] > c.scores[b]) {
                    best = Some(i);
                }
            }
            if best.is_some() {
                pick = best;
                break 'levels;
            }
        }
        match pick {
            Some(i) => out.push(i),
            None => break,
        }
    }
    out
}

#[test]
fn matches_the_naive_reranker_and_every_window_is_audited() {
    let mut r = Lcg(42);
    // How often each rule relaxed, and how many feeds came up short: the generator must reach them.
    let mut seen = [0u32; 5];
    for trial in 0..400 {
        let n = 1 + (r.next() % 40) as usize;
        let k = 1 + (r.next() % 30) as usize;
        let data = Owned::random(&mut r, n);
        let c = data.cands();
        let p = random_policy(&mut r);
        let rr = Reranker::new(p.clone()).unwrap();
        let got = rr.rerank(&c, k).unwrap();
        assert_eq!(got.indices, naive(&p, &c, k), "trial {trial}: {p:?}");
        assert_eq!(
            got.relaxed.counts(),
            audit(&p, &c, &got.indices),
            "trial {trial}"
        );
        assert_eq!(got.shortfall, k - got.indices.len());
        for (s, c) in seen.iter_mut().zip(got.relaxed.counts()) {
            *s += (c > 0) as u32;
        }
        seen[4] += (got.shortfall > 0 && got.indices.len() < n) as u32;
        for div in [Diversity::Mmr, Diversity::Dpp] {
            let pd = Policy {
                diversity: div,
                ..p.clone()
            };
            let got = Reranker::new(pd.clone()).unwrap().rerank(&c, k).unwrap();
            assert_eq!(
                got.relaxed.counts(),
                audit(&pd, &c, &got.indices),
                "trial {trial} {div:?}"
            );
        }
    }
    assert!(seen.iter().all(|&s| s >= 10), "{seen:?}");
}

#[test]
fn without_caps_diversity_matches_the_standalone_functions() {
    let mut r = Lcg(3);
    let data = Owned::random(&mut r, 60);
    let c = data.cands();
    let mmr = Reranker::new(Policy {
        diversity: Diversity::Mmr,
        mmr_lambda: 0.3,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        mmr.rerank(&c, 10).unwrap().indices,
        mmr_greedy(&data.scores, &data.emb, data.dim, 10, 0.3).unwrap()
    );
    let dpp = Reranker::new(Policy {
        diversity: Diversity::Dpp,
        dpp_alpha: 0.7,
        ..Default::default()
    })
    .unwrap();
    let got = dpp.rerank(&c, 10).unwrap();
    let alone = dpp_greedy(&data.scores, &data.emb, data.dim, 10, 0.7, RERANK_DPP_EPS).unwrap();
    // 4-d embeddings: the DPP is exhausted after 4 picks, then the feed continues by score.
    assert_eq!(&got.indices[..alone.len()], &alone[..]);
    assert_eq!(got.diversity_fallback, Some(alone.len()));
    assert_eq!(got.indices.len(), 10);
}

#[test]
fn infeasible_topic_share_relaxes_and_reports() {
    // Everything is one topic: with share 0.4 of 5, only 2 per window can satisfy the rule.
    let n = 10;
    let scores: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let topics = vec![1u64; n];
    let creators: Vec<u64> = (0..n as u64).collect();
    let c = Candidates {
        scores: &scores,
        topics: &topics,
        creators: &creators,
        embeddings: None,
        categories: None,
        is_fresh: None,
    };
    let rr = Reranker::new(Policy {
        window: 5,
        max_topic_share: Some(0.4),
        ..Default::default()
    })
    .unwrap();
    let out = rr.rerank(&c, 5).unwrap();
    assert_eq!(out.indices, vec![9, 8, 7, 6, 5]);
    assert_eq!(out.relaxed.get(Rule::MaxTopicShare), 3);
    assert_eq!(
        out.relaxed.iter().collect::<Vec<_>>(),
        vec![(Rule::MaxTopicShare, 3)]
    );
}

#[test]
fn safety_caps_shorten_the_feed() {
    let scores = [5.0, 4.0, 3.0, 2.0];
    let cats = [9u64, 9, 9, 1];
    let ids = [1u64, 2, 3, 4];
    let c = Candidates {
        scores: &scores,
        topics: &ids,
        creators: &ids,
        embeddings: None,
        categories: Some(&cats),
        is_fresh: None,
    };
    let p = Policy {
        window: 10,
        category_caps: vec![CategoryCap {
            category: 9,
            share: 0.1,
            safety: true,
        }],
        blocked_categories: vec![1],
        ..Default::default()
    };
    let out = Reranker::new(p).unwrap().rerank(&c, 4).unwrap();
    assert_eq!(out.indices, vec![0]);
    assert_eq!(out.shortfall, 3);
    assert!(out.relaxed.is_empty());
}

#[test]
fn fresh_floor_is_met_late_in_the_first_window() {
    let scores = [9.0, 8.0, 7.0, 6.0, 1.0, 0.5];
    let ids = [1u64, 2, 3, 4, 5, 6];
    let fresh = [false, false, false, false, true, true];
    let c = Candidates {
        scores: &scores,
        topics: &ids,
        creators: &ids,
        embeddings: None,
        categories: None,
        is_fresh: Some(&fresh),
    };
    let p = Policy {
        window: 4,
        fresh_floor: 2,
        ..Default::default()
    };
    let out = Reranker::new(p).unwrap().rerank(&c, 6).unwrap();
    assert_eq!(out.indices, vec![0, 1, 4, 5, 2, 3]);
    assert!(out.relaxed.is_empty());
}

#[test]
fn bad_candidates_are_errors() {
    let rr = Reranker::new(Policy {
        diversity: Diversity::Dpp,
        ..Default::default()
    })
    .unwrap();
    let s = [1.0f32, 2.0];
    let ids = [1u64, 2];
    let ok = Candidates {
        scores: &s,
        topics: &ids,
        creators: &ids,
        embeddings: Some((&[1.0, 0.0, 0.0, 1.0], 2)),
        categories: None,
        is_fresh: None,
    };
    assert!(rr.rerank(&ok, 2).is_ok());
    assert!(rr.rerank(&ok, 0).is_err());
    let e = rr
        .rerank(
            &Candidates {
                embeddings: None,
                ..ok
            },
            2,
        )
        .unwrap_err();
    assert!(e.to_string().contains("embeddings"), "{e}");
    let e = rr
        .rerank(
            &Candidates {
                topics: &ids[..1],
                ..ok
            },
            2,
        )
        .unwrap_err();
    assert!(e.to_string().contains("topics has 1"), "{e}");
    let nan = [f32::NAN, 1.0];
    assert!(rr.rerank(&Candidates { scores: &nan, ..ok }, 2).is_err());
    let bad_emb = [f32::NAN, 0.0, 0.0, 1.0];
    let e = rr
        .rerank(
            &Candidates {
                embeddings: Some((&bad_emb, 2)),
                ..ok
            },
            2,
        )
        .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
}

#[test]
fn set_policy_swaps_and_rejects_bad_policies() {
    let rr = Reranker::new(Policy::default()).unwrap();
    assert!(rr
        .set_policy(Policy {
            window: 0,
            ..Default::default()
        })
        .is_err());
    assert_eq!(rr.policy().window, 20);
    rr.set_policy(Policy {
        window: 7,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(rr.policy().window, 7);
}

/// `cargo test --profile dev-opt -p fyp-core rerank_timing -- --ignored --nocapture`
#[test]
#[ignore]
fn rerank_timing() {
    super::lazy::FULL_SORT.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut r = Lcg(9);
    let (n, k, dim) = (1000, 50, 64);
    // Box-Muller normal scores, uniform-ish embeddings.
    let scores: Vec<f32> = (0..n)
        .map(|_| {
            let (u, v) = (r.unit().max(1e-7) as f64, r.unit() as f64);
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    let emb: Vec<f32> = (0..n * dim).map(|_| r.unit() - 0.5).collect();
    let topics: Vec<u64> = (0..n).map(|_| r.skewed(10)).collect();
    let creators: Vec<u64> = (0..n).map(|_| r.next() % 100).collect();
    let c = Candidates {
        scores: &scores,
        topics: &topics,
        creators: &creators,
        embeddings: Some((&emb, dim)),
        categories: None,
        is_fresh: None,
    };
    let only = std::env::var("RERANK_ONLY").unwrap_or_default();
    let time = |name: &str, f: &dyn Fn()| {
        if !name.starts_with(only.as_str()) {
            return;
        }
        let mut best = f64::INFINITY;
        let reps: usize = std::env::var("RERANK_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(200);
        for _ in 0..reps {
            let t = std::time::Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        eprintln!("{name}: {:.1} us", best * 1e6);
    };
    time("dpp_greedy", &|| {
        dpp_greedy(&scores, &emb, dim, k, 1.0, 1e-10).unwrap();
    });
    for kk in [1, 2, 10, 25] {
        time(&format!("dpp_greedy k={kk}"), &|| {
            dpp_greedy(&scores, &emb, dim, kk, 1.0, 1e-10).unwrap();
        });
    }
    let flat: Vec<f32> = (0..n).map(|_| r.unit()).collect();
    time("dpp_flat", &|| {
        dpp_greedy(&flat, &emb, dim, k, 1.0, 1e-10).unwrap();
    });
    time("mmr_greedy", &|| {
        mmr_greedy(&scores, &emb, dim, k, 0.5).unwrap();
    });
    for div in [Diversity::None, Diversity::Dpp] {
        let rr = Reranker::new(Policy {
            max_topic_share: Some(0.4),
            max_per_creator: Some(2),
            diversity: div,
            ..Default::default()
        })
        .unwrap();
        time(&format!("rerank {div:?}"), &|| {
            rr.rerank(&c, k).unwrap();
        });
    }
}

#[test]
fn pinned_items_count_in_the_windows() {
    use super::{Candidates, Pinned, Policy, Reranker};
    let policy = Policy {
        window: 5,
        max_topic_share: Some(0.4),
        ..Policy::default()
    };
    let r = Reranker::new(policy).unwrap();
    // candidates cycle through topics 0, 1, 2, best scores first
    let n = 12;
    let scores: Vec<f32> = (0..n).map(|i| (n - i) as f32).collect();
    let topics: Vec<u64> = (0..n).map(|i| (i % 3) as u64).collect();
    let creators: Vec<u64> = (0..n as u64).collect();
    let c = Candidates {
        scores: &scores,
        topics: &topics,
        creators: &creators,
        embeddings: None,
        categories: None,
        is_fresh: None,
    };
    let pinned = [
        Pinned {
            position: 0,
            topic: 7,
            creator: 100,
            category: 0,
            fresh: false,
        },
        Pinned {
            position: 3,
            topic: 0,
            creator: 101,
            category: 0,
            fresh: false,
        },
    ];
    let mut exclude = vec![false; n];
    exclude[0] = true;
    let out = r.rerank_pinned(&c, 8, &pinned, Some(&exclude)).unwrap();
    assert_eq!(out.indices.len(), 6);
    assert!(!out.indices.contains(&0));
    // rebuild the served feed and check every window of 5 holds at most 2 of a topic
    let mut feed = vec![];
    let mut it = out.indices.iter();
    for pos in 0..8 {
        match pinned.iter().find(|p| p.position == pos) {
            Some(p) => feed.push(p.topic),
            None => feed.push(topics[*it.next().unwrap()]),
        }
    }
    for w in feed.windows(5) {
        for t in [0u64, 1, 2, 7] {
            assert!(w.iter().filter(|&&x| x == t).count() <= 2, "{feed:?}");
        }
    }
    assert!(out.relaxed.is_empty());
    assert!(r
        .rerank_pinned(&c, 8, &[pinned[1], pinned[0]], None)
        .is_err());
}
