//! External id (u64) -> internal slot (u32), sharded so concurrent inserts and removes of
//! different ids rarely contend. Fixed hasher: deterministic across runs.

use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const SHARDS: usize = 64;

/// Multiplicative mixer for u64 keys (fixed, so iteration order is reproducible).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, i: u64) {
        let x = (i ^ (i >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        self.0 = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    }
}

type Map = HashMap<u64, u32, BuildHasherDefault<IdHasher>>;

pub struct IdMap {
    shards: Box<[RwLock<Map>]>,
}

#[inline]
fn shard(id: u64) -> usize {
    (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % SHARDS
}

impl Default for IdMap {
    fn default() -> Self {
        Self::new()
    }
}

impl IdMap {
    pub fn new() -> Self {
        IdMap {
            shards: (0..SHARDS).map(|_| RwLock::new(Map::default())).collect(),
        }
    }

    pub fn insert(&self, id: u64, slot: u32) -> Option<u32> {
        self.shards[shard(id)].write().insert(id, slot)
    }

    pub fn remove(&self, id: u64) -> Option<u32> {
        self.shards[shard(id)].write().remove(&id)
    }

    pub fn get(&self, id: u64) -> Option<u32> {
        self.shards[shard(id)].read().get(&id).copied()
    }

    /// All (id, slot) pairs, sorted by slot (insertion order) so rebuilds are reproducible.
    pub fn items(&self) -> Vec<(u64, u32)> {
        let mut v = Vec::new();
        for s in self.shards.iter() {
            v.extend(s.read().iter().map(|(&k, &x)| (k, x)));
        }
        v.sort_unstable_by_key(|&(_, s)| s);
        v
    }

    /// Approximate heap bytes (for memory reporting).
    pub fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().capacity() * (std::mem::size_of::<(u64, u32)>() + 1))
            .sum()
    }
}
