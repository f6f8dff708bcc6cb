//! The re-ranker: after the ranker, before the mixer (DESIGN.md §1). Fills the feed slot by
//! slot with the best candidate the policy admits (by score, MMR or DPP gain), relaxing rules in
//! the fixed order of [`Rule::ORDER`] only when no candidate satisfies them, and never relaxing
//! safety rules (the feed gets shorter instead). Deterministic: ties go to the lower index.

use super::caps::{level, Item, Window, NO_CAP};
use super::dpp::{DppGain, DppState};
use super::lazy::{Picked, Queue, ScoreGain};
use super::mmr::{MmrGain, MmrState};
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

/// An item the caller placed itself at `position` (e.g. an exploration slot): not a candidate,
/// but it counts in the windows it falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    pub position: usize,
    pub topic: u64,
    pub creator: u64,
    pub category: u64,
    pub fresh: bool,
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
pub(super) struct Compiled {
    pub(super) policy: Policy,
    pub(super) topic_cap: u32,
    pub(super) creator_cap: u32,
    /// Sorted blocked categories.
    pub(super) blocked: Vec<u64>,
    /// Capped categories, sorted, and their (count per window, safety) by the same index.
    pub(super) cap_keys: Vec<u64>,
    pub(super) cap_limits: Vec<(u32, bool)>,
}

