//! The CPU backend's KV cache: one pool of pages per layer, shared by every sequence, as on the
//! GPU. A sequence owns a list of pages (page i holds its positions i * PAGE_SIZE ..
//! (i + 1) * PAGE_SIZE); the scheduler hands them out. [`KvCache`] is the one-sequence form that
//! `generate`, `perplexity` and the tests drive: a pool whose pages all belong to one sequence, in
//! order.
//!
//! The `llama-cpp` numerics keep the cache in f16, as llama.cpp does (half the memory, half the
//! bytes attention reads); the `exact` numerics in f32. Attention reads a sequence's keys as one
//! [len, n_head_kv, head_dim] array ([`KvRows`]): where its pages are consecutive in the pool
//! (always, for [`KvCache`]) that is a slice of the pool, else a copy.

use half::f16;
use std::borrow::Cow;

/// Positions per page: the GPU's page size, so that one scheduler serves both backends.
pub const PAGE_SIZE: usize = host::attention::PAGE_SIZE;

/// Keys and values of every layer, [n_pages * PAGE_SIZE, n_head_kv, head_dim] each.
pub struct KvPool {
    store: Store,
    n_pages: usize,
    /// Elements of one position (n_head_kv * head_dim).
    row: usize,
}

/// The pool's arrays, per layer: f32, or f16 bits (written rounded to nearest even). Each is
/// allocated zeroed on its own (calloc: the OS hands out zero pages as they are first touched),
/// so a pool sized for a long context takes resident memory only for the positions written.
enum Store {
    F32 { keys: Vec<Vec<f32>>, values: Vec<Vec<f32>> },
    F16 { keys: Vec<Vec<u16>>, values: Vec<Vec<u16>> },
}

/// f16 bits as f16 (the same 16 bits).
fn as_f16(bits: &[u16]) -> &[f16] {
    half::slice::HalfBitsSliceExt::reinterpret_cast(bits)
}

fn as_f16_mut(bits: &mut [u16]) -> &mut [f16] {
    half::slice::HalfBitsSliceExt::reinterpret_cast_mut(bits)
}

