//! The paged f16 KV cache (`gpu/src/attention/paged.rs`): pools, block table, page allocator,
//! and the kernel that writes new tokens into the pools.

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::f16;

/// Positions per page (the kernels' `PAGE_SIZE`).
pub const PAGE_SIZE: usize = 16;

/// Block-table entry of a page not allocated; the kernels treat it as missing.
pub const NO_PAGE: u32 = u32::MAX;

/// The shape of one layer's pools: keys and values each [n_pages][n_head_kv][PAGE_SIZE][head_dim].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedKvShape {
    pub n_pages: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

impl PagedKvShape {
    /// f16 elements of one page (all KV heads).
    pub fn page_len(&self) -> usize {
        self.n_head_kv * PAGE_SIZE * self.head_dim
    }

    /// f16 elements of one pool (keys or values of one layer).
    pub fn pool_len(&self) -> usize {
        self.n_pages * self.page_len()
    }

    pub(crate) fn check(&self, kernel: &'static str) -> Result<()> {
        if !super::HEAD_DIMS.contains(&self.head_dim) {
            return Err(shape_error(
                kernel,
                format!("head_dim {} is not one of {:?}", self.head_dim, super::HEAD_DIMS),
            ));
        }
        if self.n_pages == 0 || self.n_head_kv == 0 {
            return Err(shape_error(kernel, "a cache needs at least one page and one KV head"));
        }
        // Page numbers and every element offset in a pool are computed in 32 and 64 bits on the
        // device; keep the pool addressable and the page numbers below NO_PAGE.
        if self.n_pages >= NO_PAGE as usize || self.pool_len().checked_mul(2).is_none() {
            return Err(shape_error(kernel, format!("{} pages are too many", self.n_pages)));
        }
        Ok(())
    }
}

/// Hands out the pages of a pool to sequences and keeps the block table: row s lists the pages of
/// sequence slot s in order (positions 16i..16i + 15 in entry i), `NO_PAGE` after its last.
/// Host-side only: the owner uploads the table after a change.
#[derive(Clone, Debug)]
pub struct PageAllocator {
    n_seq: usize,
    max_pages: usize,
    table: Vec<u32>,
    held: Vec<usize>,
    /// Free pages, taken from the end (the lowest numbers first).
    free: Vec<u32>,
}

