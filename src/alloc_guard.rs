//! A global allocator that serves very large allocations from lazily
//! committed memory.
//!
//! Why: the Kafka codecs pre-allocate `Vec::with_capacity(n)` from an array
//! length read off the wire before decoding any element (see
//! kafka-protocol-rs pull requests #152/#161/#200, open upstream). A 20-byte
//! request claiming two billion elements asks for hundreds of GiB; the system
//! allocator refuses, and a refused allocation aborts the process. Mapping
//! such requests with `MAP_NORESERVE` lets them succeed as address space only:
//! decoding then fails on the short buffer after touching a few pages, the
//! mapping is released, and the node stays up. Ordinary allocations go to the
//! system allocator unchanged.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped lazily.
const LAZY_FROM: usize = 256 << 20;
const PAGE: usize = 4096;

pub struct LazyLargeAlloc;

unsafe impl GlobalAlloc for LazyLargeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() < LAZY_FROM || layout.align() > PAGE {
            return unsafe { System.alloc(layout) };
        }
        // SAFETY: an anonymous private mapping with no address hint; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.size(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            ptr.cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < LAZY_FROM || layout.align() > PAGE {
            return unsafe { System.dealloc(ptr, layout) };
        }
        // SAFETY: `ptr` came from the mmap above with this same size.
        unsafe {
            libc::munmap(ptr.cast(), layout.size());
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < LAZY_FROM && new_size < LAZY_FROM && layout.align() <= PAGE {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold: allocate, copy, free, each by the rule above.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are valid for the smaller of the two sizes.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn absurd_capacity_is_address_space_only() {
        // 200 GiB, far beyond this machine's memory: must not abort.
        let v: Vec<u8> = Vec::with_capacity(200 << 30);
        assert!(v.capacity() >= 200 << 30);
        let mut small: Vec<u64> = Vec::with_capacity(4);
        small.extend(0..100_000u64);
        assert_eq!(small.iter().sum::<u64>(), 99_999 * 100_000 / 2);
    }
}