/// A sequence's keys or values of one layer, [len, n_head_kv, head_dim], in the pool's precision.
pub enum KvRows<'a> {
    F32(Cow<'a, [f32]>),
    F16(Cow<'a, [f16]>),
}

impl KvRows<'_> {
    /// The rows as f32: the f32 pool's in place, the f16 pool's converted (exactly).
    pub fn f32(&self) -> Cow<'_, [f32]> {
        match self {
            KvRows::F32(rows) => Cow::Borrowed(rows),
            KvRows::F16(rows) => {
                let mut out = vec![0.0f32; rows.len()];
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&rows[..], &mut out);
                Cow::Owned(out)
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(rows) => rows.len(),
            KvRows::F16(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KvPool {
    /// A pool of `n_pages` pages; `f16` keeps it in f16.
    pub fn new(n_layer: usize, n_pages: usize, n_head_kv: usize, head_dim: usize, f16: bool) -> Self {
        let row = n_head_kv * head_dim;
        let len = n_pages * PAGE_SIZE * row;
        // Not vec![vec![..]; n_layer], which would clone (and so touch) every layer but the last.
        let store = if f16 {
            let zeroed = || (0..n_layer).map(|_| vec![0u16; len]).collect();
            Store::F16 { keys: zeroed(), values: zeroed() }
        } else {
            let zeroed = || (0..n_layer).map(|_| vec![0.0f32; len]).collect();
            Store::F32 { keys: zeroed(), values: zeroed() }
        };
        KvPool { store, n_pages, row }
    }

    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    /// Bytes of one page over every layer, keys and values, for a model of this shape, in f16
    /// (`f16`) or f32.
    pub fn page_bytes(n_layer: usize, n_head_kv: usize, head_dim: usize, f16: bool) -> usize {
        let element = if f16 { 2 } else { 4 };
        2 * n_layer * PAGE_SIZE * n_head_kv * head_dim * element
    }

    /// Stores one position's k and v [n_head_kv * head_dim] of `layer` at `position` of the
    /// sequence whose pages are `pages`.
    pub fn write(&mut self, layer: usize, pages: &[u32], position: usize, k: &[f32], v: &[f32]) {
        let slot = pages[position / PAGE_SIZE] as usize * PAGE_SIZE + position % PAGE_SIZE;
        let range = slot * self.row..(slot + 1) * self.row;
        match &mut self.store {
            Store::F32 { keys, values } => {
                keys[layer][range.clone()].copy_from_slice(k);
                values[layer][range].copy_from_slice(v);
            }
            Store::F16 { keys, values } => {
                use half::slice::HalfFloatSliceExt;
                as_f16_mut(&mut keys[layer][range.clone()]).convert_from_f32_slice(k);
                as_f16_mut(&mut values[layer][range]).convert_from_f32_slice(v);
            }
        }
    }

    /// The keys and values of `layer` for the first `len` positions of the sequence whose pages
    /// are `pages`.
    pub fn sequence(&self, layer: usize, pages: &[u32], len: usize) -> (KvRows<'_>, KvRows<'_>) {
        let used = &pages[..len.div_ceil(PAGE_SIZE)];
        let consecutive = used.windows(2).all(|w| w[1] == w[0] + 1);
        let row = self.row;
        fn view<'p, T: Clone>(
            pool: &'p [T],
            used: &[u32],
            consecutive: bool,
            len: usize,
            row: usize,
        ) -> Cow<'p, [T]> {
            if consecutive {
                let first = used.first().map_or(0, |&p| p as usize) * PAGE_SIZE * row;
                return Cow::Borrowed(&pool[first..first + len * row]);
            }
            let mut gathered = Vec::with_capacity(len * row);
            for (i, &page) in used.iter().enumerate() {
                let positions = PAGE_SIZE.min(len - i * PAGE_SIZE);
                let first = page as usize * PAGE_SIZE * row;
                gathered.extend_from_slice(&pool[first..first + positions * row]);
            }
            Cow::Owned(gathered)
        }
        match &self.store {
            Store::F32 { keys, values } => (
                KvRows::F32(view(&keys[layer], used, consecutive, len, row)),
                KvRows::F32(view(&values[layer], used, consecutive, len, row)),
            ),
            Store::F16 { keys, values } => (
                KvRows::F16(view(as_f16(&keys[layer]), used, consecutive, len, row)),
                KvRows::F16(view(as_f16(&values[layer]), used, consecutive, len, row)),
            ),
        }
    }
}

/// One sequence's cache: a pool of `capacity` positions (whole pages), all its pages in order.
pub struct KvCache {
    pub pool: KvPool,
    /// Pages 0, 1, 2, ... of the pool.
    pub pages: Vec<u32>,
    /// Positions filled so far.
    pub len: usize,
    pub capacity: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, capacity: usize, n_head_kv: usize, head_dim: usize, f16: bool) -> Self {
        let n_pages = capacity.div_ceil(PAGE_SIZE);
        let pool = KvPool::new(n_layer, n_pages, n_head_kv, head_dim, f16);
        KvCache { pool, pages: (0..n_pages as u32).collect(), len: 0, capacity }
    }

    /// Forgets every position (a new sequence).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_pages_read_back_in_sequence_order() {
        for f16 in [false, true] {
            let mut pool = KvPool::new(1, 4, 1, 2, f16);
            // A sequence on pages 3 then 1: positions 0..16 on page 3, 16..20 on page 1.
            let pages = [3, 1];
            for p in 0..20 {
                let x = [p as f32, -(p as f32)];
                pool.write(0, &pages, p, &x, &x);
            }
            let (keys, values) = pool.sequence(0, &pages, 20);
            assert!(matches!(keys, KvRows::F32(Cow::Owned(_)) | KvRows::F16(Cow::Owned(_))));
            assert_eq!(matches!(keys, KvRows::F16(_)), f16);
            let expected: Vec<f32> = (0..20).flat_map(|p| [p as f32, -(p as f32)]).collect();
            assert_eq!(&*keys.f32(), &expected[..]);
            assert_eq!(&*values.f32(), &expected[..]);
            // Consecutive pages are read in place.
            pool.write(0, &[0, 1], 0, &[7.0, 8.0], &[7.0, 8.0]);
            assert!(matches!(
                pool.sequence(0, &[0, 1], 17).0,
                KvRows::F32(Cow::Borrowed(_)) | KvRows::F16(Cow::Borrowed(_))
            ));
        }
    }

    #[test]
    fn the_f16_pool_holds_what_an_f16_cache_holds() {
        // Rounded to nearest even as written, and converted back exactly.
        let mut pool = KvPool::new(1, 1, 1, 4, true);
        let k = [1.0f32 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65519.0, -1e-8];
        pool.write(0, &[0], 0, &k, &k);
        let (keys, _) = pool.sequence(0, &[0], 1);
        let expected: Vec<f32> = k.iter().map(|&x| crate::cpu::attention::round_f16(x)).collect();
        assert_eq!(&*keys.f32(), &expected[..]);
        assert_eq!(expected[..2], [1.0, 1.0 + 4.0 / 2048.0], "ties go to even");
        assert_eq!(KvPool::page_bytes(2, 1, 4, true) * 2, KvPool::page_bytes(2, 1, 4, false));
    }
}