impl PageAllocator {
    pub fn new(n_pages: usize, n_seq: usize, max_pages: usize) -> Result<Self> {
        const WHAT: &str = "PageAllocator";
        if n_seq == 0 || max_pages == 0 {
            return Err(shape_error(WHAT, "the block table needs at least one row and one column"));
        }
        if n_pages >= NO_PAGE as usize {
            return Err(shape_error(WHAT, format!("{n_pages} pages are too many")));
        }
        let cells = n_seq
            .checked_mul(max_pages)
            .filter(|&c| c <= u32::MAX as usize && max_pages * PAGE_SIZE <= u32::MAX as usize)
            .ok_or_else(|| {
                shape_error(WHAT, format!("a table of {n_seq} x {max_pages} pages is too large"))
            })?;
        Ok(PageAllocator {
            n_seq,
            max_pages,
            table: vec![NO_PAGE; cells],
            held: vec![0; n_seq],
            free: (0..n_pages as u32).rev().collect(),
        })
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn max_pages(&self) -> usize {
        self.max_pages
    }

    /// The block table, [n_seq, max_pages].
    pub fn table(&self) -> &[u32] {
        &self.table
    }

    /// Pages not held by any sequence.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Positions sequence `seq` can hold with the pages it has.
    pub fn capacity(&self, seq: usize) -> usize {
        self.held.get(seq).map_or(0, |&held| held * PAGE_SIZE)
    }

    /// Gives sequence `seq` pages for positions 0..len; returns whether its row of the table
    /// changed. Fails, taking nothing, where the row or the pool is too small.
    pub fn reserve(&mut self, seq: usize, len: usize) -> Result<bool> {
        const WHAT: &str = "PageAllocator::reserve";
        if seq >= self.n_seq {
            return Err(shape_error(WHAT, format!("sequence {seq} is out of range ({} slots)", self.n_seq)));
        }
        let needed = len.div_ceil(PAGE_SIZE);
        if needed > self.max_pages {
            return Err(shape_error(
                WHAT,
                format!("{len} positions need {needed} pages; a sequence holds at most {}", self.max_pages),
            ));
        }
        let held = self.held[seq];
        if needed <= held {
            return Ok(false);
        }
        if needed - held > self.free.len() {
            return Err(shape_error(
                WHAT,
                format!("sequence {seq} needs {} more pages and {} are free", needed - held, self.free.len()),
            ));
        }
        for entry in &mut self.table[seq * self.max_pages..][held..needed] {
            // Checked above: enough pages are free.
            *entry = self.free.pop().unwrap_or(NO_PAGE);
        }
        self.held[seq] = needed;
        Ok(true)
    }

    /// Returns every page of sequence `seq` to the pool; its row becomes empty.
    pub fn release(&mut self, seq: usize) {
        if seq >= self.n_seq {
            return;
        }
        let row = &mut self.table[seq * self.max_pages..][..self.max_pages];
        for entry in row[..self.held[seq]].iter_mut().rev() {
            self.free.push(*entry);
            *entry = NO_PAGE;
        }
        self.held[seq] = 0;
    }
}

/// A paged f16 KV cache on the GPU: per layer a key pool and a value pool of the same shape, and
/// one block table (shared by the layers: a sequence's page i holds the same positions in each).
pub struct PagedKvCache {
    shape: PagedKvShape,
    keys: Vec<CudaSlice<f16>>,
    values: Vec<CudaSlice<f16>>,
    allocator: PageAllocator,
    table: CudaSlice<u32>,
}

impl PagedKvCache {
    /// Allocates `n_layer` layers of `shape` (zeroed) and a table of `n_seq` rows of `max_pages`.
    pub fn new(
        gpu: &Gpu,
        n_layer: usize,
        shape: PagedKvShape,
        n_seq: usize,
        max_pages: usize,
    ) -> Result<Self> {
        shape.check("PagedKvCache")?;
        let allocator = PageAllocator::new(shape.n_pages, n_seq, max_pages)?;
        let mut keys = Vec::with_capacity(n_layer);
        let mut values = Vec::with_capacity(n_layer);
        for _ in 0..n_layer {
            keys.push(gpu.stream().alloc_zeros::<f16>(shape.pool_len())?);
            values.push(gpu.stream().alloc_zeros::<f16>(shape.pool_len())?);
        }
        let table = gpu.upload(allocator.table())?;
        Ok(PagedKvCache { shape, keys, values, allocator, table })
    }

    pub fn shape(&self) -> &PagedKvShape {
        &self.shape
    }

    pub fn n_layer(&self) -> usize {
        self.keys.len()
    }

    pub fn allocator(&self) -> &PageAllocator {
        &self.allocator
    }

    /// The block table on the device, [n_seq, max_pages].
    pub fn block_table(&self) -> &CudaSlice<u32> {
        &self.table
    }

    /// Layer `layer`'s key and value pools, or None past the last layer.
    pub fn pools(&self, layer: usize) -> Option<(&CudaSlice<f16>, &CudaSlice<f16>)> {
        Some((self.keys.get(layer)?, self.values.get(layer)?))
    }

    /// The same, writable (to fill or clear pools directly).
    pub fn pools_mut(&mut self, layer: usize) -> Option<(&mut CudaSlice<f16>, &mut CudaSlice<f16>)> {
        Some((self.keys.get_mut(layer)?, self.values.get_mut(layer)?))
    }

    /// Gives sequence `seq` pages for positions 0..len, uploading its table row if it changed
    /// (queued on the GPU's stream, before whatever is launched next).
    pub fn reserve(&mut self, gpu: &Gpu, seq: usize, len: usize) -> Result<()> {
        if self.allocator.reserve(seq, len)? {
            self.upload_row(gpu, seq)?;
        }
        Ok(())
    }

    /// Frees sequence `seq`'s pages (for another sequence to take).
    pub fn release(&mut self, gpu: &Gpu, seq: usize) -> Result<()> {
        if seq < self.allocator.n_seq() {
            self.allocator.release(seq);
            self.upload_row(gpu, seq)?;
        }
        Ok(())
    }

