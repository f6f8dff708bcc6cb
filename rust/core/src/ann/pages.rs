//! Zeroed, 64-byte aligned buffers for the node segments (vectors, traversal codes, level-0
//! links). Large buffers are mapped straight from the kernel on Linux: their pages are zero and
//! faulted in on first touch (a segment's unused tail costs address space, not resident
//! memory), and they are 2 MiB aligned and advised as transparent huge pages
//! (`MADV_HUGEPAGE`), because a search touches a few thousand random nodes across the whole
//! index and with 4 KiB pages nearly every one of those touches is also a TLB miss (a page-table
//! walk on top of the cache miss). Small buffers and other systems use the allocator.

use std::alloc::{alloc_zeroed, dealloc, Layout};

/// Buffers from this size up are mapped (and huge-page advised) rather than allocated.
const MAP_FROM: usize = HUGE;
const HUGE: usize = 1 << 21;

pub struct PageBuf {
    ptr: *mut u8,
    kind: Kind,
}

enum Kind {
    Heap(Layout),
    #[cfg(target_os = "linux")]
    Mapped {
        base: *mut libc::c_void,
        len: usize,
    },
}

// SAFETY: a plain owned allocation; the store's publication rule governs access to its bytes.
unsafe impl Send for PageBuf {}
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// `len` zero bytes, 64-byte aligned, or an error when the memory is refused (never an
    /// abort). `what` names the buffer in the error.
    pub fn zeroed(len: usize, what: &str) -> crate::Result<Self> {
        #[cfg(target_os = "linux")]
        if len >= MAP_FROM {
            return map(len, what);
        }
        let layout = Layout::from_size_align(len.max(1), 64)
            .map_err(|_| crate::invalid!("a segment of {len} bytes of {what} is too large"))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(super::store::out_of_memory(layout.size(), what));
        }
        Ok(PageBuf {
            ptr,
            kind: Kind::Heap(layout),
        })
    }

    #[inline(always)]
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

/// An anonymous private mapping of `len` bytes (rounded up to whole huge pages), starting on a
/// huge-page boundary, advised for transparent huge pages. The advice is best effort: a kernel
/// without THP (or with it off) keeps 4 KiB pages and the buffer works the same.
#[cfg(target_os = "linux")]
fn map(len: usize, what: &str) -> crate::Result<PageBuf> {
    let rounded = len
        .checked_next_multiple_of(HUGE)
        .and_then(|r| r.checked_add(HUGE))
        .ok_or_else(|| crate::invalid!("a segment of {len} bytes of {what} is too large"))?;
    // SAFETY: a fresh anonymous mapping; no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            rounded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(super::store::out_of_memory(rounded, what));
    }
    let skip = (base as usize).next_multiple_of(HUGE) - base as usize;
    // SAFETY: `skip + len <= rounded`: the aligned start and the buffer lie inside the mapping.
    let ptr = unsafe { (base as *mut u8).add(skip) };
    // SAFETY: advice on our own mapping; its result only says whether THP applies, and a
    // refusal leaves ordinary pages, which is correct, so it is not an error to report.
    unsafe {
        libc::madvise(
            ptr as *mut libc::c_void,
            rounded - skip,
            libc::MADV_HUGEPAGE,
        )
    };
    Ok(PageBuf {
        ptr,
        kind: Kind::Mapped { base, len: rounded },
    })
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        match self.kind {
            // SAFETY: allocated in `zeroed` with this layout.
            Kind::Heap(layout) => unsafe { dealloc(self.ptr, layout) },
            #[cfg(target_os = "linux")]
            Kind::Mapped { base, len } => {
                // SAFETY: the whole mapping made in `map`; nothing borrows it past the owner.
                let rc = unsafe { libc::munmap(base, len) };
                debug_assert_eq!(rc, 0, "munmap of an index segment failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_aligned_and_writable() {
        for len in [0, 1, 100, MAP_FROM - 1, MAP_FROM, 3 * MAP_FROM + 17] {
            let b = PageBuf::zeroed(len, "test").unwrap();
            assert_eq!(b.ptr() as usize % 64, 0, "{len}");
            // SAFETY: `len` bytes owned by `b`.
            let s = unsafe { std::slice::from_raw_parts_mut(b.ptr(), len) };
            assert!(s.iter().all(|&x| x == 0), "{len}");
            s.iter_mut().for_each(|x| *x = 7);
            assert!(s.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn large_buffers_start_on_a_huge_page() {
        let b = PageBuf::zeroed(4 * MAP_FROM, "test").unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(b.ptr() as usize % HUGE, 0);
        }
    }

    #[test]
    fn an_impossible_size_is_an_error() {
        assert!(PageBuf::zeroed(usize::MAX - 10, "test").is_err());
    }
}
