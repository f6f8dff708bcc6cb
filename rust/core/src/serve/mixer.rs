//! The mixer: per slot, the TrafficSplit decides exploration first; an exploration slot shows a
//! uniformly random eligible item (chosen by a hash-seeded draw, so it is reproducible) with its
//! propensity; ranked and fresh slots follow the re-ranked order.

use super::idhash::{splitmix64, IdSet};
use super::store::Items;
use crate::split::{Keys, TrafficSplit};
use crate::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Ranked,
    Exploration,
    Fresh,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Ranked => "ranked",
            Source::Exploration => "exploration",
            Source::Fresh => "fresh",
        }
    }
}

/// One entry of the re-ranked list handed to the mixer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedItem {
    pub item_id: u64,
    /// Index into the request's candidate arrays (for its frozen predictions).
    pub candidate: usize,
    pub fresh: bool,
}

/// One slot of the response, before predictions are attached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedSlot {
    pub item_id: u64,
    pub position: usize,
    pub source: Source,
    /// Probability that the logging policy showed this item in this slot given the slot's
    /// source: 1 for ranked/fresh slots (deterministic order), 1/|eligible| for exploration.
    pub propensity: f64,
    /// Candidate index for ranked/fresh slots; None for exploration items.
    pub candidate: Option<usize>,
}

/// Draws one exploration item uniformly from the live items whose category is not blocked and
/// that are not already in the response, by rejection sampling over the dense item slots
/// (expected tries = slots / eligible). Returns (slot, propensity = 1/|eligible|).
pub fn draw_exploration(
    items: &Items,
    seed: u64,
    blocked_categories: &[u32],
    chosen: &IdSet,
    max_tries: usize,
) -> Option<(usize, f64)> {
    let blocked: usize = blocked_categories
        .iter()
        .map(|&c| items.live_in_category(c))
        .sum();
    let already = chosen.len();
    let eligible = items
        .n_live()
        .saturating_sub(blocked)
        .saturating_sub(already);
    if eligible == 0 || items.slots() == 0 {
        return None;
    }
    let mut state = seed;
    for _ in 0..max_tries {
        let slot = (splitmix64(&mut state) % items.slots() as u64) as usize;
        if items.is_live(slot)
            && !blocked_categories.contains(&items.category(slot))
            && !chosen.contains(&items.id(slot))
        {
            return Some((slot, 1.0 / eligible as f64));
        }
    }
    None
}

/// Mixes `n` slots: exploration slots (per `split`) get `draw(seed, chosen)`; the others take
/// the next ranked item not already shown. The feed is shorter than `n` only when both run dry.
pub fn mix(
    split: &TrafficSplit,
    user_token: &str,
    request_id: &str,
    n: usize,
    ranked: &[RankedItem],
    mut draw: impl FnMut(u64, &IdSet) -> Option<(u64, f64)>,
) -> Result<Vec<MixedSlot>> {
    let slots: Vec<i64> = (0..n as i64).collect();
    let explore = split.assign_batch(Keys::One(user_token), Keys::One(request_id), &slots)?;
    let mut chosen = IdSet::default();
    let mut out = Vec::with_capacity(n);
    let mut next = 0usize;
    for (slot, &is_explore) in explore.iter().enumerate() {
        let position = out.len();
        if is_explore {
            let seed = split.exploration_seed(user_token, request_id, slot as i64);
            if let Some((item_id, propensity)) = draw(seed, &chosen) {
                chosen.insert(item_id);
                out.push(MixedSlot {
                    item_id,
                    position,
                    source: Source::Exploration,
                    propensity,
                    candidate: None,
                });
                continue;
            }
        }
        while next < ranked.len() && chosen.contains(&ranked[next].item_id) {
            next += 1;
        }
        if let Some(r) = ranked.get(next) {
            next += 1;
            chosen.insert(r.item_id);
            let source = if r.fresh {
                Source::Fresh
            } else {
                Source::Ranked
            };
            out.push(MixedSlot {
                item_id: r.item_id,
                position,
                source,
                propensity: 1.0,
                candidate: Some(r.candidate),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::store::{ItemInfo, ItemStore};
    use super::*;

    #[test]
    fn exploration_slots_follow_the_split_and_never_duplicate() {
        let split = TrafficSplit::new(0.3, "fyp", vec![]).unwrap();
        let ranked: Vec<RankedItem> = (0..40)
            .map(|i| RankedItem {
                item_id: i,
                candidate: i as usize,
                fresh: i % 5 == 0,
            })
            .collect();
        let mut k = 1000u64;
        let out = mix(&split, "u", "r", 20, &ranked, |_, _| {
            k += 1;
            Some((k, 0.01))
        })
        .unwrap();
        assert_eq!(out.len(), 20);
        for s in &out {
            let want = split.is_exploration("u", "r", s.position as i64);
            assert_eq!(s.source == Source::Exploration, want);
        }
        let mut ids: Vec<u64> = out.iter().map(|s| s.item_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        // ranked slots keep the re-ranked order
        let r: Vec<u64> = out
            .iter()
            .filter(|s| s.source != Source::Exploration)
            .map(|s| s.item_id)
            .collect();
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        assert!(out.iter().any(|s| s.source == Source::Fresh));
    }

    #[test]
    fn draw_is_uniform_over_eligible() {
        let store = ItemStore::new(1, [1.0, 2.0]).unwrap();
        let infos: Vec<ItemInfo> = (0..10)
            .map(|i| ItemInfo {
                id: i,
                topic: 0,
                creator: 0,
                category: u32::from(i < 2),
                upload_ts: 0.0,
            })
            .collect();
        store.upsert(&infos, &[0.0; 10]).unwrap();
        store.remove(&[9]);
        let items = store.read();
        let mut counts = [0usize; 10];
        let chosen = IdSet::default();
        for seed in 0..70_000u64 {
            let (slot, p) = draw_exploration(&items, seed, &[1], &chosen, 64).unwrap();
            assert!((p - 1.0 / 7.0).abs() < 1e-12);
            counts[slot] += 1;
        }
        assert_eq!(counts[0] + counts[1] + counts[9], 0);
        for c in &counts[2..9] {
            assert!((*c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
    }
}
