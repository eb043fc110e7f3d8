//! A count in a GGUF file is a claim, not a fact: the reader must not reserve memory for it before
//! the items are there. Each file here is large (16 MiB) and its count fits in its bytes, so the
//! count passes the "can the rest of the file hold this many" check, but the first item is bad.
//! Reserving the claimed count up front would take tens to hundreds of MiB in one allocation;
//! a counting allocator checks that no allocation made while parsing comes near that.
//!
//! One test per binary: the allocator's record is global to the process.

use engine::gguf::{GgufError, GgufFile};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Largest;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Largest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Largest = Largest;

const FILE_BYTES: usize = 16 << 20;
/// The most one allocation may take while a hostile file is parsed: a small fraction of the file.
const LIMIT: usize = 2 << 20;

/// A file of `FILE_BYTES`: `head`, then `fill` to the end.
fn file(head: &[u8], fill: u8) -> Vec<u8> {
    let mut bytes = head.to_vec();
    bytes.resize(FILE_BYTES, fill);
    bytes
}

fn header(tensors: u64, kvs: u64) -> Vec<u8> {
    let mut h = b"GGUF".to_vec();
    h.extend(3u32.to_le_bytes());
    h.extend(tensors.to_le_bytes());
    h.extend(kvs.to_le_bytes());
    h
}

/// Parses `bytes` and returns the error and the largest allocation made while parsing.
fn parse_measured(bytes: Vec<u8>) -> (GgufError, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    let result = GgufFile::parse(bytes);
    let largest = LARGEST.load(Ordering::Relaxed);
    match result {
        Ok(_) => panic!("a hostile file parsed"),
        Err(e) => (e, largest),
    }
}

#[test]
fn claimed_counts_do_not_reserve_memory() {
    let remaining = (FILE_BYTES - 24) as u64;
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    // Metadata entries of 13 zero bytes each (empty key, type u8, value 0): the second one repeats
    // the empty key. Reserving the count: ~1.3 M entries of (String, Value).
    cases.push(("metadata count", file(&header(0, remaining / 13), 0)));

    // Tensor infos: a name of length 0, then 0 dimensions, an error at the first one.
    cases.push(("tensor count", file(&header(remaining / 24, 0), 0)));

    // Arrays as long as the file, each of a type whose first element is bad: bools that are 2,
    // strings whose length is u64::MAX, arrays of arrays of element type u32::MAX.
    for (element_type, fill, min_bytes) in [(7u32, 2u8, 1u64), (8, 0xFF, 8), (9, 0xFF, 12)] {
        let mut head = header(0, 1);
        head.extend(1u64.to_le_bytes());
        head.push(b'k');
        head.extend(9u32.to_le_bytes());
        head.extend(element_type.to_le_bytes());
        let count = (FILE_BYTES as u64 - head.len() as u64 - 8) / min_bytes;
        head.extend(count.to_le_bytes());
        cases.push(("array", file(&head, fill)));
    }

    for (what, bytes) in cases {
        let (error, largest) = parse_measured(bytes);
        assert!(largest <= LIMIT, "{what}: {error}: an allocation of {largest} bytes");
    }
}
