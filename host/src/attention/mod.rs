//! Attention (`gpu/src/attention/`): decode over the f32 cache the engine uses today, and the
//! paged f16 cache with its prefill and flash-decoding kernels.
//!
//! Using the paged kernels: make a [`PagedKvCache`] (pools for every layer, a block table with a
//! row per sequence slot), [`PagedKvCache::reserve`] pages for a sequence's length before writing
//! it, write each layer's new keys and values with [`Gpu::kv_write_paged`], then run
//! [`Gpu::attention_prefill`] for a run of new tokens of one sequence, or
//! [`Gpu::attention_decode_paged`] for one new token of each sequence of a batch (batch entry b is
//! block-table row b, with its length in `lens[b]`; a length of 0 gives zeros, so idle slots may
//! stay in the batch). Positions, lengths and the table live on the device, so a decode step
//! captured as a CUDA graph replays while sequences grow.

mod contiguous;
mod decode;
mod paged;
mod prefill;

pub use contiguous::MAX_DECODE_LEN;
pub use decode::{DecodeWorkspace, MAX_SPLITS, decode_config, decode_splits, heads_per_block, window_splits};
pub use paged::{NO_PAGE, PAGE_SIZE, PageAllocator, PagedKvCache, PagedKvShape};
pub use prefill::prefill_config;

use crate::{Error, Result, shape_error, to_u32};

/// Head dims the paged kernels are built for (one entry point each).
pub const HEAD_DIMS: [usize; 4] = [64, 80, 96, 128];

/// What a paged attention call needs besides the cache's shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionOptions {
    /// Query heads; a multiple of the cache's KV heads (grouped-query attention).
    pub n_head: usize,
    /// Factor applied to q . k (1 / sqrt(head_dim) for most models).
    pub scale: f32,
    /// Sliding window: position p attends to j with p - window < j <= p; 0 = the whole context.
    pub window: usize,
}

impl AttentionOptions {
    /// Scale 1 / sqrt(head_dim), no window.
    pub fn new(n_head: usize, head_dim: usize) -> Self {
        AttentionOptions { n_head, scale: 1.0 / (head_dim as f32).sqrt(), window: 0 }
    }
}

/// Checks options and sinks against a cache shape; returns (n_head, window) as kernel arguments.
fn check_options(
    kernel: &'static str,
    shape: &PagedKvShape,
    options: &AttentionOptions,
    sinks: Option<usize>,
) -> Result<(u32, u32)> {
    shape.check(kernel)?;
    let n_head = options.n_head;
    if n_head == 0 || !n_head.is_multiple_of(shape.n_head_kv) {
        return Err(shape_error(
            kernel,
            format!("{n_head} query heads are not a positive multiple of {} KV heads", shape.n_head_kv),
        ));
    }
    if !options.scale.is_finite() {
        return Err(shape_error(kernel, format!("the scale {} is not finite", options.scale)));
    }
    if let Some(len) = sinks
        && len != n_head
    {
        return Err(shape_error(
            kernel,
            format!("sinks has {len} elements, expected one per head ({n_head})"),
        ));
    }
    // Grid y and z are limited to 65535 blocks.
    if n_head > 65535 {
        return Err(shape_error(kernel, format!("{n_head} heads exceed 65535")));
    }
    Ok((to_u32(kernel, "n_head", n_head)?, to_u32(kernel, "window", options.window)?))
}

fn layer_error(kernel: &'static str, layer: usize, n_layer: usize) -> Error {
    shape_error(kernel, format!("layer {layer} is out of range (the cache has {n_layer} layers)"))
}

/// The kernels read q, keys and values 16 bytes at a time: a view that starts elsewhere is refused.
fn check_aligned(kernel: &'static str, pointers: &[(&str, u64)]) -> Result<()> {
    match pointers.iter().find(|(_, address)| address % 16 != 0) {
        Some((what, _)) => Err(shape_error(kernel, format!("{what} does not start on a 16-byte boundary"))),
        None => Ok(()),
    }
}
