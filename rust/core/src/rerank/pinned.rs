//! The caps among pinned (exploration) items. The re-ranker fills the other slots around pinned
//! items within the caps, but it cannot move a pinned item: so the pinned items must not break a
//! cap among themselves. The mixer draws each exploration item from the items still admissible
//! given the ones pinned before it (`FullKeys`), and logs that conditional propensity.

use super::reranker::{Compiled, Pinned, Reranker};
use std::sync::Arc;

/// Topics, creators and categories whose cap is already full for the next pinned item.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FullKeys {
    pub topics: Vec<u64>,
    pub creators: Vec<u64>,
    pub categories: Vec<u64>,
}

impl FullKeys {
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.creators.is_empty() && self.categories.is_empty()
    }

    /// Whether an item with these keys would break a full cap.
    pub fn hits(&self, topic: u64, creator: u64, category: u64) -> bool {
        self.topics.contains(&topic)
            || self.creators.contains(&creator)
            || self.categories.contains(&category)
    }
}

/// A snapshot of the policy's caps (the compiled policy itself, shared), for drawing pinned
/// items.
pub struct PinnedCaps(Arc<Compiled>);

fn full_of(keys: impl Iterator<Item = u64>, cap: impl Fn(u64) -> Option<u32>) -> Vec<u64> {
    let mut all: Vec<u64> = keys.collect();
    all.sort_unstable();
    let mut out = Vec::new();
    let mut i = 0;
    while i < all.len() {
        let j = all[i..].iter().take_while(|&&k| k == all[i]).count();
        if cap(all[i]).is_some_and(|c| j as u64 >= u64::from(c)) {
            out.push(all[i]);
        }
        i += j;
    }
    out
}

impl PinnedCaps {
    /// Blocked categories, sorted (never shown, pinned or not).
    pub fn blocked_categories(&self) -> &[u64] {
        &self.0.blocked
    }

    /// The keys whose cap the items pinned before `position` fill in the window ending at
    /// `position`. Pinned items are drawn left to right, so this window holds every earlier
    /// pinned item that shares a window with `position`.
    pub fn full(&self, pinned: &[Pinned], position: usize) -> FullKeys {
        let c = &self.0;
        let lo = (position + 1).saturating_sub(c.policy.window);
        let near: Vec<&Pinned> = pinned
            .iter()
            .filter(|p| p.position >= lo && p.position < position)
            .collect();
        if near.is_empty() {
            return FullKeys::default();
        }
        let fixed = |c: u32| move |_: u64| (c != u32::MAX).then_some(c);
        FullKeys {
            topics: full_of(near.iter().map(|p| p.topic), fixed(c.topic_cap)),
            creators: full_of(near.iter().map(|p| p.creator), fixed(c.creator_cap)),
            categories: full_of(near.iter().map(|p| p.category), |k| {
                c.cap_keys.binary_search(&k).ok().map(|i| c.cap_limits[i].0)
            }),
        }
    }
}

impl Reranker {
    /// The current policy's caps, for drawing pinned items that respect them.
    pub fn pinned_caps(&self) -> PinnedCaps {
        PinnedCaps(self.compiled())
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::{CategoryCap, Policy};
    use super::*;

    fn pin(position: usize, topic: u64, creator: u64) -> Pinned {
        Pinned {
            position,
            topic,
            creator,
            category: 0,
            fresh: false,
        }
    }

    #[test]
    fn full_keys_follow_the_window() {
        // window 10: topic cap floor(0.3 * 10) = 3, creator cap 2, category 7 capped at 1
        let policy = Policy {
            window: 10,
            max_topic_share: Some(0.3),
            max_per_creator: Some(2),
            category_caps: vec![CategoryCap {
                category: 7,
                share: 0.1,
                safety: false,
            }],
            ..Policy::default()
        };
        let caps = PinnedCaps(Arc::new(Compiled::new(policy).unwrap()));
        let pinned = [pin(0, 1, 5), pin(3, 1, 5), pin(4, 1, 6)];
        let f = caps.full(&pinned, 8);
        assert_eq!(f.creators, vec![5]);
        assert_eq!(f.topics, vec![1]);
        assert!(f.hits(1, 0, 0) && f.hits(2, 5, 0) && !f.hits(2, 6, 0));
        // position 12: the window [3, 12] holds two of them, creator 5 once
        let f = caps.full(&pinned, 12);
        assert!(f.creators.is_empty() && f.topics.is_empty());
        let cat = [Pinned {
            category: 7,
            ..pin(1, 9, 9)
        }];
        assert_eq!(caps.full(&cat, 2).categories, vec![7]);
    }
}
