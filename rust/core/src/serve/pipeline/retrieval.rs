//! Retrieval models: the two-tower towers and the index that holds the item tower's vectors,
//! swapped together as one versioned snapshot (a user tower of version v only ever queries
//! the index of item tower v).
//!
//! - user tower: an [`Mlp`] over the user block of the features (`user_width(dim)` inputs,
//!   the block the scorer already assembles), one output per index dimension; it runs per
//!   request and gives the ANN query. Without one, the query is the scorer's blend.
//! - item tower: an [`Mlp`] over an item's content embedding (`dim` inputs), one output per
//!   index dimension; it embeds every upload after the swap. Without one, the index holds the
//!   content embeddings.

use super::super::features::user_width;
use super::Pipeline;
use crate::ann::HnswIndex;
use crate::rank::Mlp;
use crate::{invalid, Result};
use std::sync::Arc;

/// One retrieval snapshot.
pub struct Retrieval {
    pub version: String,
    pub user_tower: Option<Arc<Mlp>>,
    pub item_tower: Option<Arc<Mlp>>,
    pub index: Arc<HnswIndex>,
}

impl Retrieval {
    /// The index's vectors for items with these content embeddings (`n x dim`).
    pub fn item_vectors<'a>(
        &self,
        content: &'a [f32],
        n: usize,
    ) -> Result<std::borrow::Cow<'a, [f32]>> {
        match &self.item_tower {
            Some(t) => Ok(std::borrow::Cow::Owned(t.predict(content, n)?)),
            None => Ok(std::borrow::Cow::Borrowed(content)),
        }
    }

    /// The ANN query for a user block, or `None` without a user tower.
    pub fn user_query(&self, user_block: &[f32]) -> Result<Option<Vec<f32>>> {
        self.user_tower
            .as_ref()
            .map(|t| t.predict(user_block, 1))
            .transpose()
    }

    fn check(&self, dim: usize) -> Result<()> {
        let d = self.index.dim();
        match (&self.user_tower, &self.item_tower) {
            (None, None) if d != dim => Err(invalid!(
                "without towers the index holds content embeddings: its dim must be {dim}, got {d}"
            )),
            (None, None) => Ok(()),
            (Some(u), Some(i)) => {
                let uw = user_width(dim);
                if u.input_dim() != uw || u.n_tasks() != d {
                    return Err(invalid!(
                        "the user tower maps {} inputs to {}; expected the user block ({uw}) \
                         to the index dim ({d})",
                        u.input_dim(),
                        u.n_tasks()
                    ));
                }
                if i.input_dim() != dim || i.n_tasks() != d {
                    return Err(invalid!(
                        "the item tower maps {} inputs to {}; expected the content embedding \
                         ({dim}) to the index dim ({d})",
                        i.input_dim(),
                        i.n_tasks()
                    ));
                }
                Ok(())
            }
            _ => Err(invalid!(
                "pass both towers (user and item) or neither: uploads must be embedded by the \
                 item tower that matches the user tower"
            )),
        }
    }
}

impl Pipeline {
    /// The retrieval snapshot requests read now.
    pub fn retrieval(&self) -> Arc<Retrieval> {
        self.retrieval.read().clone()
    }

    /// The ANN index of the current retrieval snapshot.
    pub fn index(&self) -> Arc<HnswIndex> {
        self.retrieval().index.clone()
    }

    /// Swaps in a new retrieval snapshot: `index` holds the item tower's vectors of the
    /// catalogue (built offline, in the background). Under the same lock as uploads and
    /// removals, the new index is first brought up to date with the item table: items uploaded
    /// since it was built are embedded by the new item tower and added, items taken down are
    /// removed. Requests already running finish with the old snapshot.
    pub fn set_retrieval(&self, next: Retrieval) -> Result<()> {
        let dim = self.items.dim();
        next.check(dim)?;
        let _g = self.retrieval_update.lock();
        let (missing, stale): (Vec<(u64, Vec<f32>)>, Vec<u64>) = {
            let items = self.items.read();
            let mut missing = Vec::new();
            let mut stale = Vec::new();
            for s in 0..items.slots() {
                let id = items.id(s);
                let held = next.index.contains(id);
                if items.is_live(s) && !held {
                    missing.push((id, items.embedding(s).to_vec()));
                } else if !items.is_live(s) && held {
                    stale.push(id);
                }
            }
            (missing, stale)
        };
        if !missing.is_empty() {
            let ids: Vec<u64> = missing.iter().map(|m| m.0).collect();
            let content: Vec<f32> = missing.iter().flat_map(|m| m.1.iter().copied()).collect();
            let vecs = next.item_vectors(&content, ids.len())?;
            next.index.add(&ids, &vecs)?;
        }
        if !stale.is_empty() {
            next.index.remove(&stale)?;
        }
        *self.retrieval.write() = Arc::new(next);
        Ok(())
    }

    /// Adds items to the current index (embedded by its item tower), serialised with swaps.
    pub(super) fn index_items(&self, ids: &[u64], content: &[f32]) -> Result<()> {
        let _g = self.retrieval_update.lock();
        let r = self.retrieval();
        let vecs = r.item_vectors(content, ids.len())?;
        r.index.add(ids, &vecs)
    }

    /// Removes items from the current index, serialised with swaps.
    pub(super) fn unindex_items(&self, ids: &[u64]) -> Result<usize> {
        let _g = self.retrieval_update.lock();
        self.retrieval().index.remove(ids)
    }
}
