//! The re-ranker: after the ranker, before the mixer (DESIGN.md §1). Fills the feed slot by
//! slot with the best candidate the policy admits (by score, MMR or DPP gain), relaxing rules in
//! the fixed order of [`Rule::ORDER`] only when no candidate satisfies them, and never relaxing
//! safety rules (the feed gets shorter instead). Deterministic: ties go to the lower index.

use super::caps::{level, Item, Window, LEVELS, NO_CAP};
use super::policy::{cap_count, Diversity, Policy, Rule};
use super::scratch::{with_scratch, Scratch};
use crate::{invalid, Result};
use parking_lot::RwLock;
use std::sync::Arc;

/// The DPP stopping threshold inside the re-ranker (relative, as in [`super::dpp_greedy`]). Once
/// the best admissible gain falls below it the embeddings cannot add diversity any more and the
/// remaining slots are filled by score.
pub const RERANK_DPP_EPS: f64 = 1e-10;

/// One request's candidates: parallel arrays of length n. Ids are opaque u64s.
#[derive(Clone, Copy, Debug)]
pub struct Candidates<'a> {
    pub scores: &'a [f32],
    pub topics: &'a [u64],
    pub creators: &'a [u64],
    /// `(row-major n x dim values, dim)`; required when the policy's diversity is MMR or DPP.
    pub embeddings: Option<(&'a [f32], usize)>,
    /// Required when the policy has blocked categories or category caps.
    pub categories: Option<&'a [u64]>,
    /// Required when the policy has a fresh floor.
    pub is_fresh: Option<&'a [bool]>,
}

/// How many times each relaxable rule gave way. For the caps: the number of slots whose item
/// makes the window ending there exceed the cap. For the fresh floor: how many fresh items the
/// first window is short of `min(fresh_floor, min(window, len))`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relaxed([u32; 4]);

impl Relaxed {
    pub fn get(&self, rule: Rule) -> u32 {
        self.0[rule as usize]
    }

    /// The rules that were relaxed, in relaxation order, with their counts.
    pub fn iter(&self) -> impl Iterator<Item = (Rule, u32)> + '_ {
        Rule::ORDER
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, c)| c > 0)
    }

    /// Counts of every rule, indexed by `Rule as usize` (relaxation order).
    pub fn counts(&self) -> [u32; 4] {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&c| c == 0)
    }
}

/// The result of one re-rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerankOutcome {
    /// Indices into the candidates, in feed order, no duplicates, length <= k.
    pub indices: Vec<usize>,
    pub relaxed: Relaxed,
    /// `k - indices.len()`: slots left empty (candidates ran out, or only safety-capped ones were
    /// left).
    pub shortfall: usize,
    /// With DPP: the first slot filled by score because no admissible candidate could add
    /// diversity any more (its gain fell below [`RERANK_DPP_EPS`]).
    pub diversity_fallback: Option<usize>,
}

/// A validated policy with its lookup tables.
#[derive(Debug)]
struct Compiled {
    policy: Policy,
    topic_cap: u32,
    creator_cap: u32,
    /// Sorted blocked categories.
    blocked: Vec<u64>,
    /// Capped categories, sorted, and their (count per window, safety) by the same index.
    cap_keys: Vec<u64>,
    cap_limits: Vec<(u32, bool)>,
}

impl Compiled {
    fn new(policy: Policy) -> Result<Self> {
        policy.validate()?;
        let w = policy.window;
        let sat = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        let topic_cap = policy
            .max_topic_share
            .map_or(u32::MAX, |s| sat(cap_count(s, w)));
        let creator_cap = policy.max_per_creator.map_or(u32::MAX, sat);
        let mut blocked = policy.blocked_categories.clone();
        blocked.sort_unstable();
        blocked.dedup();
        let mut caps = policy.category_caps.clone();
        caps.sort_by_key(|c| c.category);
        Ok(Compiled {
            topic_cap,
            creator_cap,
            blocked,
            cap_keys: caps.iter().map(|c| c.category).collect(),
            cap_limits: caps
                .iter()
                .map(|c| (sat(cap_count(c.share, w)), c.safety))
                .collect(),
            policy,
        })
    }
}

/// The policy re-ranker. `Send + Sync`: share one between threads; [`Reranker::set_policy`]
/// swaps the policy atomically (a running request finishes with the policy it started with).
#[derive(Debug)]
pub struct Reranker {
    current: RwLock<Arc<Compiled>>,
}

impl Reranker {
    pub fn new(policy: Policy) -> Result<Self> {
        Ok(Reranker {
            current: RwLock::new(Arc::new(Compiled::new(policy)?)),
        })
    }

    /// A copy of the current policy.
    pub fn policy(&self) -> Policy {
        self.current.read().policy.clone()
    }

    /// Validates `policy`, then makes it current for every later request.
    pub fn set_policy(&self, policy: Policy) -> Result<()> {
        let compiled = Arc::new(Compiled::new(policy)?);
        *self.current.write() = compiled;
        Ok(())
    }

