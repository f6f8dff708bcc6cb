//! Per-thread, 64-byte aligned scratch for the ranker's activation blocks, so a predict call on
//! the hot path allocates nothing once a thread has served its first request.

use std::cell::RefCell;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable, 64-byte aligned f32 buffer.
#[derive(Default)]
pub struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    /// A zeroed buffer of at least `len` floats.
    pub fn zeroed(len: usize) -> Self {
        Self {
            lines: vec![Line([0.0; 16]); len.div_ceil(16)],
        }
    }

    /// Grows (never shrinks) to at least `len` floats and returns the whole buffer.
    pub fn ensure(&mut self, len: usize) -> &mut [f32] {
        let need = len.div_ceil(16);
        if self.lines.len() < need {
            self.lines.resize(need, Line([0.0; 16]));
        }
        self.as_mut_slice()
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over 16 f32 with no padding.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * 16) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as above; unique borrow.
        unsafe {
            std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), self.lines.len() * 16)
        }
    }

    /// A buffer holding exactly `v` (padded to a multiple of 16 with zeros).
    pub fn from_slice(v: &[f32]) -> Self {
        let mut b = Self::zeroed(v.len());
        b.as_mut_slice()[..v.len()].copy_from_slice(v);
        b
    }
}

thread_local! {
    static SCRATCH: RefCell<AlignedBuf> = RefCell::new(AlignedBuf::default());
}

/// Runs `f` with this thread's scratch buffer grown to `len` floats (contents unspecified).
pub fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf.ensure(len)[..len]),
        // Re-entrant use (not expected): fall back to a private buffer rather than panic.
        Err(_) => f(&mut AlignedBuf::zeroed(len).as_mut_slice()[..len]),
    })
}
