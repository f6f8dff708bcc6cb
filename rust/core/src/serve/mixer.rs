//! The mixer's parts: slot sources and the exploration draw. An exploration slot (decided first
//! by the TrafficSplit) shows a uniformly random eligible item, chosen by a hash-seeded draw so it
//! is reproducible, with its propensity; `pipeline.rs` zips those slots with the re-ranked order.

use super::idhash::{splitmix64, IdSet};
use super::store::Items;

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

#[cfg(test)]
mod tests {
    use super::super::store::{ItemInfo, ItemStore};
    use super::*;

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
