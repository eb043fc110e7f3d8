//! The CPU backend's KV cache: one pool of pages per layer, shared by every sequence, as on the
//! GPU. A sequence owns a list of pages (page i holds its positions i * PAGE_SIZE ..
//! (i + 1) * PAGE_SIZE); the scheduler hands them out. [`KvCache`] is the one-sequence form that
//! `generate`, `perplexity` and the tests drive: a pool whose pages all belong to one sequence, in
//! order.
//!
//! Attention reads a sequence's keys as one [len, n_head_kv, head_dim] array: where its pages are
//! consecutive in the pool (always, for [`KvCache`]) that is a slice of the pool, else a copy.

use std::borrow::Cow;

/// Positions per page: the GPU's page size, so that one scheduler serves both backends.
pub const PAGE_SIZE: usize = host::attention::PAGE_SIZE;

/// Keys and values of every layer, [n_pages * PAGE_SIZE, n_head_kv, head_dim] f32 each.
pub struct KvPool {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    n_pages: usize,
    /// f32 elements of one position (n_head_kv * head_dim).
    row: usize,
    /// Round what is written to f16, as a cache stored in f16 would hold it.
    f16: bool,
}

impl KvPool {
    pub fn new(n_layer: usize, n_pages: usize, n_head_kv: usize, head_dim: usize, f16: bool) -> Self {
        let row = n_head_kv * head_dim;
        let len = n_pages * PAGE_SIZE * row;
        KvPool {
            keys: vec![vec![0.0; len]; n_layer],
            values: vec![vec![0.0; len]; n_layer],
            n_pages,
            row,
            f16,
        }
    }

    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    /// Bytes of one page over every layer, keys and values, for a model of this shape.
    pub fn page_bytes(n_layer: usize, n_head_kv: usize, head_dim: usize) -> usize {
        2 * n_layer * PAGE_SIZE * n_head_kv * head_dim * std::mem::size_of::<f32>()
    }

    /// Stores one position's k and v [n_head_kv * head_dim] of `layer` at `position` of the
    /// sequence whose pages are `pages`.
    pub fn write(&mut self, layer: usize, pages: &[u32], position: usize, k: &[f32], v: &[f32]) {
        let slot = pages[position / PAGE_SIZE] as usize * PAGE_SIZE + position % PAGE_SIZE;
        let start = slot * self.row;
        let f16 = self.f16;
        let round = |x: f32| if f16 { crate::cpu::attention::round_f16(x) } else { x };
        for (destination, &x) in self.keys[layer][start..start + self.row].iter_mut().zip(k) {
            *destination = round(x);
        }
        for (destination, &x) in self.values[layer][start..start + self.row].iter_mut().zip(v) {
            *destination = round(x);
        }
    }

    /// Keys and values [len, n_head_kv, head_dim] of layer `layer` for a sequence's positions
    /// 0..len: borrowed where its pages are consecutive, gathered otherwise.
    pub fn sequence(&self, layer: usize, pages: &[u32], len: usize) -> (Cow<'_, [f32]>, Cow<'_, [f32]>) {
        let used = &pages[..len.div_ceil(PAGE_SIZE)];
        let consecutive = used.windows(2).all(|w| w[1] == w[0] + 1);
        let row = self.row;
        fn view<'p>(
            pool: &'p [f32],
            used: &[u32],
            consecutive: bool,
            len: usize,
            row: usize,
        ) -> Cow<'p, [f32]> {
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
        let view = |pool| view(pool, used, consecutive, len, row);
        (view(&self.keys[layer]), view(&self.values[layer]))
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
        let mut pool = KvPool::new(1, 4, 1, 2, false);
        // A sequence on pages 3 then 1: positions 0..16 on page 3, 16..20 on page 1.
        let pages = [3, 1];
        for p in 0..20 {
            let x = [p as f32, -(p as f32)];
            pool.write(0, &pages, p, &x, &x);
        }
        let (keys, values) = pool.sequence(0, &pages, 20);
        assert!(matches!(keys, Cow::Owned(_)));
        let expected: Vec<f32> = (0..20).flat_map(|p| [p as f32, -(p as f32)]).collect();
        assert_eq!(&*keys, &expected[..]);
        assert_eq!(&*values, &expected[..]);
        // Consecutive pages are read in place.
        pool.write(0, &[0, 1], 0, &[7.0, 8.0], &[7.0, 8.0]);
        assert!(matches!(pool.sequence(0, &[0, 1], 17).0, Cow::Borrowed(_)));
    }
}
