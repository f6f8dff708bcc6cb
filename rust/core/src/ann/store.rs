//! Node storage for the HNSW graph: vectors, level-0 links, labels and flags in segments that are
//! allocated once and never moved, so growth never invalidates a concurrent reader. Segment `s`
//! holds `base << s` nodes (geometric growth, like a vector that never reallocates); finding a
//! node is two shifts and one pointer load.
//!
//! Publication rule: a node's vector, label, level and upper-level link storage are written by
//! the one thread that allocated the slot, before any link to the node is stored (links are
//! stored with `Release` and loaded with `Acquire`), so every node a reader can reach is complete.

use super::pages::PageBuf;
use parking_lot::Mutex;
use std::alloc::{alloc_zeroed, Layout};
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

pub const MAX_SEGMENTS: usize = 40;
pub const MAX_LEVEL: usize = 15;
pub const FLAG_DELETED: u8 = 1;
/// Set on a tombstone once its neighbours' links were repaired (only then may it be unlinked).
pub const FLAG_REPAIRED: u8 = 2;
/// Set on a tombstone whose slot is on the free list (unreachable, waiting for reuse).
pub const FLAG_FREE: u8 = 4;

/// The error for a refused allocation (maps to `ValueError` in Python; the index is unchanged).
pub fn out_of_memory(bytes: usize, what: &str) -> crate::Error {
    crate::invalid!(
        "cannot allocate {bytes} bytes for the index {what} (out of memory or over the process \
         memory limit); use a smaller capacity or free memory"
    )
}

pub struct Segment {
    /// `stride` floats per node.
    vectors: PageBuf,
    /// Traversal codes, `code_bytes` per node (see `quant.rs`): allocated with the segment once
    /// the graph's codes are chosen, and for the segments that exist then by `init_codes`.
    codes: OnceLock<PageBuf>,
    /// `l0_width` u32 atomics per node (a zeroed `AtomicU32` is 0).
    links0: PageBuf,
    labels: Box<[AtomicU64]>,
    flags: Box<[AtomicU8]>,
    levels: Box<[AtomicU8]>,
    upper: Box<[AtomicPtr<AtomicU32>]>,
    locks: Box<[Mutex<()>]>,
}

// SAFETY: the raw vector buffer is written only by the slot owner before publication and is
// read-only afterwards; every other field is atomic or a lock.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

fn boxed<T>(n: usize, f: impl Fn() -> T) -> Box<[T]> {
    (0..n).map(|_| f()).collect()
}

/// Marker for types whose all-zero bit pattern is a valid initial value.
///
/// # Safety
/// Implement only for types where zeroed memory is a valid, meaningful value.
unsafe trait Zeroable {}
unsafe impl Zeroable for AtomicU32 {}
unsafe impl Zeroable for AtomicU64 {}
unsafe impl Zeroable for AtomicU8 {}
unsafe impl<T> Zeroable for AtomicPtr<T> {}
// parking_lot's raw mutex is one byte, 0 = unlocked.
unsafe impl Zeroable for Mutex<()> {}

/// A zeroed boxed slice straight from the allocator: large segments come from fresh pages, so
/// slots not used yet cost address space, not resident memory.
fn zeroed<T: Zeroable>(n: usize) -> crate::Result<Box<[T]>> {
    if n == 0 || std::mem::size_of::<T>() == 0 {
        return Ok(boxed(n, || unreachable_zero()));
    }
    let layout = Layout::array::<T>(n)
        .map_err(|_| crate::invalid!("a segment of {n} nodes is too large"))?;
    // SAFETY: non-zero size; T is Zeroable, so zeroed memory is a valid [T; n]; the pointer and
    // layout match what Box<[T]> frees with.
    unsafe {
        let p = alloc_zeroed(layout) as *mut T;
        if p.is_null() {
            return Err(out_of_memory(layout.size(), "node table"));
        }
        Ok(Box::from_raw(std::ptr::slice_from_raw_parts_mut(p, n)))
    }
}