impl Compiled {
    pub(super) fn new(policy: Policy) -> Result<Self> {
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

    /// The current compiled policy (a snapshot: a later `set_policy` does not change it).
    pub(super) fn compiled(&self) -> Arc<Compiled> {
        self.current.read().clone()
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
        self.rerank_pinned(c, k, &[], None)
    }

    /// Re-ranks around items the caller has already placed (the mixer's exploration slots):
    /// each [`Pinned`] item occupies its position and counts in every window it falls in, so
    /// the feed as served meets the caps; the candidates fill the other slots. Candidates with
    /// `exclude[i]` set are never picked. `indices` lists only candidates (feed order, pinned
    /// positions skipped); `shortfall` counts every unfilled slot up to `k`.
    pub fn rerank_pinned(
        &self,
        c: &Candidates<'_>,
        k: usize,
        pinned: &[Pinned],
        exclude: Option<&[bool]>,
    ) -> Result<RerankOutcome> {
        let pol = self.current.read().clone();
        check(&pol.policy, c, k)?;
        if let Some(e) = exclude {
            if e.len() != c.scores.len() {
                return Err(invalid!(
                    "exclude has {} entries, scores has {}",
                    e.len(),
                    c.scores.len()
                ));
            }
        }
        if pinned.windows(2).any(|w| w[0].position >= w[1].position) {
            return Err(invalid!(
                "pinned items must have strictly increasing positions"
            ));
        }
        with_scratch(|sc| run(&pol, c, k, pinned, exclude, sc))
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Score,
    Mmr,
    Dpp,
}

/// Fills up to `k` slots: pinned items at their positions, candidates elsewhere, each the best
/// admissible one under the current objective.
fn run(
    pol: &Compiled,
    c: &Candidates<'_>,
    k: usize,
    pinned: &[Pinned],
    exclude: Option<&[bool]>,
    sc: &mut Scratch,
) -> Result<RerankOutcome> {
    let p = &pol.policy;
    let n = c.scores.len();
    let w = p.window;
    load_items(pol, c, pinned, exclude, sc);
    let n_pinned = pinned.iter().filter(|p| p.position < k).count();
    let kcap = k.min(sc.eligible.len() + n_pinned);
    let mut mode = match p.diversity {
        Diversity::None => Mode::Score,
        Diversity::Mmr => Mode::Mmr,
        Diversity::Dpp => Mode::Dpp,
    };
    let emb = c.embeddings.map_or((&[][..], 0), |e| e);
    build_queue(p, c, mode, emb, kcap, sc)?;
    let Scratch {
        dpp,
        mmr,
        items,
        window,
        queue,
        ..
    } = sc;

    let first_len = w.min(kcap);
    let fresh_target = p.fresh_floor.min(first_len);
    let mut fresh_in_first = 0usize;
    let mut placed: Vec<usize> = Vec::with_capacity(kcap);
    let mut relaxed = [0u32; 4];
    let mut diversity_fallback = None;
    let mut pins = Pins::new(pinned);
    let pinned_items = &items[n..];
    for pos in 0..k {
        window.slide(&placed, items, pos);
        pins.enter(window, pinned_items, pos, w);
        if let Some(pi) = pins.take(window, pinned_items, pos) {
            let it = pinned_items[pi];
            window.add(it);
            placed.push(n + pi);
            if pos < first_len && it.fresh {
                fresh_in_first += 1;
            }
            continue;
        }
        // The fresh floor is met as late as possible in the first window, so that it displaces
        // as little relevance as it can: slot `pos` is forced once the slots left equal the need.
        let forced = pos < first_len
            && fresh_in_first < fresh_target
            && fresh_target - fresh_in_first >= first_len - pos;
        let win = &*window;
        let mask = |i: usize| violations(win, items[i], &pol.cap_limits, forced);
        let lvl = |i: usize| level(mask(i));
        let mut pick = pick_by_mode(mode, queue, dpp, mmr, c.scores, emb.0, lvl);
        if let (Mode::Dpp, Some(pk)) = (mode, pick) {
            if pk.value < RERANK_DPP_EPS {
                // No admissible candidate adds diversity any more: the rest goes by score.
                mode = Mode::Score;
                diversity_fallback = Some(pos);
                pick = fall_back_to_score(queue, c.scores, pk.i, k - pos, lvl);
            }
        }
        let Some(pk) = pick else { break };
        let j = pk.i;
        count_relaxed(&mut relaxed, mask(j));
        let it = items[j];
        window.add(it);
        placed.push(j);
        if pos < first_len && it.fresh {
            fresh_in_first += 1;
        }
    }
    Ok(outcome(p, n, k, placed, items, relaxed, diversity_fallback))
}

/// Stage 1: interns every candidate and pinned item (pinned items become items `n..`, so that
/// the windows count them like placed candidates), lists the eligible candidates (not blocked,
/// not excluded) and resets the window counts to the interned sizes.
fn load_items(
    pol: &Compiled,
    c: &Candidates<'_>,
    pinned: &[Pinned],
    exclude: Option<&[bool]>,
    sc: &mut Scratch,
) {
    let n = c.scores.len();
    let Scratch {
        topics,
        creators,
        items,
        window,
        eligible,
        ..
    } = sc;
    topics.reset(n + pinned.len());
    creators.reset(n + pinned.len());
    items.clear();
    eligible.clear();
    for i in 0..n {
        let mut cap = NO_CAP;
        let mut blocked = false;
        if let Some(cats) = c.categories {
            let cat = cats[i];
            blocked = pol.blocked.binary_search(&cat).is_ok();
            if let Ok(j) = pol.cap_keys.binary_search(&cat) {
                cap = j as u32;
            }
        }
        if !blocked && !exclude.is_some_and(|e| e[i]) {
            eligible.push(i as u32);
        }
        items.push(Item {
            topic: topics.intern(c.topics[i]),
            creator: creators.intern(c.creators[i]),
            cap,
            fresh: c.is_fresh.is_some_and(|f| f[i]),
        });
    }
    for p in pinned {
        let cap = pol
            .cap_keys
            .binary_search(&p.category)
            .map_or(NO_CAP, |j| j as u32);
        items.push(Item {
            topic: topics.intern(p.topic),
            creator: creators.intern(p.creator),
            cap,
            fresh: p.fresh,
        });
    }
    window.reset(
        pol.policy.window,
        pol.topic_cap,
        pol.creator_cap,
        topics.len(),
        creators.len(),
        pol.cap_keys.len(),
    );
}

/// Stage 2: resets the diversity state of `mode` and fills the queue with the eligible
/// candidates under that objective's initial bounds.
fn build_queue(
    p: &Policy,
    c: &Candidates<'_>,
    mode: Mode,
    emb: (&[f32], usize),
    kcap: usize,
    sc: &mut Scratch,
) -> Result<()> {
    let n = c.scores.len();
    let Scratch {
        dpp,
        mmr,
        queue,
        eligible,
        ..
    } = sc;
    match mode {
        Mode::Dpp => {
            dpp.reset(c.scores, emb.0, emb.1, p.dpp_alpha, kcap)?;
            let st = &*dpp;
            queue.build(
                c.scores,
                eligible.iter().map(|&i| i as usize),
                |i| st.bound(i),
                kcap,
            );
        }
        Mode::Mmr => {
            mmr.reset(n, emb.0, emb.1, p.mmr_lambda)?;
            let st = &*mmr;
            queue.build(
                c.scores,
                eligible.iter().map(|&i| i as usize),
                |i| st.initial(c.scores[i]),
                kcap,
            );
        }
        Mode::Score => {
            queue.build(
                c.scores,
                eligible.iter().map(|&i| i as usize),
                |i| c.scores[i] as f64,
                kcap,
            );
        }
    }
    Ok(())
}

/// The pinned items' progress through the slots. Pinned items within the next `w - 1` slots sit
/// in the window's look-ahead counts until their slot is reached, so candidates placed before
/// them leave room for them.
struct Pins<'p> {
    pinned: &'p [Pinned],
    /// The next pinned item to be placed.
    next: usize,
    /// The next pinned item to enter the look-ahead.
    entering: usize,
    in_ahead: Vec<bool>,
}

impl<'p> Pins<'p> {
    /// No pinned item placed or in the look-ahead yet.
    fn new(pinned: &'p [Pinned]) -> Self {
        Pins {
            pinned,
            next: 0,
            entering: 0,
            in_ahead: vec![false; pinned.len()],
        }
    }

