//! Flash-decoding over the paged cache (`gpu/src/attention/decode.rs`): one new token for each
//! sequence of a batch, the context split over blocks, then the splits combined.

use super::{AttentionOptions, PagedKvCache, PagedKvShape, check_aligned, check_options, layer_error};
use crate::matmul::Q8Activations;
use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Most splits per sequence (the combine kernel reads every split's partial result).
pub const MAX_SPLITS: usize = 256;
/// Query heads per block, warps per block, pages in flight per warp: as in the kernel.
const DECODE_HEADS: usize = 8;
const WARPS: usize = 4;
const STAGES: usize = 2;

/// Dynamic shared memory: the queries [8][hd] f32, per warp STAGES pages of K and V of
/// [16][hd + 8] f16, per warp the weights [16][8] f32.
pub(crate) fn decode_shared_bytes(head_dim: usize) -> usize {
    4 * DECODE_HEADS * head_dim
        + WARPS * (STAGES * 2 * super::PAGE_SIZE * (head_dim + 8) * 2 + 4 * 16 * DECODE_HEADS)
}

/// Splits per sequence for a batch of `n_seq` with `n_head` query heads over `max_pages` pages
/// per sequence, on a GPU that holds `slots` decode blocks at once (SMs x resident blocks per SM):
/// as many as keep the grid within one wave (a second, partial wave would double the time), at
/// most one split per 4 pages of capacity (a page per warp), at most [`MAX_SPLITS`]. Each
/// sequence's actual length is divided among the splits on the device.
/// A batch whose unsplit grid is already more than a wave (64 sequences of the 8B: 512 blocks
/// on an H100's 396 slots) runs its last wave part-empty: 1.3 waves of work take 2. Splitting in
/// s shortens the blocks to 1/s and makes ceil(s B / slots) waves of them, so the split count
/// there minimises waves(s) (1/s + SPLIT_OVERHEAD) over s <= 4 (512 blocks: s = 3, 4 waves of
/// a third, ~1.3x less than 2 waves of whole blocks if the blocks' fixed cost is a tenth).
pub fn decode_splits(
    n_seq: usize,
    n_head: usize,
    shape: &PagedKvShape,
    max_pages: usize,
    slots: usize,
) -> usize {
    let blocks_per_split = decode_blocks(n_seq, n_head, shape);
    let slots = slots.max(1);
    if blocks_per_split <= slots {
        return one_wave_splits(n_seq, n_head, shape, max_pages, slots);
    }
    let most = max_pages.div_ceil(WARPS).clamp(1, MAX_SPLITS);
    let time = |s: usize| (s * blocks_per_split).div_ceil(slots) as f64 * (1.0 / s as f64 + SPLIT_OVERHEAD);
    (1..=MULTI_WAVE_SPLITS.min(most)).min_by(|&a, &b| time(a).total_cmp(&time(b))).unwrap_or(1)
}

/// The decode grid's blocks per split for a batch of `n_seq`: a block per KV head and group of
/// query heads, per sequence.
fn decode_blocks(n_seq: usize, n_head: usize, shape: &PagedKvShape) -> usize {
    let group = n_head / shape.n_head_kv.max(1);
    (n_seq * shape.n_head_kv * group.div_ceil(heads_per_block(group))).max(1)
}

/// The one-wave rule of [`decode_splits`] alone (the rule before 2026-12-07b): as many splits as
/// keep the grid within one wave, at most one per 4 pages and [`MAX_SPLITS`]; one split when the
/// unsplit grid is already more than a wave.
fn one_wave_splits(
    n_seq: usize,
    n_head: usize,
    shape: &PagedKvShape,
    max_pages: usize,
    slots: usize,
) -> usize {
    let most = max_pages.div_ceil(WARPS).clamp(1, MAX_SPLITS);
    (slots / decode_blocks(n_seq, n_head, shape)).min(most).max(1)
}

/// The fixed cost of a decode block (its queries, its pipeline's first pages, its partial
/// result) as a fraction of an unsplit block's, in the multi-wave split choice of
/// [`decode_splits`]: an estimate, not a measurement (benches/NOTES.md, 2026-12-07b).
const SPLIT_OVERHEAD: f64 = 0.1;
/// Most splits of a batch that fills more than a wave unsplit.
const MULTI_WAVE_SPLITS: usize = 4;

/// Pages of the window a split takes at least (4 per warp): a window of 128 positions (9 pages
/// at most) is one split, which writes the output itself (no combine kernel).
const WINDOW_PAGES_PER_SPLIT: usize = 16;

/// The splits a decode launch uses: the workspace's, but under a window (`window` > 0) no more
/// than its pages (at most window / 16 + 1, rounded up) need at [`WINDOW_PAGES_PER_SPLIT`] each.
/// Depends on the window only, not on the lengths, so a captured graph stays valid.
pub fn window_splits(n_splits: usize, window: usize) -> usize {
    if window == 0 {
        return n_splits;
    }
    let pages = window.div_ceil(super::PAGE_SIZE) + 1;
    n_splits.min(pages.div_ceil(WINDOW_PAGES_PER_SPLIT)).max(1)
}

/// Query heads a decode block takes: the smallest of 1, 2, 4, 8 that covers the GQA group, or 8
/// (larger groups take several blocks). Heads beyond the group in the last block are computed
/// and dropped.
pub fn heads_per_block(group: usize) -> usize {
    group.clamp(1, DECODE_HEADS).next_power_of_two()
}

/// The decode kernel for a head dim and a GQA group.
fn decode_kernel(head_dim: usize, group: usize) -> String {
    format!("attention_decode_hd{head_dim}_h{}", heads_per_block(group))
}

/// Per-split partial results of a decode batch: [n_seq, n_head, n_splits, head_dim] sums and
/// [n_seq, n_head, n_splits, 2] (max, sum). Sized once; a captured graph keeps using it.
/// A workspace made for a cache ([`DecodeWorkspace::for_cache`]) can pick the split count per
/// batch size ([`DecodeWorkspace::splits_for`]): a batch of 8 in a pool of 64 slots would take
/// the splits that fill the GPU for 8 sequences, not the one split that fills it for 64. That
/// rule is written but not yet run on a GPU, so it is off by default (`ENGINE_DECODE_SPLITS=batch`
/// or [`DecodeWorkspace::split_per_batch_size`] turns it on).
pub struct DecodeWorkspace {
    partial: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    n_seq: usize,
    n_head: usize,
    head_dim: usize,
    n_splits: usize,
    /// Most sequence-splits (n_seq x splits) the buffers hold.
    capacity: usize,
    /// For a cache's workspace: (slots, max_pages, shape) for [`decode_splits`] per batch size.
    policy: Option<(usize, usize, PagedKvShape)>,
    /// Whether a cache's workspace picks its splits per batch size (else a full batch's count).
    per_batch_size: bool,
}

impl DecodeWorkspace {
    /// A workspace for batches of up to `n_seq` sequences, with `n_splits` splits.
    pub fn new(gpu: &Gpu, n_seq: usize, n_head: usize, head_dim: usize, n_splits: usize) -> Result<Self> {
        DecodeWorkspace::with_capacity(gpu, (n_seq, n_head, head_dim), n_splits, n_seq * n_splits, None)
    }

    fn with_capacity(
        gpu: &Gpu,
        (n_seq, n_head, head_dim): (usize, usize, usize),
        n_splits: usize,
        capacity: usize,
        policy: Option<(usize, usize, PagedKvShape)>,
    ) -> Result<Self> {
        const WHAT: &str = "DecodeWorkspace";
        if n_seq == 0 || n_head == 0 || head_dim == 0 {
            return Err(shape_error(WHAT, "a workspace needs at least one sequence, head and dim"));
        }
        if n_splits == 0 || n_splits > MAX_SPLITS {
            return Err(shape_error(WHAT, format!("{n_splits} splits (1..={MAX_SPLITS})")));
        }
        let rows = capacity.max(n_seq * n_splits) * n_head;
        to_u32(WHAT, "n_seq * n_head * n_splits * head_dim", rows * head_dim)?;
        Ok(DecodeWorkspace {
            partial: gpu.alloc(rows * head_dim)?,
            stats: gpu.alloc(rows * 2)?,
            n_seq,
            n_head,
            head_dim,
            n_splits,
            capacity: rows / n_head,
            policy,
            per_batch_size: std::env::var("ENGINE_DECODE_SPLITS").is_ok_and(|v| v == "batch"),
        })
    }

    /// A workspace for batches of up to `n_seq` sequences of `cache`, with the split count
    /// [`decode_splits`] picks for a full batch on this GPU.
    pub fn for_cache(gpu: &Gpu, cache: &PagedKvCache, n_seq: usize, n_head: usize) -> Result<Self> {
        let shape = cache.shape();
        shape.check("DecodeWorkspace")?;
        let kernel = decode_kernel(shape.head_dim, n_head / shape.n_head_kv);
        let per_sm = gpu.resident_blocks(&kernel, 128, decode_shared_bytes(shape.head_dim))?;
        let slots = gpu.sm_count() * per_sm;
        let max_pages = cache.allocator().max_pages();
        let splits = decode_splits(n_seq, n_head, shape, max_pages, slots);
        // Room for the splits of every batch size up to n_seq.
        let capacity =
            (1..=n_seq).map(|n| n * decode_splits(n, n_head, shape, max_pages, slots)).max().unwrap_or(0);
        let policy = Some((slots, max_pages, *shape));
        DecodeWorkspace::with_capacity(gpu, (n_seq, n_head, shape.head_dim), splits, capacity, policy)
    }

    /// The splits of a full batch (`n_seq` sequences).
    pub fn n_splits(&self) -> usize {
        self.n_splits
    }

    /// Turns the per-batch-size split rule of a cache's workspace on or off (the default is off,
    /// or on with `ENGINE_DECODE_SPLITS=batch`). Graphs captured before a change keep the counts
    /// they were captured with, so set it before the first step.
    pub fn split_per_batch_size(&mut self, on: bool) {
        self.per_batch_size = on;
    }

    /// The splits of a batch of `n_seq` (at most the workspace's). A cache's workspace takes, by
    /// default, the rule of before 2026-12-07b (a full batch's split count, one wave at most, for
    /// every batch: the rule measured and tested on a GPU); per batch size, [`decode_splits`] for
    /// that batch size. One made with [`DecodeWorkspace::new`] always takes its own. Depends on
    /// n_seq only, so a graph captured for a batch size stays valid.
    pub fn splits_for(&self, n_seq: usize) -> usize {
        match self.policy {
            Some((slots, max_pages, shape)) if !self.per_batch_size => {
                one_wave_splits(self.n_seq, self.n_head, &shape, max_pages, slots)
            }
            Some((slots, max_pages, shape)) => decode_splits(n_seq, self.n_head, &shape, max_pages, slots)
                .min(self.capacity / n_seq.max(1))
                .max(1),
            None => self.n_splits,
        }
    }
}

/// The launches of `attention_decode_hd*` and `attention_decode_combine` for a batch of `n_seq`,
/// after checking the shapes.
pub fn decode_config(
    shape: &PagedKvShape,
    options: &AttentionOptions,
    n_seq: usize,
    n_splits: usize,
) -> Result<(LaunchConfig, LaunchConfig)> {
    const KERNEL: &str = "attention_decode_paged";
    check_options(KERNEL, shape, options, None)?;
    if n_seq == 0 || n_seq > 65535 {
        return Err(shape_error(KERNEL, format!("a batch of {n_seq} sequences (1..=65535)")));
    }
    if n_splits == 0 || n_splits > MAX_SPLITS {
        return Err(shape_error(KERNEL, format!("{n_splits} splits (1..={MAX_SPLITS})")));
    }
    let group = options.n_head / shape.n_head_kv;
    let blocks_y = shape.n_head_kv * group.div_ceil(heads_per_block(group));
    let decode = LaunchConfig {
        grid_dim: (n_splits as u32, blocks_y as u32, n_seq as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: decode_shared_bytes(shape.head_dim) as u32,
    };
    let combine = LaunchConfig {
        grid_dim: (options.n_head as u32, n_seq as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 4 * n_splits as u32,
    };
    Ok((decode, combine))
}

impl Gpu {
    /// Attention of one new token per sequence over layer `layer` of the cache: q, out [n_seq,
    /// n_head * head_dim] f32 with n_seq = lens.len(); sequence b is block-table row b and has
    /// lens[b] positions cached, its new token's included (lens are read on the device).
    /// `sinks`: one logit per query head, or None. `workspace` must be for at least n_seq
    /// sequences of these heads. A launch takes [`window_splits`] splits; with one, the decode
    /// kernel writes `out` itself and the combine kernel is not launched.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode_paged(
        &self,
        cache: &PagedKvCache,
        layer: usize,
        q: &impl DevicePtr<f32>,
        lens: &impl DevicePtr<u32>,
        sinks: Option<&CudaSlice<f32>>,
        options: &AttentionOptions,
        workspace: &mut DecodeWorkspace,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.decode_paged(cache, layer, q, lens, sinks, options, workspace, out, None).map(|_| ())
    }

    /// [`Gpu::attention_decode_paged`], with `out` also quantized into `out_q8` (as by
    /// [`Gpu::quantize_q8`]) in the same launch where head_dim is a multiple of 32, else by a
    /// second launch.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode_paged_q8(
        &self,
        cache: &PagedKvCache,
        layer: usize,
        q: &impl DevicePtr<f32>,
        lens: &impl DevicePtr<u32>,
        sinks: Option<&CudaSlice<f32>>,
        options: &AttentionOptions,
        workspace: &mut DecodeWorkspace,
        out: &mut CudaSlice<f32>,
        out_q8: &mut Q8Activations,
    ) -> Result<()> {
        expect_len("attention_decode_paged", "out_q8", out_q8.n, out.len())?;
        // The combine kernel quantizes as it writes; where there is none (one split) or head_dim
        // does not split into blocks of 32, a second launch does.
        let fused = cache.shape().head_dim.is_multiple_of(32).then_some(&mut *out_q8);
        if !self.decode_paged(cache, layer, q, lens, sinks, options, workspace, out, fused)? {
            self.quantize_q8(out, out_q8)?;
        }
        Ok(())
    }

    /// The decode launch(es); true when `out_q8` was written too.
    #[allow(clippy::too_many_arguments)]
    fn decode_paged(
        &self,
        cache: &PagedKvCache,
        layer: usize,
        q: &impl DevicePtr<f32>,
        lens: &impl DevicePtr<u32>,
        sinks: Option<&CudaSlice<f32>>,
        options: &AttentionOptions,
        workspace: &mut DecodeWorkspace,
        out: &mut impl DevicePtrMut<f32>,
        out_q8: Option<&mut Q8Activations>,
    ) -> Result<bool> {
        const KERNEL: &str = "attention_decode_paged";
        let shape = *cache.shape();
        check_options(KERNEL, &shape, options, sinks.map(|s| s.len()))?;
        let n_seq = lens.len();
        let n_splits = window_splits(workspace.splits_for(n_seq), options.window);
        let (decode, combine) = decode_config(&shape, options, n_seq, n_splits)?;
        let (table_rows, max_pages) = (cache.allocator().n_seq(), cache.allocator().max_pages());
        if n_seq > table_rows {
            return Err(shape_error(
                KERNEL,
                format!("a batch of {n_seq} sequences; the cache has {table_rows} slots"),
            ));
        }
        if n_seq > workspace.n_seq
            || workspace.n_head != options.n_head
            || workspace.head_dim != shape.head_dim
        {
            return Err(shape_error(
                KERNEL,
                format!(
                    "the workspace is for {} sequences of {} heads of {}; this batch is {n_seq} of {} of {}",
                    workspace.n_seq, workspace.n_head, workspace.head_dim, options.n_head, shape.head_dim
                ),
            ));
        }
        let row = options.n_head * shape.head_dim;
        expect_len(KERNEL, "q", q.len(), n_seq * row)?;
        expect_len(KERNEL, "out", out.len(), n_seq * row)?;
        let (keys, values) = cache.pools(layer).ok_or_else(|| layer_error(KERNEL, layer, cache.n_layer()))?;
        let (n_head, window) = (options.n_head as u32, options.window as u32);
        let stream = self.stream();
        let (q, _q) = q.device_ptr(stream);
        check_aligned(KERNEL, &[("q", q)])?;
        let (k, _k) = keys.device_ptr(stream);
        let (v, _v) = values.device_ptr(stream);
        let (table, _table) = cache.block_table().device_ptr(stream);
        let (lens, _lens) = lens.device_ptr(stream);
        let (partial, _partial) = workspace.partial.device_ptr_mut(stream);
        let (stats, _stats) = workspace.stats.device_ptr_mut(stream);
        let (sinks, _sinks) = match sinks {
            Some(s) => {
                let (pointer, guard) = s.device_ptr(stream);
                (pointer, Some(guard))
            }
            None => (0, None),
        };
        let (o, _o) = out.device_ptr_mut(stream);
        // One split: the decode kernel writes out (null: it writes partial and stats).
        let direct: u64 = if n_splits == 1 { o } else { 0 };
        let (n_head_kv, n_pages, max_pages) =
            (shape.n_head_kv as u32, shape.n_pages as u32, max_pages as u32);
        self.launch(
            &decode_kernel(shape.head_dim, options.n_head / shape.n_head_kv),
            decode,
            &[
                &q,
                &k,
                &v,
                &table,
                &lens,
                &partial,
                &stats,
                &sinks,
                &direct,
                &n_head,
                &n_head_kv,
                &n_pages,
                &max_pages,
                &window,
                &options.scale,
            ],
        )?;
        if n_splits == 1 {
            return Ok(false);
        }
        let (n_splits, head_dim) = (n_splits as u32, shape.head_dim as u32);
        let quantized = out_q8.is_some();
        let (q8, _q8) = match out_q8 {
            Some(q8) => {
                let (pointers, guards) = q8.pointers_mut(stream);
                (pointers, Some(guards))
            }
            None => ([0; 3], None),
        };
        self.launch(
            "attention_decode_combine",
            combine,
            &[&partial, &stats, &sinks, &o, &q8[0], &q8[1], &q8[2], &n_head, &n_splits, &head_dim],
        )?;
        Ok(quantized)
    }
}