/// Bytes of `n` nodes at `per` bytes each.
fn bytes(n: usize, per: usize) -> crate::Result<usize> {
    n.checked_mul(per)
        .ok_or_else(|| crate::invalid!("a segment of {n} nodes x {per} bytes is too large"))
}

fn unreachable_zero<T>() -> T {
    unreachable!("zero-length segments are never allocated")
}

/// Everything a reader needs to address one node.
pub struct Store {
    pub stride: usize,
    /// Bytes of traversal code per node (`Codec::code_bytes`); 0 until the codes are chosen.
    /// Only read for a code of a graph whose codes are set, so every segment has its buffer.
    code_bytes: AtomicUsize,
    /// `M0 + 1` u32 per node: count, then the links.
    pub l0_width: usize,
    /// `M + 1` u32 per upper level.
    pub up_width: usize,
    base_shift: u32,
    segments: [AtomicPtr<Segment>; MAX_SEGMENTS],
    grow: Mutex<()>,
    upper_bytes: AtomicUsize,
}

impl Drop for Store {
    fn drop(&mut self) {
        for (s, p) in self.segments.iter().enumerate() {
            let p = p.load(Ordering::Acquire);
            if p.is_null() {
                continue;
            }
            // SAFETY: created by Box::into_raw in `ensure`; we are the last owner.
            let seg = unsafe { Box::from_raw(p) };
            let n = self.seg_len(s);
            for i in 0..n {
                let up = seg.upper[i].load(Ordering::Acquire);
                if !up.is_null() {
                    let len = seg.levels[i].load(Ordering::Acquire) as usize * self.up_width;
                    // SAFETY: allocated in `set_level` as a boxed slice of exactly this length.
                    unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(up, len))) };
                }
            }
        }
    }
}

impl Store {
    /// Floats per stored row for `dim`: zero-padded to a multiple of 16 (no kernel tail loop).
    pub fn stride_of(dim: usize) -> usize {
        dim.div_ceil(16) * 16
    }

    /// A store with `code_bytes` of traversal code per node (0: none until `init_codes`).
    pub fn new(dim: usize, m: usize, capacity: usize, code_bytes: usize) -> Self {
        let base = capacity.clamp(64, 1 << 24).next_power_of_two();
        Store {
            stride: Self::stride_of(dim),
            code_bytes: AtomicUsize::new(code_bytes),
            l0_width: 2 * m + 1,
            up_width: m + 1,
            base_shift: base.trailing_zeros(),
            segments: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            grow: Mutex::new(()),
            upper_bytes: AtomicUsize::new(0),
        }
    }

    fn seg_len(&self, s: usize) -> usize {
        1usize << (self.base_shift as usize + s)
    }

    /// Largest number of slots this store can ever hold.
    pub fn max_slots(&self) -> usize {
        ((1usize << (self.base_shift as usize + MAX_SEGMENTS)) - (1usize << self.base_shift))
            .min(u32::MAX as usize - 1)
    }

    #[inline(always)]
    fn locate(&self, i: u32) -> (usize, usize) {
        let j = i as usize + (1usize << self.base_shift);
        let top = usize::BITS - 1 - j.leading_zeros();
        ((top - self.base_shift) as usize, j - (1usize << top))
    }

    /// Make sure the segment holding slot `i` exists (allocates at most once per segment).
    /// A refused allocation is an error and leaves the store as it was.
    pub fn ensure(&self, i: u32) -> crate::Result<()> {
        let (s, _) = self.locate(i);
        if !self.segments[s].load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let _g = self.grow.lock();
        if !self.segments[s].load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let n = self.seg_len(s);
        let codes = OnceLock::new();
        let cb = self.code_bytes.load(Ordering::Acquire);
        if cb > 0 {
            let buf = PageBuf::zeroed(bytes(n, cb)?, "codes")?;
            codes.get_or_init(|| buf);
        }
        let seg = Box::new(Segment {
            vectors: PageBuf::zeroed(bytes(n, self.stride * 4)?, "vectors")?,
            codes,
            links0: PageBuf::zeroed(bytes(n, self.l0_width * 4)?, "links")?,
            labels: zeroed(n)?,
            flags: zeroed(n)?,
            levels: zeroed(n)?,
            upper: zeroed(n)?,
            locks: zeroed(n)?,
        });
        self.segments[s].store(Box::into_raw(seg), Ordering::Release);
        Ok(())
    }

