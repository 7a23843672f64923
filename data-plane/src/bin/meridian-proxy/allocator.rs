//! The proxy's global allocator: mimalloc, called so that ordinary allocations take its
//! fast path.
//!
//! mimalloc's per-thread free lists suit the request path, which allocates and frees the
//! same few sizes on each worker thread (BENCHMARKS.md, session 7). The `mimalloc` crate
//! asks `mi_malloc_aligned` for every allocation, and that call is fast only for blocks
//! up to 1 KiB whose page has a free block ready at the right alignment; everything else
//! (a call's boxed retry future, a connection's per-stream entry, any block whose page
//! must first be refilled) went through mimalloc's generic aligned path, which allocates
//! `size + align - 1` bytes and aligns inside them. Here a layout that mimalloc's natural
//! alignment already covers goes to plain `mi_malloc`: every block of 16 bytes or more is
//! 16-byte aligned, smaller ones 8-byte aligned (`MI_MAX_ALIGN_SIZE`, and the rounding of
//! its size classes to two words) — the rule std's `System` allocator applies to
//! `malloc`. Only layouts aligned beyond that use the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least this many bytes has.
const NATURAL_ALIGN: usize = 16;

/// mimalloc as the global allocator (see the module doc).
pub struct MiMalloc;

/// Whether a block of `size` bytes from plain `mi_malloc` is aligned enough for `align`.
fn naturally_aligned(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

// SAFETY: every pointer handed out comes from mimalloc and is freed or resized by mimalloc
// (`mi_free` and `mi_realloc*` accept blocks of any of its allocation calls); a block's
// alignment is at least the layout's, by mimalloc's guarantee above or its aligned calls.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; a null result is passed on as allocation failure.
        unsafe {
            if naturally_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if naturally_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (GlobalAlloc's contract).
        unsafe {
            if naturally_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        let allocator = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1, 7, 8, 9, 15, 16, 17, 24, 40, 100, 1024, 1500, 2736, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero layout; the block is written within it, then freed
                // with the same allocator.
                unsafe {
                    let block = allocator.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size}, align {align}");
                    block.write_bytes(0xa5, size);
                    let grown = allocator.realloc(block, layout, size * 3);
                    assert_eq!(
                        grown as usize % align,
                        0,
                        "grown: size {size}, align {align}"
                    );
                    assert_eq!(*grown.add(size - 1), 0xa5, "realloc keeps the contents");
                    allocator.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let zeroed = allocator.alloc_zeroed(layout);
                    assert_eq!(
                        zeroed as usize % align,
                        0,
                        "zeroed: size {size}, align {align}"
                    );
                    assert!((0..size).all(|i| *zeroed.add(i) == 0));
                    allocator.dealloc(zeroed, layout);
                }
            }
        }
    }
}
