//! Tests only: the system allocator, recording the largest allocation each
//! thread makes, so a test can check what a read allocates.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct LargestPerThread;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from inside
    // the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for LargestPerThread {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestPerThread = LargestPerThread;

/// The largest single allocation `f` made on this thread, and its result.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (usize, T) {
    LARGEST.with(|l| l.set(0));
    let result = f();
    (LARGEST.with(Cell::get), result)
}