    #[inline(always)]
    fn seg(&self, i: u32) -> (&Segment, usize) {
        let (s, o) = self.locate(i);
        let p = self.segments[s].load(Ordering::Acquire);
        debug_assert!(!p.is_null());
        // SAFETY: slots are only addressed after `ensure`; segments live as long as the store.
        (unsafe { &*p }, o)
    }

    #[inline(always)]
    pub fn vector(&self, i: u32) -> &[f32] {
        let (seg, o) = self.seg(i);
        // SAFETY: in bounds of the segment; content is immutable once the node is published.
        unsafe {
            std::slice::from_raw_parts(
                (seg.vectors.ptr() as *mut f32).add(o * self.stride),
                self.stride,
            )
        }
    }

    #[inline(always)]
    pub fn vector_ptr(&self, i: u32) -> *const f32 {
        let (seg, o) = self.seg(i);
        // SAFETY: in bounds of the segment.
        unsafe { (seg.vectors.ptr() as *mut f32).add(o * self.stride) }
    }

    /// Slot `i`'s code buffer and length. Only called once the graph's codes are set: by then
    /// every segment has its buffer (`init_codes`, `ensure`).
    #[inline(always)]
    fn code_at(&self, i: u32) -> (*mut u8, usize) {
        let (seg, o) = self.seg(i);
        let cb = self.code_bytes.load(Ordering::Relaxed);
        let buf = seg
            .codes
            .get()
            .expect("a code is read only once the codes exist");
        // SAFETY: `o` is in the segment, whose buffer holds `cb` bytes per node.
        (unsafe { buf.ptr().add(o * cb) }, cb)
    }

    /// Bytes of traversal code per node (0 until the codes are chosen).
    #[inline(always)]
    pub fn code_len(&self) -> usize {
        self.code_bytes.load(Ordering::Relaxed)
    }

    /// The code of slot `i` (searches go through `code_ptr` and `code_len`).
    #[cfg(test)]
    pub fn code(&self, i: u32) -> &[u8] {
        let (p, cb) = self.code_at(i);
        // SAFETY: in bounds; written only before the codes are published (see `write_code`).
        unsafe { std::slice::from_raw_parts(p, cb) }
    }

    /// Cache lines of one float row (what a prefetch of a row covers).
    pub fn vector_lines(&self) -> usize {
        (self.stride * 4).div_ceil(64)
    }

    #[inline(always)]
    pub fn code_ptr(&self, i: u32) -> *const f32 {
        self.code_at(i).0 as *const f32
    }

    /// Fill the code of slot `i`. The caller either owns the unpublished slot, or calibrates
    /// while no writer runs and before the graph's codes are published (readers never read a
    /// code before `Graph::quant` is set).
    pub fn write_code(&self, i: u32, f: impl FnOnce(&mut [u8])) {
        let (p, cb) = self.code_at(i);
        // SAFETY: in bounds; exclusive by the caller's contract above.
        f(unsafe { std::slice::from_raw_parts_mut(p, cb) });
    }

    /// Give every node `code_bytes` of code from now on: a buffer for each existing segment
    /// (all allocated before any is installed, so a refused allocation changes nothing) and
    /// for every later one. Called once, when the graph's codes are chosen, while no writer
    /// runs; a no-op when the size is set already.
    pub fn init_codes(&self, code_bytes: usize) -> crate::Result<()> {
        let _g = self.grow.lock();
        if self.code_bytes.load(Ordering::Acquire) != 0 {
            return Ok(());
        }
        let mut fresh = Vec::new();
        for (s, p) in self.segments.iter().enumerate() {
            let p = p.load(Ordering::Acquire);
            if !p.is_null() {
                let n = self.seg_len(s);
                fresh.push((p, PageBuf::zeroed(bytes(n, code_bytes)?, "codes")?));
            }
        }
        for (p, buf) in fresh {
            // SAFETY: a published segment, alive as long as the store.
            unsafe { &*p }.codes.get_or_init(|| buf);
        }
        self.code_bytes.store(code_bytes, Ordering::Release);
        Ok(())
    }

