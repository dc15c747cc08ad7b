//! Tests only: the system allocator, recording per thread the largest
//! single allocation and the bytes allocated, so a test can check what a
//! piece of code allocates (deterministic, unlike a timing). A crate's unit
//! tests install it with
//! `#[cfg(test)] #[global_allocator] static A: TrackingAllocator = TrackingAllocator;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct TrackingAllocator;

thread_local! {
    // Const-initialised and without destructors: safe to touch from inside
    // the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(size)));
}

unsafe impl GlobalAlloc for TrackingAllocator {
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

/// The largest single allocation `f` made on this thread, and its result.
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (usize, T) {
    LARGEST.with(|l| l.set(0));
    let result = f();
    (LARGEST.with(Cell::get), result)
}

/// The bytes `f` allocated on this thread, and its result.
pub fn bytes_allocated<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = ALLOCATED.with(Cell::get);
    let result = f();
    (ALLOCATED.with(Cell::get) - before, result)
}
