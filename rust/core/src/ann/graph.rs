//! The HNSW graph itself (Malkov & Yashunin 2018): layered proximity graph, greedy descent,
//! beam search on each layer, and the neighbour-selection heuristic (their Algorithm 4).
//! Every method takes `&self`: links are atomics guarded by per-node locks for writers, readers
//! never lock (see the publication rule in `store.rs`), removal is a tombstone plus local repair.

use super::distance::{prefetch, DistFn, Metric};
use super::epoch::Epochs;
use super::ids::IdMap;
use super::quant::{Codec, Pending, Quant, Quantize, QueryCode, Ranges, SQ8_MIN_AGREEMENT};
use super::scratch::{with_scratch, Cand, Near, Scratch};
use super::store::{read_links, write_links, Store, FLAG_REPAIRED, MAX_LEVEL};
use parking_lot::Mutex;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

pub(crate) const EMPTY: u64 = u64::MAX;
/// Largest supported `m` (level-0 lists hold `2 m` links; stack buffers are sized from this).
pub const MAX_M: usize = 128;
pub(crate) const BUF: usize = 2 * MAX_M;
const PF_LINKS: bool = true;
/// Largest k whose bounded re-rank keeps a heap of the k best (see `rerank_scan`).
const RERANK_HEAP_K: usize = 64;
/// Cache lines a search keeps in flight for the neighbours it is about to score (the core's
/// outstanding-miss slots, ~24 on current x86); see `ahead`.
const LINES_IN_FLIGHT: usize = 24;

/// How many neighbours ahead of the one being scored to prefetch, for rows of `lines` cache
/// lines: enough to hide the memory latency behind the arithmetic, few enough not to stall on
/// full miss buffers (prefetching all 32 neighbours' rows at once did: 12-15% slower at 96-d).
fn ahead(lines: usize) -> usize {
    (LINES_IN_FLIGHT / lines.max(1)).clamp(2, 8)
}

#[inline]
pub(crate) fn pack(node: u32, level: usize) -> u64 {
    ((level as u64) << 32) | node as u64
}
#[inline]
pub(crate) fn unpack(e: u64) -> (u32, usize) {
    (e as u32, (e >> 32) as usize)
}

/// The rows a search scores (float vectors or codes): a node's row address, the distance of
/// the row at an address, and the cache lines of a row (what a prefetch covers). The greedy
/// descent and the beam search take the same rows; `Copy` (closures over references), passed
/// by value.
#[derive(Clone, Copy)]
pub(crate) struct Rows<A, D> {
    pub addr: A,
    pub dist: D,
    pub lines: usize,
}

impl<A: Fn(u32) -> *const u8, D: Fn(*const u8) -> f32> Rows<A, D> {
    /// The distance of node `n`'s row.
    #[inline(always)]
    fn score(&self, n: u32) -> f32 {
        (self.dist)((self.addr)(n))
    }

    /// Prefetch node `n`'s row.
    #[inline(always)]
    fn prefetch(&self, n: u32) {
        self.prefetch_at((self.addr)(n));
    }

    /// Prefetch the row at `p` (an address from `addr`).
    #[inline(always)]
    fn prefetch_at(&self, p: *const u8) {
        prefetch(p as *const f32, self.lines);
    }
}

pub struct Graph {
    pub dim: usize,
    pub metric: Metric,
    pub m: usize,
    pub m0: usize,
    pub ef_construction: usize,
    pub seed: u64,
    level_mult: f64,
    pub(crate) dist: DistFn,
    pub(crate) store: Store,
    /// Slots handed out so far (live, deleted and in-flight nodes).
    pub(crate) next: AtomicU32,
    /// Packed (max level, entry node), or EMPTY.
    pub(crate) entry: AtomicU64,
    pub(crate) entry_lock: Mutex<()>,
    /// Slots freed by `consolidate`, reused before new ones are handed out.
    pub(crate) free: Mutex<Vec<u32>>,
    /// Open point-in-time cuts (`HnswIndex::cut`): while any is open, inserts take fresh slots
    /// only, so no node a cut covers is rewritten while its bytes are produced.
    pub(crate) cuts: AtomicUsize,
    /// Grace periods: a freed slot is rewritten only after every operation that might still
    /// hold it has ended.
    pub(crate) epochs: Epochs,
    /// Which traversal codes this graph keeps.
    pub quantize: Quantize,
    /// Set once (at construction for fp16, by `calibrate` for sq8); from then on every node has
    /// a code and level-0 search uses them.
    pub(crate) codec: OnceLock<Codec>,
    pub(crate) ids: IdMap,
    pub(crate) live: AtomicUsize,
    /// Tombstones not yet freed; while 0, searches skip the per-node flag check (one cache miss
    /// per candidate saved). Freed slots are unreachable, so they need no check.
    pub(crate) tombstones: AtomicUsize,
    /// Bits of the largest Euclidean norm of any row written (a non-negative f32, so the bit
    /// order is the value order); bounds the code error in the re-rank (`rerank`).
    max_norm: AtomicU32,
    /// Set once any 8-bit code clipped its row (then no code error bound holds: full re-rank).
    clipped: AtomicBool,
    /// Nodes linked on level 0 whose upper levels wait for `link_deferred` (see `upper`).
    pub(crate) deferred: Mutex<VecDeque<u32>>,
    /// Held by `link_deferred` for each node it links, so `save` can wait for the one in flight.
    pub(crate) linker: Mutex<()>,
    /// Background `link_deferred` runs that panicked (caught: see `upper`).
    pub(crate) deferred_failed: AtomicUsize,
}