    /// Re-ranks `c` into at most `k` slots under the current policy.
    pub fn rerank(&self, c: &Candidates<'_>, k: usize) -> Result<RerankOutcome> {
        let pol = self.current.read().clone();
        check(&pol.policy, c, k)?;
        with_scratch(|sc| run(&pol, c, k, sc))
    }
}

fn check(p: &Policy, c: &Candidates<'_>, k: usize) -> Result<()> {
    let n = c.scores.len();
    if k == 0 {
        return Err(invalid!("k must be >= 1, got 0"));
    }
    if n > u32::MAX as usize {
        return Err(invalid!(
            "at most {} candidates per request, got {n}",
            u32::MAX
        ));
    }
    let same = |name: &str, len: usize| {
        if len == n {
            Ok(())
        } else {
            Err(invalid!(
                "{name} has {len} entries, scores has {n}: every array must have one entry per candidate"
            ))
        }
    };
    same("topics", c.topics.len())?;
    same("creators", c.creators.len())?;
    if let Some(cats) = c.categories {
        same("categories", cats.len())?;
    } else if p.needs_categories() {
        return Err(invalid!(
            "the policy has blocked_categories or category_caps, so categories must be given"
        ));
    }
    if let Some(f) = c.is_fresh {
        same("is_fresh", f.len())?;
    } else if p.fresh_floor > 0 {
        return Err(invalid!(
            "the policy has fresh_floor = {}, so is_fresh must be given",
            p.fresh_floor
        ));
    }
    match c.embeddings {
        Some((e, dim)) => {
            if dim == 0 {
                return Err(invalid!("embeddings must have at least one column"));
            }
            same("embeddings", e.len() / dim)?;
            if e.len() % dim != 0 {
                return Err(invalid!("embeddings length is not a multiple of dim {dim}"));
            }
        }
        None if p.diversity != Diversity::None => {
            return Err(invalid!(
                "the policy's diversity is {:?}, which needs embeddings (one row per candidate)",
                p.diversity.as_str()
            ));
        }
        None => {}
    }
    if let Some(i) = c.scores.iter().position(|s| !s.is_finite()) {
        return Err(invalid!(
            "scores[{i}] is {}: scores must be finite",
            c.scores[i]
        ));
    }
    Ok(())
}

/// Sort key: descending score, then ascending index (-0.0 and 0.0 tie).
#[inline]
fn score_key(s: f32, i: usize) -> u64 {
    let b = (s + 0.0).to_bits();
    let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
    ((!asc as u64) << 32) | i as u64
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Score,
    Mmr,
    Dpp,
}

/// One slot's choice: the candidate and the rules it breaks.
type Pick = Option<(usize, u8)>;

fn run(pol: &Compiled, c: &Candidates<'_>, k: usize, sc: &mut Scratch) -> Result<RerankOutcome> {
    let p = &pol.policy;
    let n = c.scores.len();
    let w = p.window;
    let Scratch {
        dpp,
        mmr,
        used,
        topics,
        creators,
        items,
        window,
        order,
        eligible,
        slots,
    } = sc;

    topics.reset(n);
    creators.reset(n);
    items.clear();
    eligible.clear();
    for i in 0..n {
        let mut cap = NO_CAP;
        if let Some(cats) = c.categories {
            let cat = cats[i];
            if pol.blocked.binary_search(&cat).is_ok() {
                continue;
            }
            if let Ok(j) = pol.cap_keys.binary_search(&cat) {
                cap = j as u32;
            }
        }
        eligible.push(i as u32);
        items.push(Item {
            topic: topics.intern(c.topics[i]),
            creator: creators.intern(c.creators[i]),
            cap,
            fresh: c.is_fresh.is_some_and(|f| f[i]),
        });
    }
    // `items` is indexed by position in `eligible`; `used` likewise.
    window.reset(
        w,
        pol.topic_cap,
        pol.creator_cap,
        topics.len(),
        creators.len(),
        pol.cap_keys.len(),
    );
    used.clear();
    used.resize(eligible.len(), false);

    let mut mode = match p.diversity {
        Diversity::None => Mode::Score,
        Diversity::Mmr => Mode::Mmr,
        Diversity::Dpp => Mode::Dpp,
    };
    let mut diversity_fallback = None;
    if let Some((e, dim)) = c.embeddings {
        match mode {
            Mode::Dpp => dpp.reset(c.scores, e, dim, p.dpp_alpha)?,
            Mode::Mmr => mmr.reset(n, e, dim, p.mmr_lambda)?,
            Mode::Score => {}
        }
    }
    let mut sorted = false;
    if mode == Mode::Score {
        sort_by_score(order, eligible, c.scores);
        sorted = true;
    }

    let first_len = w.min(k).min(eligible.len());
    let fresh_target = p.fresh_floor.min(first_len);
    let mut fresh_in_first = 0usize;
    let mut placed: Vec<usize> = Vec::with_capacity(k.min(eligible.len()));
    // The same picks as positions in `eligible` (what `items` and `used` are indexed by).
    slots.clear();
    let mut relaxed = [0u32; 4];
    let mut head = 0usize;

    for pos in 0..k {
        window.slide(slots, items, pos);
        // The fresh floor is met as late as possible in the first window, so that it displaces
        // as little relevance as it can: slot `pos` is forced once the slots left equal the need.
        let forced = pos < first_len
            && fresh_in_first < fresh_target
            && fresh_target - fresh_in_first >= first_len - pos;
        let ctx = Ctx {
            window,
            items,
            used,
            limits: &pol.cap_limits,
            forced,
        };
        let mut pick = match mode {
            Mode::Score => ctx.by_score(order, &mut head),
            Mode::Mmr => ctx.by_objective(|j| {
                mmr.objective(eligible[j] as usize, c.scores[eligible[j] as usize])
            }),
            Mode::Dpp => ctx.by_objective(|j| dpp.gain(eligible[j] as usize)),
        };
        if mode == Mode::Dpp {
            if let Some((j, _)) = pick {
                if dpp.gain(eligible[j] as usize) < RERANK_DPP_EPS {
                    mode = Mode::Score;
                    diversity_fallback = Some(pos);
                    if !sorted {
                        sort_by_score(order, eligible, c.scores);
                        sorted = true;
                    }
                    pick = ctx.by_score(order, &mut head);
                }
            }
        }
        let Some((j, mask)) = pick else { break };
        used[j] = true;
        let it = items[j];
        window.add(it);
        slots.push(j);
        let idx = eligible[j] as usize;
        placed.push(idx);
        for r in [Rule::MaxTopicShare, Rule::CategoryCaps, Rule::MaxPerCreator] {
            if mask & r.bit() != 0 {
                relaxed[r as usize] += 1;
            }
        }
        if pos < first_len && it.fresh {
            fresh_in_first += 1;
        }
        let more = pos + 1 < k;
        match mode {
            Mode::Dpp => dpp.select(idx, more),
            Mode::Mmr => mmr.select(idx, more),
            Mode::Score => {}
        }
    }

    let first = w.min(placed.len());
    let target = p.fresh_floor.min(first);
    let fresh_shown = slots[..first].iter().filter(|&&j| items[j].fresh).count();
    relaxed[Rule::FreshFloor as usize] = target.saturating_sub(fresh_shown) as u32;
    Ok(RerankOutcome {
        shortfall: k - placed.len(),
        indices: placed,
        relaxed: Relaxed(relaxed),
        diversity_fallback,
    })
}