    /// Write the vector of a slot the caller owns and has not published yet.
    pub fn write_vector(&self, i: u32, v: &[f32]) {
        let (seg, o) = self.seg(i);
        let n = v.len().min(self.stride);
        // SAFETY: the caller owns slot `i` exclusively until it links it (publication rule).
        unsafe {
            let dst = (seg.vectors.ptr() as *mut f32).add(o * self.stride);
            std::ptr::copy_nonoverlapping(v.as_ptr(), dst, n);
            std::ptr::write_bytes(dst.add(n), 0, self.stride - n);
        }
    }

    #[inline(always)]
    pub fn links(&self, i: u32, level: usize) -> &[AtomicU32] {
        let (seg, o) = self.seg(i);
        if level == 0 {
            // SAFETY: in bounds (`l0_width` per node); zeroed memory is a valid AtomicU32 array
            // and every access to it is atomic.
            unsafe {
                std::slice::from_raw_parts(
                    (seg.links0.ptr() as *const AtomicU32).add(o * self.l0_width),
                    self.l0_width,
                )
            }
        } else {
            let p = seg.upper[o].load(Ordering::Acquire);
            let lv = seg.levels[o].load(Ordering::Acquire) as usize;
            if p.is_null() || level > lv {
                return &[];
            }
            // SAFETY: allocated in `set_level` with `lv * up_width` entries, never freed before the store.
            unsafe { std::slice::from_raw_parts(p.add((level - 1) * self.up_width), self.up_width) }
        }
    }