    /// Replaces the first rows of the device's block table with `rows` ([k, max_pages], entries
    /// page numbers or [`NO_PAGE`]): for an owner that hands out pages itself (the batching
    /// scheduler), which then does not use [`PagedKvCache::reserve`] or `release`. Queued on the
    /// GPU's stream.
    pub fn set_table(&mut self, gpu: &Gpu, rows: &[u32]) -> Result<()> {
        const KERNEL: &str = "PagedKvCache::set_table";
        let (width, n_seq) = (self.allocator.max_pages(), self.allocator.n_seq());
        if !rows.len().is_multiple_of(width) || rows.len() > width * n_seq {
            let message = format!("{} entries are not whole rows of {width} within {n_seq} rows", rows.len());
            return Err(crate::shape_error(KERNEL, message));
        }
        if let Some(&page) = rows.iter().find(|&&p| p != NO_PAGE && p as usize >= self.shape.n_pages) {
            let message = format!("page {page} is outside the pool of {} pages", self.shape.n_pages);
            return Err(crate::shape_error(KERNEL, message));
        }
        gpu.stream().memcpy_htod(rows, &mut self.table.slice_mut(..rows.len()))?;
        Ok(())
    }

    fn upload_row(&mut self, gpu: &Gpu, seq: usize) -> Result<()> {
        let width = self.allocator.max_pages();
        let row = &self.allocator.table()[seq * width..][..width];
        gpu.stream().memcpy_htod(row, &mut self.table.slice_mut(seq * width..(seq + 1) * width))?;
        Ok(())
    }
}

impl Gpu {
    /// Writes the keys and values of a batch of new tokens, `keys` and `values` [n_tokens,
    /// n_head_kv * head_dim] f32 (RoPE applied), into layer `layer` of the cache as f16: token t
    /// goes to sequence `token_seq[t]` at position `token_position[t]` (both read on the device).
    /// The sequence must have pages for the position ([`PagedKvCache::reserve`]); a token without
    /// one is dropped.
    pub fn kv_write_paged(
        &self,
        cache: &mut PagedKvCache,
        layer: usize,
        keys: &impl DevicePtr<f32>,
        values: &impl DevicePtr<f32>,
        token_seq: &impl DevicePtr<u32>,
        token_position: &impl DevicePtr<u32>,
    ) -> Result<()> {
        const KERNEL: &str = "kv_write_paged";
        let n_layer = cache.n_layer();
        let shape = cache.shape;
        shape.check(KERNEL)?;
        let (max_pages, n_seq) = (cache.allocator.max_pages(), cache.allocator.n_seq());
        let n_tokens = token_seq.len();
        let row = shape.n_head_kv * shape.head_dim;
        expect_len(KERNEL, "token_position", token_position.len(), n_tokens)?;
        expect_len(KERNEL, "keys", keys.len(), n_tokens * row)?;
        expect_len(KERNEL, "values", values.len(), n_tokens * row)?;
        if n_tokens == 0 {
            return Ok(());
        }
        to_u32(KERNEL, "n_tokens * n_head_kv * head_dim", n_tokens * row)?;
        // A thread per 4 values: each holds a chain of dependent loads (sequence, block table,
        // page), so a few tokens spread over many blocks rather than looping in one.
        let quads = n_tokens * row / 4;
        let config = LaunchConfig {
            grid_dim: (quads.div_ceil(256).clamp(1, 132 * 16) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n_tokens = n_tokens as u32;
        let stream = self.stream();
        let (key_pool, value_pool) = cache
            .keys
            .get_mut(layer)
            .zip(cache.values.get_mut(layer))
            .ok_or_else(|| super::layer_error(KERNEL, layer, n_layer))?;
        let (k, _k) = keys.device_ptr(stream);
        let (v, _v) = values.device_ptr(stream);
        super::check_aligned(KERNEL, &[("keys", k), ("values", v)])?;
        let (kp, _kp) = key_pool.device_ptr_mut(stream);
        let (vp, _vp) = value_pool.device_ptr_mut(stream);
        let (table, _table) = cache.table.device_ptr(stream);
        let (s, _s) = token_seq.device_ptr(stream);
        let (p, _p) = token_position.device_ptr(stream);
        let (n_head_kv, head_dim, n_pages) =
            (shape.n_head_kv as u32, shape.head_dim as u32, shape.n_pages as u32);
        let (n_seq, max_pages) = (n_seq as u32, max_pages as u32);
        self.launch(
            KERNEL,
            config,
            &[
                &k, &v, &kp, &vp, &table, &s, &p, &n_tokens, &n_head_kv, &head_dim, &n_pages, &n_seq,
                &max_pages,
            ],
        )
    }
}