fn sort_by_score(order: &mut Vec<u64>, eligible: &[u32], scores: &[f32]) {
    order.clear();
    order.extend(
        eligible
            .iter()
            .enumerate()
            .map(|(j, &i)| score_key(scores[i as usize], j)),
    );
    order.sort_unstable();
}

/// What a slot's scan needs.
struct Ctx<'a> {
    window: &'a Window,
    items: &'a [Item],
    used: &'a [bool],
    limits: &'a [(u32, bool)],
    forced: bool,
}

impl Ctx<'_> {
    #[inline]
    fn mask(&self, j: usize) -> u8 {
        let it = self.items[j];
        let mut m = self.window.violations(it, self.limits);
        if self.forced && !it.fresh {
            m |= Rule::FreshFloor.bit();
        }
        m
    }

    /// The best candidate at the lowest relaxation level that has one, by objective (ties:
    /// the lower index, since the scan ascends).
    fn by_objective(&self, objective: impl Fn(usize) -> f64) -> Pick {
        let mut best: [Option<(usize, f64, u8)>; LEVELS] = [None; LEVELS];
        let mut top = LEVELS; // lowest level seen; higher levels are irrelevant from then on
        for j in 0..self.items.len() {
            if self.used[j] {
                continue;
            }
            let m = self.mask(j);
            let Some(l) = level(m) else { continue };
            if l > top {
                continue;
            }
            let v = objective(j);
            if best[l].is_none_or_lower(v) {
                best[l] = Some((j, v, m));
                top = l;
            }
        }
        best.iter().flatten().next().map(|&(j, _, m)| (j, m))
    }

    /// The same with score order: the first admissible candidate in the sorted order wins its
    /// level, so the scan stops at the first one that breaks nothing.
    fn by_score(&self, order: &[u64], head: &mut usize) -> Pick {
        while *head < order.len() && self.used[(order[*head] & 0xffff_ffff) as usize] {
            *head += 1;
        }
        let mut best: [Pick; LEVELS] = [None; LEVELS];
        for &key in &order[*head..] {
            let j = (key & 0xffff_ffff) as usize;
            if self.used[j] {
                continue;
            }
            let m = self.mask(j);
            let Some(l) = level(m) else { continue };
            if best[l].is_none() {
                best[l] = Some((j, m));
                if l == 0 {
                    break;
                }
            }
        }
        best.iter().flatten().next().copied()
    }
}

trait Incumbent3 {
    fn is_none_or_lower(&self, v: f64) -> bool;
}

impl Incumbent3 for Option<(usize, f64, u8)> {
    #[inline]
    fn is_none_or_lower(&self, v: f64) -> bool {
        match self {
            None => true,
            Some((_, b, _)) => v > *b,
        }
    }
}