impl Graph {
    pub fn new(
        dim: usize,
        metric: Metric,
        m: usize,
        ef_construction: usize,
        capacity: usize,
        seed: u64,
        quantize: Quantize,
    ) -> Self {
        let codec = OnceLock::new();
        let mut code_bytes = 0;
        if quantize == Quantize::Fp16 {
            // Nothing to fit: every node is encoded as it is written.
            code_bytes = codec
                .get_or_init(|| Codec::Fp16)
                .code_bytes(Store::stride_of(dim));
        }
        Graph {
            dim,
            metric,
            m,
            m0: 2 * m,
            ef_construction: ef_construction.max(m),
            seed,
            level_mult: 1.0 / (m as f64).ln(),
            dist: super::distance::select(metric),
            store: Store::new(dim, m, capacity, code_bytes),
            next: AtomicU32::new(0),
            entry: AtomicU64::new(EMPTY),
            entry_lock: Mutex::new(()),
            free: Mutex::new(Vec::new()),
            cuts: AtomicUsize::new(0),
            epochs: Epochs::default(),
            quantize,
            codec,
            ids: IdMap::new(),
            live: AtomicUsize::new(0),
            tombstones: AtomicUsize::new(0),
            max_norm: AtomicU32::new(0),
            clipped: AtomicBool::new(false),
            deferred: Mutex::new(VecDeque::new()),
            linker: Mutex::new(()),
            deferred_failed: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    pub fn slots(&self) -> usize {
        self.next.load(Ordering::Acquire) as usize
    }

    /// Deterministic level for a slot: floor(-ln(u) / ln(m)), u from a hash of (seed, slot).
    fn random_level(&self, slot: u32) -> usize {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&self.seed.to_le_bytes());
        b[8..].copy_from_slice(&slot.to_le_bytes());
        let h = xxhash_rust::xxh3::xxh3_64(&b);
        let u = ((h >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64);
        ((-u.ln() * self.level_mult) as usize).min(MAX_LEVEL)
    }

    #[inline(always)]
    pub(crate) fn d(&self, a: u32, b: u32) -> f32 {
        (self.dist)(self.store.vector(a), self.store.vector(b))
    }

    /// Allocate a slot and write the node's data (not yet reachable).
    pub(crate) fn alloc(&self, label: u64, v: &[f32], level: Option<usize>) -> crate::Result<u32> {
        let (slot, reused) = self.take_slot()?;
        if reused {
            // Unreachable since `consolidate`'s grace period: plain resets are safe.
            self.store.clear_links0(slot);
            self.store.clear_flags(slot);
        }
        self.store.write_vector(slot, v);
        // Before the node is published, so a search that reaches it also sees this bound.
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        self.max_norm.fetch_max(norm.to_bits(), Ordering::Release);
        if let Some(codec) = self.codec.get() {
            self.write_code(codec, slot, v);
        }
        self.store.set_label(slot, label);
        self.store
            .set_level(slot, level.unwrap_or_else(|| self.random_level(slot)));
        Ok(slot)
    }

    /// A slot whose segment exists. Serialised (a few ns against an insert's ~100 us) so a
    /// refused allocation leaves no hole: `next` moves only once the segment is there.
    fn take_slot(&self) -> crate::Result<(u32, bool)> {
        let mut free = self.free.lock();
        if self.cuts.load(Ordering::Acquire) == 0 {
            if let Some(slot) = free.pop() {
                return Ok((slot, true));
            }
        }
        let slot = self.next.load(Ordering::Acquire);
        if slot as usize >= self.store.max_slots() {
            return Err(crate::invalid!(
                "the index is full ({} slots)",
                self.store.max_slots()
            ));
        }
        self.store.ensure(slot)?;
        self.next.store(slot + 1, Ordering::Release);
        Ok((slot, false))
    }

    /// Insert or replace `label` with the prepared (validated, normalised) vector `v`.
    pub fn insert(&self, label: u64, v: &[f32]) -> crate::Result<()> {
        self.insert_linking(label, v, false).map(|_| ())
    }

    /// `insert`, leaving the upper levels of a node above level 0 to `link_deferred` when
    /// `defer` is set (see `upper`); returns whether it did.
    pub(crate) fn insert_linking(&self, label: u64, v: &[f32], defer: bool) -> crate::Result<bool> {
        let _pin = self.epochs.pin();
        let slot = self.alloc(label, v, None)?;
        // The old version disappears from results before the new one is linked: a search never
        // returns the same id twice.
        let old = self.ids.insert(label, slot);
        match old {
            Some(o) => {
                self.tombstone(o);
            }
            None => {
                self.live.fetch_add(1, Ordering::AcqRel);
            }
        }
        let deferred = if defer {
            self.link_deferring(slot)
        } else {
            self.link(slot);
            false
        };
        if let Some(o) = old {
            self.repair(o);
        }
        Ok(deferred)
    }

    /// Tombstone `label` and repair its neighbours' links. Returns false when absent. A removed
    /// entry stays the entry (a waypoint, as any tombstone) until the next insert or
    /// `consolidate` hands it on (`entry_to_link_from`).
    pub fn remove(&self, label: u64) -> bool {
        let _pin = self.epochs.pin();
        let Some(slot) = self.ids.remove(label) else {
            return false;
        };
        self.tombstone(slot);
        self.live.fetch_sub(1, Ordering::AcqRel);
        self.repair(slot);
        true
    }

    pub(crate) fn tombstone(&self, slot: u32) {
        // Count first: a search that sees the flag must also see a non-zero count.
        self.tombstones.fetch_add(1, Ordering::SeqCst);
        if !self.store.mark_deleted(slot) {
            self.tombstones.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(crate) fn has_tombstones(&self) -> bool {
        self.tombstones.load(Ordering::SeqCst) > 0
    }

    pub fn contains(&self, label: u64) -> bool {
        self.ids.get(label).is_some()
    }

    pub fn vector_of(&self, label: u64) -> Option<Vec<f32>> {
        let _pin = self.epochs.pin();
        self.ids
            .get(label)
            .map(|s| self.store.vector(s)[..self.dim].to_vec())
    }

    fn link(&self, s: u32) {
        self.link_levels(s, self.store.level(s), 0);
    }

    /// The entry an insert links from: the current one, handed to a live linked node first
    /// if it is a tombstone (`move_entry_off_tombstone`, one pass over the slots, once per
    /// removed entry), or `EMPTY` when no live node is linked (every item removed or
    /// replaced): the next node starts the graph afresh. Inserts never link to a tombstone, so
    /// a node linked from a dead entry with no live neighbours on its levels got no links
    /// there: after removing every item, new ones were found by no search, and one-row adds
    /// whose upper levels were linked while the (dead) entry had no upper links yet got none.
    pub(crate) fn entry_to_link_from(&self) -> u64 {
        self.move_entry_off_tombstone(self.slots());
        let e = self.entry.load(Ordering::Acquire);
        if e != EMPTY && self.store.is_deleted(unpack(e).0) {
            EMPTY
        } else {
            e
        }
    }

    /// Link `s` on levels `lo..=top` (`top` at most its level); it becomes the entry when
    /// `top` is its level and above the graph's.
    pub(crate) fn link_levels(&self, s: u32, top: usize, lo: usize) {
        let level = self.store.level(s);
        let mut guard = None;
        let mut e = self.entry_to_link_from();
        if e == EMPTY || top > unpack(e).1 {
            guard = Some(self.entry_lock.lock());
            self.hand_on_dead_entry(self.slots()); // removed since `entry_to_link_from`?
            e = self.entry.load(Ordering::Acquire);
            if e == EMPTY || self.store.is_deleted(unpack(e).0) {
                self.entry.store(pack(s, level), Ordering::Release);
                return;
            }
            if top <= unpack(e).1 {
                guard = None;
            }
        }
        let plan = self.plan(s, e, (top, lo));
        self.commit(s, &plan);
        if guard.is_some() {
            self.entry.store(pack(s, level), Ordering::Release);
        }
    }

    /// The read-only half of an insert: candidates for `s` on levels `lo..=top` that it
    /// shares with the graph whose entry is `e` (sorted by distance, tombstones and `s`
    /// excluded), after a greedy descent through the levels above `top`.
    pub(crate) fn plan(
        &self,
        s: u32,
        e: u64,
        (top, lo): (usize, usize),
    ) -> Vec<(usize, Vec<Cand>)> {
        let q = self.store.vector(s);
        let (ep, maxl) = unpack(e);
        let mut cur = Cand {
            d: (self.dist)(q, self.store.vector(ep)),
            id: ep,
        };
        for l in (top + 1..=maxl).rev() {
            cur = self.greedy(q, cur, l);
        }
        let mut eps = vec![cur];
        let mut plan: Vec<(usize, Vec<Cand>)> = Vec::with_capacity(top.min(maxl) + 1);
        for l in (lo..=top.min(maxl)).rev() {
            let mut w = if self.has_tombstones() {
                self.candidates(q, &eps, l, |n| n != s && !self.store.is_deleted(n))
            } else {
                self.candidates(q, &eps, l, |n| n != s)
            };
            if w.is_empty() {
                // Never link to a tombstone: `consolidate` relies on no new in-links to one.
                w = eps
                    .iter()
                    .copied()
                    .filter(|c| c.id != s && !self.store.is_deleted(c.id))
                    .collect();
            }
            if !w.is_empty() {
                eps = w.clone();
            }
            plan.push((l, w));
        }
        plan
    }

    /// The `ef_construction` nearest accepted nodes to `q` on level `l`, sorted by float
    /// distance. Every level is searched on the codes (a half or a quarter of the memory
    /// traffic of the float rows, as in `knn`) and the result re-scored with the float rows, so
    /// the neighbour selection sees exact distances. Not in an `Sq8` index: its 8-bit codes are
    /// fitted whatever the data, and may not order neighbours well enough to build on (an
    /// `Auto` index keeps them only where they do).
    fn candidates<F: Fn(u32) -> bool>(
        &self,
        q: &[f32],
        eps: &[Cand],
        l: usize,
        accept: F,
    ) -> Vec<Cand> {
        let ef = self.ef_construction;
        match self.codec.get() {
            Some(codec) if self.quantize.builds_on_codes() => {
                let qc = codec.query(self.metric, q);
                let rows = self.code_rows(&qc);
                let eps: Vec<Cand> = eps
                    .iter()
                    .map(|c| Cand {
                        d: rows.score(c.id),
                        id: c.id,
                    })
                    .collect();
                let mut w = with_scratch(|sc| {
                    self.search_layer_by(sc, &eps, (ef, l), accept, rows);
                    drain_sorted(sc)
                });
                let k = w.len();
                self.rerank(q, &mut w, k, f32::INFINITY);
                w
            }
            _ => with_scratch(|sc| {
                self.search_layer(sc, q, eps, ef, l, accept);
                drain_sorted(sc)
            }),
        }
    }

    /// The writing half: select neighbours from the plan, write `s`'s own lists, then link it
    /// in from level 0 upwards. When another thread can reach `s` on a level, every list of
    /// `s` at that level and below is complete, so no search dead-ends in a half-linked node.
    pub(crate) fn commit(&self, s: u32, plan: &[(usize, Vec<Cand>)]) {
        let sels: Vec<(usize, Vec<u32>)> = plan
            .iter()
            .map(|(l, w)| (*l, self.heuristic(w, self.m)))
            .collect();
        for (l, sel) in &sels {
            let mmax = if *l == 0 { self.m0 } else { self.m };
            // Another insert may already have linked to `s` on this level (it found `s` through
            // a level above); keep those links rather than overwrite them.
            let _g = self.store.lock(s);
            let list = self.store.links(s, *l);
            let mut buf = [0u32; BUF];
            let cnt = read_links(list, &mut buf);
            let mut all = sel.clone();
            for &x in &buf[..cnt] {
                if !all.contains(&x) {
                    all.push(x);
                }
            }
            if all.len() > mmax {
                let mut c: Vec<Cand> = all
                    .iter()
                    .map(|&x| Cand {
                        d: self.d(s, x),
                        id: x,
                    })
                    .collect();
                c.sort_unstable();
                all = self.heuristic(&c, mmax);
            }
            write_links(list, &all);
        }
        for (l, sel) in sels.iter().rev() {
            let mmax = if *l == 0 { self.m0 } else { self.m };
            for &n in sel {
                self.connect(n, s, *l, mmax);
            }
        }
    }

    /// Add the link `n -> s` on level `l`, shrinking `n`'s list with the heuristic when full.
    fn connect(&self, n: u32, s: u32, l: usize, mmax: usize) {
        let _g = self.store.lock(n);
        let list = self.store.links(n, l);
        if list.is_empty() {
            return;
        }
        let mut buf = [0u32; BUF];
        let cnt = read_links(list, &mut buf);
        if buf[..cnt].contains(&s) {
            return;
        }
        if cnt < mmax {
            list[cnt + 1].store(s, Ordering::Release);
            list[0].store(cnt as u32 + 1, Ordering::Release);
            return;
        }
        let base = self.store.vector(n);
        // Tombstones stay candidates: dropping one without the heuristic's coverage argument
        // could strand the nodes only it leads to.
        let mut c: Vec<Cand> = buf[..cnt]
            .iter()
            .map(|&x| Cand {
                d: (self.dist)(base, self.store.vector(x)),
                id: x,
            })
            .collect();
        c.push(Cand {
            d: (self.dist)(base, self.store.vector(s)),
            id: s,
        });
        c.sort_unstable();
        let sel = self.heuristic(&c, mmax);
        write_links(list, &sel);
    }

    /// Malkov & Yashunin's heuristic: keep a candidate only if it is closer to the base than to
    /// every neighbour already kept. `cands` is sorted by distance to the base.
    pub(crate) fn heuristic(&self, cands: &[Cand], m: usize) -> Vec<u32> {
        if cands.len() <= m {
            return cands.iter().map(|c| c.id).collect();
        }
        let mut sel: Vec<u32> = Vec::with_capacity(m);
        for c in cands {
            if sel.len() >= m {
                break;
            }
            if sel.iter().all(|&r| self.d(c.id, r) >= c.d) {
                sel.push(c.id);
            }
        }
        sel
    }

    /// Local repair after tombstoning `d`: every out-neighbour `u` of `d` that links back to it
    /// takes replacements from `d`'s own links, nearest first, each kept only if no link `u`
    /// already has is closer to it (the heuristic's test, relaxed by `churn::ALPHA` so long links
    /// survive), up to the list's capacity; the link
    /// to `d` goes last and only if there is room left. `u` keeps every other link, so its degree does not shrink with churn and no
    /// node that was reachable through `u` is stranded. Other in-links to `d` stay: the
    /// tombstone keeps its vector and links as a waypoint (never a result) until the heuristic
    /// prunes it away or `consolidate` (churn.rs) frees it.
    pub(crate) fn repair(&self, d: u32) {
        let level = self.store.level(d);
        let mut dn = [0u32; BUF];
        let mut un = [0u32; BUF];
        for l in 0..=level {
            let mmax = if l == 0 { self.m0 } else { self.m };
            let dc = read_links(self.store.links(d, l), &mut dn);
            for &u in &dn[..dc] {
                if u == d || self.store.is_deleted(u) {
                    continue;
                }
                let _g = self.store.lock(u);
                let list = self.store.links(u, l);
                let uc = read_links(list, &mut un);
                if !un[..uc].contains(&d) {
                    continue;
                }
                let mut kept: Vec<u32> = un[..uc].iter().copied().filter(|&x| x != d).collect();
                let base = self.store.vector(u);
                let mut c: Vec<Cand> = Vec::with_capacity(dc);
                for &x in &dn[..dc] {
                    if x == u || self.store.is_deleted(x) || kept.contains(&x) {
                        continue;
                    }
                    c.push(Cand {
                        d: (self.dist)(base, self.store.vector(x)),
                        id: x,
                    });
                }
                c.sort_unstable();
                for cand in &c {
                    if kept.len() >= mmax {
                        break;
                    }
                    if kept
                        .iter()
                        .all(|&r| super::churn::relaxed(self.d(cand.id, r)) >= cand.d)
                    {
                        kept.push(cand.id);
                    }
                }
                // While there is room, the tombstone stays as a waypoint (measured: dropping it
                // outright cost about a point of recall at equal ef after 30% churn).
                if kept.len() < mmax {
                    kept.push(d);
                }
                write_links(list, &kept);
            }
        }
        self.store.set_flag(d, FLAG_REPAIRED);
    }

    /// Greedy descent on level `l` with the float rows (the insert path).
    fn greedy(&self, q: &[f32], cur: Cand, l: usize) -> Cand {
        self.greedy_by(cur, l, self.float_rows(q))
    }

    /// Greedy descent on level `l` over any rows, prefetching `ahead` neighbours' rows before
    /// they are scored (as in `search_layer_by`).
    fn greedy_by<A, D>(&self, mut cur: Cand, l: usize, rows: Rows<A, D>) -> Cand
    where
        A: Fn(u32) -> *const u8,
        D: Fn(*const u8) -> f32,
    {
        let ahead = ahead(rows.lines);
        let mut buf = [0u32; BUF];
        loop {
            let mut changed = false;
            let cnt = read_links(self.store.links(cur.id, l), &mut buf);
            buf[..cnt.min(ahead)].iter().for_each(|&n| rows.prefetch(n));
            for j in 0..cnt {
                if j + ahead < cnt {
                    rows.prefetch(buf[j + ahead]);
                }
                let d = rows.score(buf[j]);
                if d < cur.d {
                    cur = Cand { d, id: buf[j] };
                    changed = true;
                }
            }
            if !changed {
                return cur;
            }
        }
    }

    /// Beam search on one layer; leaves up to `ef` accepted nodes in `sc.results`. Nodes that
    /// `accept` rejects (tombstones, excluded ids) are traversed but never enter the results, so
    /// the beam still fills with `ef` acceptable nodes when many neighbours are filtered out.
    pub(crate) fn search_layer<F: Fn(u32) -> bool>(
        &self,
        sc: &mut Scratch,
        q: &[f32],
        eps: &[Cand],
        ef: usize,
        level: usize,
        accept: F,
    ) {
        self.search_layer_by(sc, eps, (ef, level), accept, self.float_rows(q));
    }

    /// `search_layer` over any rows `row` (float vectors or codes): each fresh neighbour's row
    /// is prefetched `ahead` unvisited neighbours before it is scored, so the misses of the next
    /// rows overlap the arithmetic on this one; a row's address is computed once for both.
    pub(crate) fn search_layer_by<F, A, D>(
        &self,
        sc: &mut Scratch,
        eps: &[Cand],
        (ef, level): (usize, usize),
        accept: F,
        row: Rows<A, D>,
    ) where
        F: Fn(u32) -> bool,
        A: Fn(u32) -> *const u8,
        D: Fn(*const u8) -> f32,
    {
        let ahead = ahead(row.lines);
        let mut lower = self.seed(sc, eps, ef, &accept);
        let mut buf = [0u32; BUF];
        let mut fresh = [0u32; BUF];
        let mut at = [std::ptr::null::<u8>(); BUF];
        while let Some(Near(Reverse(c))) = sc.cands.pop() {
            if c.d > lower {
                break;
            }
            let cnt = read_links(self.store.links(c.id, level), &mut buf);
            // The next candidate's list, while this one's neighbours are scored.
            if let Some(Near(Reverse(top))) = sc.cands.peek() {
                prefetch(self.store.links(top.id, level).as_ptr() as *const f32, 1);
            }
            let mut nf = 0;
            for &n in &buf[..cnt] {
                fresh[nf] = n;
                nf += sc.visited.mark(n) as usize;
            }
            for j in 0..nf {
                at[j] = (row.addr)(fresh[j]);
            }
            at[..nf.min(ahead)].iter().for_each(|&p| row.prefetch_at(p));
            if nf == 0 {
                self.prefetch_next(sc, level, ahead, &row);
            }
            for j in 0..nf {
                if j + ahead < nf {
                    row.prefetch_at(at[j + ahead]);
                } else if j + ahead == nf.max(ahead) {
                    // This node's last rows are in flight: start on the next node's first.
                    self.prefetch_next(sc, level, ahead, &row);
                }
                let (n, d) = (fresh[j], (row.dist)(at[j]));
                if d < lower || sc.results.len() < ef {
                    sc.cands.push(Near(Reverse(Cand { d, id: n })));
                    if PF_LINKS {
                        if let Some(Near(Reverse(top))) = sc.cands.peek() {
                            prefetch(self.store.links(top.id, level).as_ptr() as *const f32, 1);
                        }
                    }
                    if accept(n) {
                        lower = keep_best(&mut sc.results, Cand { d, id: n }, ef);
                    }
                }
            }
        }
    }

    /// Start a beam search from `eps`: fresh visited set, candidate and result heaps; returns
    /// the distance a candidate must beat to enter the results (infinite until `ef` are in).
    fn seed<F: Fn(u32) -> bool>(
        &self,
        sc: &mut Scratch,
        eps: &[Cand],
        ef: usize,
        accept: &F,
    ) -> f32 {
        sc.visited.reset(self.slots());
        sc.cands.clear();
        sc.results.clear();
        let mut lower = f32::INFINITY;
        for &e in eps {
            if !sc.visited.mark(e.id) {
                continue;
            }
            sc.cands.push(Near(Reverse(e)));
            if accept(e.id) {
                lower = keep_best(&mut sc.results, e, ef);
            }
        }
        lower
    }

    /// Prefetch the first `ahead` unvisited neighbours of the candidate expanded next (the
    /// nearest in the heap), so its first distances do not wait the full memory latency.
    #[inline(always)]
    fn prefetch_next<A, D>(&self, sc: &Scratch, level: usize, ahead: usize, row: &Rows<A, D>)
    where
        A: Fn(u32) -> *const u8,
        D: Fn(*const u8) -> f32,
    {
        let Some(Near(Reverse(top))) = sc.cands.peek() else {
            return;
        };
        let mut buf = [0u32; BUF];
        let cnt = read_links(self.store.links(top.id, level), &mut buf);
        // Compacted in place without branches, as the fresh neighbours in `search_layer_by`.
        let mut nf = 0;
        for j in 0..cnt {
            let n = buf[j];
            buf[nf] = n;
            nf += !sc.visited.contains(n) as usize;
        }
        buf[..nf.min(ahead)].iter().for_each(|&n| row.prefetch(n));
    }

    /// The float rows as the rows of a search for the prepared query `q`.
    fn float_rows<'a>(
        &'a self,
        q: &'a [f32],
    ) -> Rows<impl Fn(u32) -> *const u8 + Copy + 'a, impl Fn(*const u8) -> f32 + Copy + 'a> {
        let stride = self.store.stride;
        Rows {
            addr: |n| self.store.vector_ptr(n) as *const u8,
            // SAFETY: `p` is a row's address (`addr`), `stride` floats.
            dist: move |p| {
                (self.dist)(q, unsafe {
                    std::slice::from_raw_parts(p as *const f32, stride)
                })
            },
            lines: self.store.vector_lines(),
        }
    }

    /// The codes as the rows of a search for the prepared query `qc`.
    fn code_rows<'a>(
        &'a self,
        qc: &'a QueryCode,
    ) -> Rows<impl Fn(u32) -> *const u8 + Copy + 'a, impl Fn(*const u8) -> f32 + Copy + 'a> {
        let cb = self.store.code_len();
        Rows {
            addr: |n| self.store.code_ptr(n) as *const u8,
            // SAFETY: `p` is a code's address (`addr`), `cb` bytes.
            dist: move |p| qc.dist(unsafe { std::slice::from_raw_parts(p, cb) }),
            lines: cb.div_ceil(64),
        }
    }

    /// k nearest accepted nodes to the prepared query `q` (length = store stride, zero-padded).
    pub fn knn<F: Fn(u32) -> bool>(&self, q: &[f32], k: usize, ef: usize, accept: F) -> Vec<Cand> {
        let _pin = self.epochs.pin();
        let e = self.entry.load(Ordering::Acquire);
        if e == EMPTY || k == 0 {
            return Vec::new();
        }
        let (ep, maxl) = unpack(e);
        if let Some(codec) = self.codec.get() {
            return self.knn_codes(&codec.query(self.metric, q), q, (ep, maxl), (k, ef), accept);
        }
        let mut cur = Cand {
            d: (self.dist)(q, self.store.vector(ep)),
            id: ep,
        };
        for l in (1..=maxl).rev() {
            cur = self.greedy(q, cur, l);
        }
        with_scratch(|sc| {
            self.search_layer(sc, q, &[cur], ef.max(k), 0, accept);
            let mut r = drain_sorted(sc);
            r.truncate(k);
            r
        })
    }

    /// The whole search on the codes (a half (fp16), a quarter (sq8) or an eighth (sq4) of the
    /// memory traffic of the float rows): greedy descent from the entry `(ep, maxl)`, level 0,
    /// then the best re-ranked with the float rows (`rerank`).
    fn knn_codes<F: Fn(u32) -> bool>(
        &self,
        qc: &QueryCode,
        q: &[f32],
        (ep, maxl): (u32, usize),
        (k, ef): (usize, usize),
        accept: F,
    ) -> Vec<Cand> {
        let ef = ef.max(k);
        let rows = self.code_rows(qc);
        let mut cur = Cand {
            d: rows.score(ep),
            id: ep,
        };
        for l in (1..=maxl).rev() {
            cur = self.greedy_by(cur, l, rows);
        }
        let mut r = with_scratch(|sc| {
            self.search_layer_by(sc, &[cur], (ef, 0), &accept, rows);
            let mut r = drain_sorted(sc);
            // Re-rank slack: the nearest scored candidates just outside the beam (left in the
            // candidate heap, all farther than the beam's last by code distance) join the
            // re-rank, so nodes within the code rounding of the k-th are not lost at the
            // boundary when ef is close to k.
            let mut extra = ef / qc.rerank_slack() + 2;
            while extra > 0 {
                let Some(Near(Reverse(c))) = sc.cands.pop() else {
                    break;
                };
                if accept(c.id) {
                    r.push(c);
                    extra -= 1;
                }
            }
            r
        });
        // Read after the traversal: every node it reached was written before this load.
        let max_norm = f32::from_bits(self.max_norm.load(Ordering::Acquire));
        let clipped = self.clipped.load(Ordering::Acquire);
        self.rerank(q, &mut r, k, qc.error_bound(max_norm, clipped));
        r
    }

    /// The `k` nearest of `r` (sorted by code distance, each within `bound` of its float
    /// distance) by float distance, sorted. Rows are scored in code order, prefetched `ahead`
    /// of the arithmetic, and the scan stops at the first whose code distance is more than
    /// `bound` beyond the k-th float distance so far: neither it nor any later one can be
    /// among the k, so the result is the one a re-rank of all of `r` gives, for a fraction of
    /// the float rows (about k + a few when the k-th is clear of its followers).
    pub(crate) fn rerank(&self, q: &[f32], r: &mut Vec<Cand>, k: usize, bound: f32) {
        // The k best float distances so far: this thread's results heap (free again once the
        // traversal's results are drained), so no allocation per query.
        with_scratch(|sc| {
            sc.results.clear();
            self.rerank_scan(q, r, k, bound, &mut sc.results)
        });
        r.sort_unstable();
        r.truncate(k);
    }

    /// `rerank`'s scan in code order, with `best` the heap of the k best float distances.
    fn rerank_scan(
        &self,
        q: &[f32],
        r: &mut Vec<Cand>,
        k: usize,
        bound: f32,
        best: &mut std::collections::BinaryHeap<Cand>,
    ) {
        let rows = self.float_rows(q);
        let ahead = ahead(rows.lines);
        r.iter().take(ahead).for_each(|c| rows.prefetch(c.id));
        // Without a bound (clipped 8-bit codes, or building) every row is scored. The k-th
        // best float distance so far comes from a heap for small k; for large k (K=1000, where
        // a heap operation per row cost more than the rows the bound skips) an upper bound on
        // it is used instead: the largest of the first k float distances.
        let bounded = bound.is_finite();
        let heap = k <= RERANK_HEAP_K;
        let mut first_k_max = f32::NEG_INFINITY;
        for j in 0..r.len() {
            if bounded {
                let kth = if heap {
                    best.peek().filter(|_| best.len() >= k).map(|w| w.d)
                } else {
                    (j >= k).then_some(first_k_max)
                };
                if kth.is_some_and(|kth| r[j].d - bound > kth) {
                    r.truncate(j);
                    break;
                }
            }
            if let Some(c) = r.get(j + ahead) {
                rows.prefetch(c.id);
            }
            r[j].d = rows.score(r[j].id);
            if bounded && heap {
                best.push(r[j]);
                if best.len() > k {
                    best.pop();
                }
            } else if bounded && j < k {
                first_k_max = first_k_max.max(r[j].d);
            }
        }
    }

    /// Fit the 8-bit quantiser on the live items and encode every node (sq8 and auto; fp16 codes
    /// need no fit). `Auto` keeps the 8-bit codes only when they keep neighbours
    /// (`Quant::agreement`), and encodes fp16 otherwise. `pending` are rows about to be inserted
    /// (the rest of a batch): the ranges and the check cover them too. The caller ensures no
    /// writer runs (searches may: they read no code until `codec` is set). An error (the code
    /// storage refused) leaves the graph on its float rows; the next call tries again.
    pub(crate) fn calibrate(&self, pending: Option<&Pending<'_>>) -> crate::Result<()> {
        if !self.quantize.calibrated() || self.codec.get().is_some() {
            return Ok(());
        }
        let _pin = self.epochs.pin();
        // In id order, not slot order: the check samples rows by position, and the slots a
        // multi-threaded `add` hands out depend on scheduling; the same rows must choose the
        // same codes however they were inserted.
        let mut items = self.ids.items();
        items.sort_unstable_by_key(|&(label, _)| label);
        let mut ranges = Ranges::new(self.dim);
        items
            .iter()
            .for_each(|&(_, s)| ranges.add(self.store.vector(s)));
        if let Some(p) = pending {
            ranges.merge(&p.ranges);
        }
        let qz = Quant::from_ranges(&ranges, self.store.stride, self.quantize.bits());
        let codec = if self.quantize == Quantize::Auto
            && self.agreement(&qz, &items, pending) < SQ8_MIN_AGREEMENT
        {
            Codec::Fp16
        } else {
            Codec::Sq(qz)
        };
        self.set_codec(codec)
    }

    /// Use `codec` from now on (chosen by `calibrate`, or a loaded index's saved choice): its
    /// code storage, then every node encoded, then the codes published; a no-op if codes are
    /// set already. The caller ensures no writer runs.
    pub(crate) fn set_codec(&self, codec: Codec) -> crate::Result<()> {
        if self.codec.get().is_some() {
            return Ok(());
        }
        let _pin = self.epochs.pin();
        self.store.init_codes(codec.code_bytes(self.store.stride))?;
        self.encode_all(&codec);
        self.codec.get_or_init(|| codec);
        Ok(())
    }

    fn encode_all(&self, codec: &Codec) {
        for i in 0..self.slots() as u32 {
            self.write_code(codec, i, self.store.vector(i));
        }
    }

    /// Encode `v` into slot `i`'s code, noting a clipped 8-bit value (before the node is
    /// published, so a search that reaches it also sees the flag, as with `max_norm`).
    fn write_code(&self, codec: &Codec, i: u32, v: &[f32]) {
        let mut clipped = false;
        self.store.write_code(i, |c| clipped = codec.encode(v, c));
        if clipped {
            self.clipped.store(true, Ordering::Release);
        }
    }

    /// `qz.agreement` over the live items followed by the pending rows.
    fn agreement(&self, qz: &Quant, items: &[(u64, u32)], pending: Option<&Pending<'_>>) -> f64 {
        let n = items.len() + pending.map_or(0, |p| p.len);
        let row = |i: usize, buf: &mut Vec<f32>| match items.get(i) {
            Some(&(_, s)) => {
                buf.clear();
                buf.extend_from_slice(self.store.vector(s));
            }
            None => {
                if let Some(p) = pending {
                    (p.row)(i - items.len(), buf);
                }
            }
        };
        qz.agreement(n, row, self.metric, self.dist)
    }

    /// Exact k nearest live nodes (brute force over the id map), for `recall_probe` and tests.
    pub fn brute_force(&self, q: &[f32], k: usize) -> Vec<Cand> {
        let _pin = self.epochs.pin();
        let mut heap = std::collections::BinaryHeap::with_capacity(k.min(self.len()) + 1);
        for (_, i) in self.ids.items() {
            if self.store.is_deleted(i) {
                continue;
            }
            let d = (self.dist)(q, self.store.vector(i));
            heap.push(Cand { d, id: i });
            if heap.len() > k {
                heap.pop();
            }
        }
        heap.into_sorted_vec()
    }

    /// The entry node and top level, if any node exists.
    pub fn entry(&self) -> Option<(u32, usize)> {
        let e = self.entry.load(Ordering::Acquire);
        (e != EMPTY).then(|| unpack(e))
    }

    pub(crate) fn set_entry(&self, node: u32, level: usize) {
        self.entry.store(pack(node, level), Ordering::Release);
    }
}

/// Offer `c` to the beam's results (a max-heap of at most `ef`) and return the distance a
/// candidate must beat from now on (infinite until `ef` are in). A full beam replaces its
/// farthest in place (one sift down) instead of a push and a pop (QPS +2-4% at k=10 and
/// K=1000 on GloVe, `benches/RESULTS.md`). The same heap as push-then-pop: a `c` that does not
/// beat the farthest leaves it unchanged (so `seed` offers its entry points unfiltered).
#[inline(always)]
pub(crate) fn keep_best(results: &mut BinaryHeap<Cand>, c: Cand, ef: usize) -> f32 {
    if results.len() < ef {
        results.push(c);
    } else if let Some(mut far) = results.peek_mut() {
        if c < *far {
            *far = c;
        }
    }
    match results.peek() {
        Some(w) if results.len() >= ef => w.d,
        _ => f32::INFINITY,
    }
}

fn drain_sorted(sc: &mut Scratch) -> Vec<Cand> {
    let mut v: Vec<Cand> = sc.results.drain().collect();
    v.sort_unstable();
    v
}
