//! Causal prefill attention over the paged cache (`gpu/src/attention/prefill.rs`).

use super::{AttentionOptions, PagedKvCache, PagedKvShape, check_aligned, check_options, layer_error};
use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Queries per block, keys per tile, threads per block: as in the kernel.
const QUERY_TILE: usize = 64;
const KEY_TILE: usize = 32;
const THREADS: u32 = 128;

/// Dynamic shared memory: Q [64][hd + 4], K and V [32][hd + 4] f32, weights [32][68] f32.
pub(crate) fn prefill_shared_bytes(head_dim: usize) -> usize {
    4 * ((QUERY_TILE + 2 * KEY_TILE) * (head_dim + 4) + KEY_TILE * (QUERY_TILE + 4))
}

/// The launch of `attention_prefill_hd*` for `n_tokens` queries, after checking the shapes.
pub fn prefill_config(
    shape: &PagedKvShape,
    options: &AttentionOptions,
    n_tokens: usize,
) -> Result<LaunchConfig> {
    const KERNEL: &str = "attention_prefill";
    check_options(KERNEL, shape, options, None)?;
    if n_tokens == 0 {
        return Err(shape_error(KERNEL, "q holds no tokens"));
    }
    to_u32(KERNEL, "n_tokens * n_head * head_dim", n_tokens * options.n_head * shape.head_dim)?;
    Ok(LaunchConfig {
        grid_dim: (n_tokens.div_ceil(QUERY_TILE) as u32, options.n_head as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: prefill_shared_bytes(shape.head_dim) as u32,
    })
}

impl Gpu {
    /// Causal attention for T new tokens of sequence `seq` (block-table row) at positions
    /// start[0]..start[0] + T: q, out [T, n_head * head_dim] f32. The keys and values of every
    /// position up to start[0] + T - 1 must be in layer `layer` of the cache already
    /// ([`Gpu::kv_write_paged`]). `sinks`: one logit per query head, or None.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill(
        &self,
        cache: &PagedKvCache,
        layer: usize,
        seq: usize,
        q: &impl DevicePtr<f32>,
        start: &impl DevicePtr<u32>,
        sinks: Option<&CudaSlice<f32>>,
        options: &AttentionOptions,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "attention_prefill";
        let shape = *cache.shape();
        check_options(KERNEL, &shape, options, sinks.map(|s| s.len()))?;
        let row = options.n_head * shape.head_dim;
        if !q.len().is_multiple_of(row) {
            return Err(shape_error(KERNEL, format!("q has {} elements, not a multiple of {row}", q.len())));
        }
        let n_tokens = q.len() / row;
        let config = prefill_config(&shape, options, n_tokens)?;
        expect_len(KERNEL, "out", out.len(), q.len())?;
        expect_len(KERNEL, "start", start.len(), 1)?;
        let (n_seq, max_pages) = (cache.allocator().n_seq(), cache.allocator().max_pages());
        if seq >= n_seq {
            return Err(shape_error(KERNEL, format!("sequence {seq} is out of range ({n_seq} slots)")));
        }
        let (keys, values) = cache.pools(layer).ok_or_else(|| layer_error(KERNEL, layer, cache.n_layer()))?;
        let (n_head, window) = (options.n_head as u32, options.window as u32);
        let stream = self.stream();
        let (q, _q) = q.device_ptr(stream);
        let (o, _o) = out.device_ptr_mut(stream);
        check_aligned(KERNEL, &[("q", q), ("out", o)])?;
        let (k, _k) = keys.device_ptr(stream);
        let (v, _v) = values.device_ptr(stream);
        let (table, _table) = cache.block_table().device_ptr(stream);
        let (start, _start) = start.device_ptr(stream);
        let (sinks, _sinks) = match sinks {
            Some(s) => {
                let (pointer, guard) = s.device_ptr(stream);
                (pointer, Some(guard))
            }
            None => (0, None),
        };
        let name = format!("{KERNEL}_hd{}", shape.head_dim);
        let (seq, n_tokens, n_head_kv) = (seq as u32, n_tokens as u32, shape.n_head_kv as u32);
        let (n_pages, max_pages) = (shape.n_pages as u32, max_pages as u32);
        self.launch(
            &name,
            config,
            &[
                &q,
                &k,
                &v,
                &table,
                &start,
                &sinks,
                &o,
                &seq,
                &n_tokens,
                &n_head,
                &n_head_kv,
                &n_pages,
                &max_pages,
                &window,
                &options.scale,
            ],
        )
    }
}
