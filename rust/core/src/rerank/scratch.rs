//! Per-thread scratch buffers, so a re-rank allocates nothing but its result once the buffers
//! have grown to the request size (each serving thread keeps its own).

use super::caps::{Interner, Item, Window};
use super::dpp::DppState;
use super::lazy::Queue;
use super::mmr::MmrState;
use std::cell::RefCell;

#[derive(Default)]
pub(crate) struct Scratch {
    pub dpp: DppState,
    pub mmr: MmrState,
    pub topics: Interner,
    pub creators: Interner,
    /// Per candidate: dense topic/creator ids, category cap, freshness.
    pub items: Vec<Item>,
    pub window: Window,
    pub queue: Queue,
    /// Candidates not in a blocked category.
    pub eligible: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch (a fresh one if it is somehow already in use).
pub(crate) fn with_scratch<T>(f: impl FnOnce(&mut Scratch) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut Scratch::default()),
    })
}
