//! The mixer's parts: slot sources and the exploration draw. An exploration slot (decided first
//! by the TrafficSplit) shows a uniformly random eligible item, chosen by a hash-seeded draw so it
//! is reproducible, with its propensity; `pipeline/feed.rs` zips those slots with the re-ranked order.

use super::idhash::{splitmix64, IdSet};
use super::store::Items;
use crate::rerank::FullKeys;

/// Where a slot's item came from: one enum for the pipeline and the log's `source` column.
pub use crate::eventlog::Source;

/// Draws one exploration item uniformly from the admissible items: live, category not blocked,
/// not already in the response, and not breaking a cap that the items pinned before it fill
/// (`full`), by rejection sampling over the dense item slots (expected tries = slots /
/// admissible). Returns (slot, propensity = 1/|admissible|), the conditional probability of
/// the draw given the slots drawn before it. `full` is usually empty; when it is not, the
/// admissible set is counted exactly by one scan of the item table.
pub fn draw_exploration(
    items: &Items,
    seed: u64,
    blocked_categories: &[u32],
    chosen: &IdSet,
    full: &FullKeys,
    max_tries: usize,
) -> Option<(usize, f64)> {
    let blocked: usize = blocked_categories
        .iter()
        .map(|&c| items.live_in_category(c))
        .sum();
    let eligible = |s: usize| {
        items.is_live(s)
            && !blocked_categories.contains(&items.category(s))
            && !chosen.contains(&items.id(s))
    };
    let hits = |s: usize| {
        full.hits(
            u64::from(items.topic(s)),
            items.creator(s),
            u64::from(items.category(s)),
        )
    };
    let over_cap = if full.is_empty() {
        0
    } else {
        (0..items.slots())
            .filter(|&s| eligible(s) && hits(s))
            .count()
    };
    let admissible = items
        .n_live()
        .saturating_sub(blocked)
        .saturating_sub(chosen.len())
        .saturating_sub(over_cap);
    if admissible == 0 || items.slots() == 0 {
        return None;
    }
    let mut state = seed;
    for _ in 0..max_tries {
        let slot = (splitmix64(&mut state) % items.slots() as u64) as usize;
        if eligible(slot) && !hits(slot) {
            return Some((slot, 1.0 / admissible as f64));
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
            let (slot, p) =
                draw_exploration(&items, seed, &[1], &chosen, &FullKeys::default(), 64).unwrap();
            assert!((p - 1.0 / 7.0).abs() < 1e-12);
            counts[slot] += 1;
        }
        assert_eq!(counts[0] + counts[1] + counts[9], 0);
        for c in &counts[2..9] {
            assert!((*c as f64 - 10_000.0).abs() < 500.0, "{counts:?}");
        }
    }
}