    /// Adds the pinned items that fall within the window starting at `pos` (but after it) to the
    /// look-ahead counts.
    #[inline]
    fn enter(&mut self, window: &mut Window, pinned_items: &[Item], pos: usize, w: usize) {
        while self.entering < self.pinned.len() && self.pinned[self.entering].position < pos + w {
            if self.pinned[self.entering].position > pos {
                window.ahead(pinned_items[self.entering], true);
                self.in_ahead[self.entering] = true;
            }
            self.entering += 1;
        }
    }

    /// The pinned item at slot `pos` (its index in `pinned`), if any, taken out of the look-ahead
    /// counts (the caller adds it to the window).
    #[inline]
    fn take(&mut self, window: &mut Window, pinned_items: &[Item], pos: usize) -> Option<usize> {
        let pi = self.next;
        if pi >= self.pinned.len() || self.pinned[pi].position != pos {
            return None;
        }
        self.next += 1;
        if self.in_ahead[pi] {
            window.ahead(pinned_items[pi], false);
        }
        Some(pi)
    }
}

/// The rules candidate `it` would break in the current window, plus the fresh floor when the
/// slot is `forced` to a fresh item and `it` is not fresh.
#[inline]
fn violations(win: &Window, it: Item, cap_limits: &[(u32, bool)], forced: bool) -> u8 {
    let mut m = win.violations(it, cap_limits);
    if forced && !it.fresh {
        m |= Rule::FreshFloor.bit();
    }
    m
}

/// Picks the best admissible candidate under `mode`'s objective.
#[inline]
fn pick_by_mode(
    mode: Mode,
    queue: &mut Queue,
    dpp: &mut DppState,
    mmr: &mut MmrState,
    scores: &[f32],
    emb: &[f32],
    lvl: impl Fn(usize) -> Option<usize>,
) -> Option<Picked> {
    match mode {
        Mode::Score => queue.pick(&mut ScoreGain(scores), lvl),
        Mode::Mmr => queue.pick(
            &mut MmrGain {
                state: mmr,
                emb,
                scores,
            },
            lvl,
        ),
        Mode::Dpp => queue.pick(&mut DppGain { state: dpp, emb }, lvl),
    }
}

/// The DPP fallback: re-queues the remaining candidates (and the rejected pick `i`) by score and
/// picks the best admissible one; `hint` is the number of slots left.
fn fall_back_to_score(
    queue: &mut Queue,
    scores: &[f32],
    i: usize,
    hint: usize,
    lvl: impl Fn(usize) -> Option<usize>,
) -> Option<Picked> {
    let rest: Vec<usize> = queue.indices().chain([i]).collect();
    queue.build(scores, rest.into_iter(), |i| scores[i] as f64, hint);
    queue.pick(&mut ScoreGain(scores), lvl)
}

/// Counts the relaxable window caps that the mask `m` of a placed candidate breaks.
#[inline]
fn count_relaxed(relaxed: &mut [u32; 4], m: u8) {
    for r in [Rule::MaxTopicShare, Rule::CategoryCaps, Rule::MaxPerCreator] {
        if m & r.bit() != 0 {
            relaxed[r as usize] += 1;
        }
    }
}

/// Final stage: counts the fresh-floor shortfall of the first window, drops the pinned items
/// from the placements and assembles the outcome.
fn outcome(
    p: &Policy,
    n: usize,
    k: usize,
    mut placed: Vec<usize>,
    items: &[Item],
    mut relaxed: [u32; 4],
    diversity_fallback: Option<usize>,
) -> RerankOutcome {
    let first = p.window.min(placed.len());
    let target = p.fresh_floor.min(first);
    let fresh_shown = placed[..first].iter().filter(|&&j| items[j].fresh).count();
    relaxed[Rule::FreshFloor as usize] = target.saturating_sub(fresh_shown) as u32;
    let shortfall = k - placed.len();
    placed.retain(|&j| j < n);
    RerankOutcome {
        shortfall,
        indices: placed,
        relaxed: Relaxed(relaxed),
        diversity_fallback,
    }
}