    /// Set the level of a slot the caller owns and has not published yet, with empty upper
    /// lists. A reused slot keeps its upper block when the level matches, else frees it.
    pub fn set_level(&self, i: u32, level: usize) {
        let (seg, o) = self.seg(i);
        let old = seg.upper[o].load(Ordering::Acquire);
        let old_lv = seg.levels[o].load(Ordering::Acquire) as usize;
        seg.levels[o].store(level as u8, Ordering::Release);
        if !old.is_null() {
            let len = old_lv * self.up_width;
            if old_lv == level {
                // SAFETY: allocated below with `old_lv * up_width` entries; still owned by the slot.
                let lists = unsafe { std::slice::from_raw_parts(old, len) };
                lists.iter().for_each(|x| x.store(0, Ordering::Release));
                return;
            }
            seg.upper[o].store(std::ptr::null_mut(), Ordering::Release);
            self.upper_bytes.fetch_sub(len * 4, Ordering::Relaxed);
            // SAFETY: allocated below as a boxed slice of exactly this length; the slot is
            // unreachable (free-list reuse happens after a grace period), so no reader holds it.
            unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(old, len))) };
        }
        if level > 0 {
            let b: Box<[AtomicU32]> = boxed(level * self.up_width, || AtomicU32::new(0));
            self.upper_bytes
                .fetch_add(level * self.up_width * 4, Ordering::Relaxed);
            let p = Box::into_raw(b) as *mut AtomicU32;
            seg.upper[o].store(p, Ordering::Release);
        }
    }

    /// Empty the level-0 list of a slot being reused (unreachable, owned by the caller).
    pub fn clear_links0(&self, i: u32) {
        self.links(i, 0)
            .iter()
            .for_each(|x| x.store(0, Ordering::Release));
    }

    #[inline(always)]
    pub fn level(&self, i: u32) -> usize {
        let (seg, o) = self.seg(i);
        seg.levels[o].load(Ordering::Acquire) as usize
    }

    #[inline(always)]
    pub fn label(&self, i: u32) -> u64 {
        let (seg, o) = self.seg(i);
        seg.labels[o].load(Ordering::Acquire)
    }

    pub fn set_label(&self, i: u32, l: u64) {
        let (seg, o) = self.seg(i);
        seg.labels[o].store(l, Ordering::Release);
    }

    #[inline(always)]
    pub fn is_deleted(&self, i: u32) -> bool {
        let (seg, o) = self.seg(i);
        seg.flags[o].load(Ordering::Acquire) & FLAG_DELETED != 0
    }

    pub fn flags(&self, i: u32) -> u8 {
        let (seg, o) = self.seg(i);
        seg.flags[o].load(Ordering::Acquire)
    }

    pub fn set_flag(&self, i: u32, f: u8) {
        let (seg, o) = self.seg(i);
        seg.flags[o].fetch_or(f, Ordering::AcqRel);
    }

    pub fn clear_flags(&self, i: u32) {
        let (seg, o) = self.seg(i);
        seg.flags[o].store(0, Ordering::Release);
    }

    /// Returns true when this call marked the node (it was live before).
    pub fn mark_deleted(&self, i: u32) -> bool {
        let (seg, o) = self.seg(i);
        seg.flags[o].fetch_or(FLAG_DELETED, Ordering::AcqRel) & FLAG_DELETED == 0
    }

    pub fn lock(&self, i: u32) -> parking_lot::MutexGuard<'_, ()> {
        let (seg, o) = self.seg(i);
        seg.locks[o].lock()
    }

    /// Bytes allocated: segments (vectors, codes, level-0 links, labels, flags, locks) + upper
    /// links.
    pub fn allocated_bytes(&self) -> usize {
        let mut total = self.upper_bytes.load(Ordering::Relaxed);
        for (s, p) in self.segments.iter().enumerate() {
            if !p.load(Ordering::Acquire).is_null() {
                total += self.seg_len(s)
                    * (self.stride * 4
                        + self.code_bytes.load(Ordering::Relaxed)
                        + self.l0_width * 4
                        + 8
                        + 1
                        + 1
                        + 8
                        + 1);
            }
        }
        total
    }
}

/// Read a link list: `(count, links)` where every returned id was stored by a writer.
#[inline(always)]
pub fn read_links(list: &[AtomicU32], out: &mut [u32]) -> usize {
    if list.is_empty() {
        return 0;
    }
    let n = (list[0].load(Ordering::Acquire) as usize)
        .min(list.len() - 1)
        .min(out.len());
    for j in 0..n {
        out[j] = list[j + 1].load(Ordering::Acquire);
    }
    n
}

/// Replace a link list; the caller holds the node's lock.
pub fn write_links(list: &[AtomicU32], ids: &[u32]) {
    let n = ids.len().min(list.len() - 1);
    for j in 0..n {
        list[j + 1].store(ids[j], Ordering::Release);
    }
    list[0].store(n as u32, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_is_contiguous_across_segments() {
        let st = Store::new(3, 4, 64, 0);
        let mut prev = (0usize, 0usize);
        for i in 0..10_000u32 {
            let (s, o) = st.locate(i);
            if i > 0 {
                assert!(
                    (s == prev.0 && o == prev.1 + 1) || (s == prev.0 + 1 && o == 0),
                    "{i}: {prev:?} -> {:?}",
                    (s, o)
                );
            }
            assert!(o < st.seg_len(s));
            prev = (s, o);
        }
    }

    #[test]
    fn vectors_survive_growth() {
        let st = Store::new(5, 4, 64, 32);
        for i in 0..1000u32 {
            st.ensure(i).unwrap();
            st.write_vector(i, &[i as f32; 5]);
            st.set_level(i, (i % 3) as usize);
        }
        for i in 0..1000u32 {
            assert_eq!(st.vector(i)[..5], [i as f32; 5]);
            assert_eq!(st.vector(i).len(), 16);
            assert_eq!(st.links(i, 2).len(), if i % 3 == 2 { 5 } else { 0 });
        }
    }
}
