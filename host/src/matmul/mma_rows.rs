//! Products of up to 64 activation rows (more in passes of 64) with a quantized matrix on the
//! integer tensor cores, for batched decode (`gpu/src/matmul/mma_rows.rs`): the weights' 4- and
//! 8-bit integers against 8-bit activations, K split across the warps of a block. Past a few
//! rows these beat both the multi-row GEMV ([`Gpu::gemv_rows`], bound by its `dp4a`) and the f16
//! GEMM ([`Gpu::gemm`], bound by dequantizing tiles for 128 rows); the measurements that set
//! the limits are in benches/NOTES.md. Each row's block sums are the GEMVs' integers; the f32
//! sum over blocks runs in another order than the batch-1 GEMV's, so rows agree with it to about
//! 1e-6, not bit for bit.
//!
//! Formats: Q4_K, Q8_0 and MXFP4 (dense; MXFP4 also as experts, with its own kernel in
//! `gpu/src/matmul/mma_experts.rs`); others go through the GEMVs or GEMMs. Dense Q4_K and Q8_0
//! products can also take `gpu/src/matmul/mma_stream.rs` (64 weight rows a block, the weights
//! streamed once for all 64 tokens; off by default until it beats the GEMM, see
//! `DEFAULT_STREAM_ROWS`), the rest take `mma_rows.rs` (16 rows a block, K split across its
//! warps, 32 tokens a pass).

use super::{GpuMatrix, Q8Activations, Storage, WeightFormat};
use crate::moe::ExpertRouting;
use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use std::ops::Range;

/// Weight rows per block, threads per block and dynamic shared memory of the kernels (the
/// warps' staging areas for 32 tokens x 8 blocks of X and their scales, and the row tables).
const ROWS: usize = 16;
const THREADS: u32 = 128;
const SHARED_BYTES: u32 = 4 * (32 * (8 * 32 + 16) + 2 * 4 * 8 * 32) + 2 * 4 * 32;
/// The experts' kernel (`gpu/src/matmul/mma_experts.rs`): 64 weight rows per block, and a ring of
/// three stages, each of 64 rows x 8 blocks of weights (144 bytes a row), their exponent words
/// (16 bytes a row), 16 tokens x 8 blocks of X (272 bytes a token) and their scales, then the
/// pass's two row tables.
const EXPERT_ROWS: usize = 64;
const EXPERT_SHARED_BYTES: u32 = 3 * (64 * 144 + 64 * 16 + 16 * 272 + 4 * 8 * 16) + 2 * 4 * 16;

/// Fewest and most activation rows of a dense product taken by [`Gpu::mma_rows`] by default
/// (below: the multi-row GEMV; above: the f16 GEMM, whose time is flat to 64 rows: with X staged
/// in shared memory the integer rows beat it to 32 rows on Llama-3.1-8B's Q4_K shapes, decode
/// steps of 16 and 32 sequences 1.65x and 1.36x faster, and lose at 64); `ENGINE_MMA_ROWS=
/// min,max` sets others (`0,0`: never). Experts: every step of up to DEFAULT_EXPERT_TOKENS tokens
/// (`ENGINE_MMA_EXPERT_TOKENS`), where they beat both the multi-row GEMV and the expert GEMM
/// from 16 tokens on and match them below. Measurements: benches/NOTES.md.
const DEFAULT_ROWS: (usize, usize) = (3, 32);
const DEFAULT_EXPERT_TOKENS: usize = 64;

/// The range of rows for which [`Gpu::mma_rows`] is used.
pub fn mma_rows_range() -> (usize, usize) {
    static RANGE: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| parse_range("ENGINE_MMA_ROWS").unwrap_or(DEFAULT_ROWS))
}

/// Fewest and most activation rows of a dense product taken by the streamed kernel
/// (`gpu/src/matmul/mma_stream.rs`: 64 weight rows a block, all 64 tokens' sums in one pass over
/// the weights) by default: none, since its first version measured slower than both the f16
/// GEMM and the two passes of the 16-row kernel (4096x4096 Q4_K at 64 rows on the H100: 0.093 ms
/// against 0.048; benches/NOTES.md, 2026-12-06). `ENGINE_MMA_STREAM_ROWS=min,max` turns it on
/// for those rows; where both ranges hold, the streamed kernel is taken.
const DEFAULT_STREAM_ROWS: (usize, usize) = (0, 0);

/// Weight rows per block of the streamed kernel, and each group of four warps' shared memory
/// (a ring of three stages of 4 blocks of K: 64 rows of quants padded by 16 bytes, their scale
/// words, 64 tokens x 144 bytes of X, their scales (and Q4_K's sums) as f32).
const STREAM_ROWS: usize = 64;
const STREAM_GROUP_BYTES_Q4K: u32 = 3 * (64 * 80 + 64 * 12 + 64 * 144 + 2 * 4 * 4 * 64);
const STREAM_GROUP_BYTES_Q8: u32 = 3 * (64 * 144 + 64 * 8 + 64 * 144 + 4 * 4 * 64);

/// The range of rows for which the streamed kernel is used.
pub fn mma_stream_range() -> (usize, usize) {
    static RANGE: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| parse_range("ENGINE_MMA_STREAM_ROWS").unwrap_or(DEFAULT_STREAM_ROWS))
}

fn parse_range(variable: &str) -> Option<(usize, usize)> {
    let value = std::env::var(variable).ok()?;
    let (low, high) = value.split_once(',')?;
    Some((low.trim().parse().ok()?, high.trim().parse().ok()?))
}

/// Whether a dense product of `n` rows with `w` takes the tensor-core integer kernels
/// ([`Gpu::mma_rows`]).
pub fn takes_mma_rows(w: &GpuMatrix, n: usize) -> bool {
    let (low, high) = mma_rows_range();
    w.has_mma_rows() && ((n >= low && n <= high) || w.takes_mma_stream(n))
}

/// Whether the experts of a step of `n` tokens take [`Gpu::mma_rows_experts`].
pub fn takes_mma_rows_experts(n: usize) -> bool {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let limit = *LIMIT.get_or_init(|| {
        std::env::var("ENGINE_MMA_EXPERT_TOKENS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_EXPERT_TOKENS)
    });
    n <= limit
}

impl GpuMatrix {
    /// Whether [`Gpu::mma_rows`] takes this matrix.
    pub fn has_mma_rows(&self) -> bool {
        matches!(self.format, WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Mxfp4)
    }

    /// Whether [`Gpu::mma_rows_streamed`] takes this matrix: Q4_K, and Q8_0 with an even number
    /// of blocks a row (its stage's four scales are copied as two aligned words).
    pub fn has_mma_stream(&self) -> bool {
        match self.format {
            WeightFormat::Q4K => true,
            WeightFormat::Q8_0 => (self.n_in / 32).is_multiple_of(2),
            _ => false,
        }
    }

    /// Whether [`Gpu::mma_rows`] takes the streamed kernel for a product of `n` rows.
    pub fn takes_mma_stream(&self, n: usize) -> bool {
        let (low, high) = mma_stream_range();
        self.has_mma_stream() && n >= low && n <= high
    }
}

impl Gpu {
    /// Y[t, :] = W[rows, :] X[t, :] (+ bias[rows]) for the `n` rows of X, given as 8-bit
    /// activations [n, n_in]; Y [n, rows.len()], bias (when given) [n_out].
    /// Takes the streamed kernel where [`GpuMatrix::takes_mma_stream`] says so.
    pub fn mma_rows(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &Q8Activations,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        self.mma_rows_with(w, rows, x, n, bias, y, w.takes_mma_stream(n))
    }

    /// [`Gpu::mma_rows`] on the streamed kernel (`gpu/src/matmul/mma_stream.rs`) whatever `n`
    /// is: Q4_K, and Q8_0 with an even number of blocks a row.
    pub fn mma_rows_streamed(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &Q8Activations,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        if !w.has_mma_stream() {
            let message =
                format!("{:?} weights of {} values a row have no streamed row product", w.format, w.n_in);
            return Err(shape_error("mma_stream", message));
        }
        self.mma_rows_with(w, rows, x, n, bias, y, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn mma_rows_with(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &Q8Activations,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
        stream_kernel: bool,
    ) -> Result<()> {
        const KERNEL: &str = "mma_rows";
        let (n_in, n_out) = (w.n_in, w.n_out);
        if rows.start >= rows.end || rows.end > n_out {
            return Err(shape_error(KERNEL, format!("rows {rows:?} of a matrix of {n_out} rows")));
        }
        let elements = n.checked_mul(n_in).ok_or_else(|| shape_error(KERNEL, "n * n_in overflows"))?;
        expect_len(KERNEL, "x", x.n, elements)?;
        let outputs = n.checked_mul(rows.len()).ok_or_else(|| shape_error(KERNEL, "y's size overflows"))?;
        expect_len(KERNEL, "y", y.len(), outputs)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), n_out)?;
        }
        if n == 0 {
            return Ok(());
        }
        to_u32(KERNEL, "n * n_in", elements)?;
        let stream = self.stream();
        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| p + 4 * rows.start as u64);
        let (xq, _xq) = x.q.device_ptr(stream);
        let (xd, _xd) = x.d.device_ptr(stream);
        let (xs, _xs) = x.s.device_ptr(stream);
        let config = if stream_kernel {
            self.stream_launch(w.format, rows.len())?
        } else {
            LaunchConfig {
                grid_dim: (to_u32(KERNEL, "row blocks", rows.len().div_ceil(ROWS))?, 1, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: SHARED_BYTES,
            }
        };
        let (r, k) = (rows.start as u64, n_in as u64);
        let (n_in32, n_rows, t) = (n_in as u32, rows.len() as u32, n as u32);
        let (name, first, second) = match &w.storage {
            // No streamed form (both callers take it only where `has_mma_stream` holds).
            Storage::Mxfp4 { quants, exponents } => {
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                ("mma_rows_mxfp4", q + r * k / 2, e + r * k / 32)
            }
            Storage::Blocks { format: WeightFormat::Q8_0, quants, scales, .. } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                let name = if stream_kernel { "mma_stream_q8_0" } else { "mma_rows_q8_0" };
                (name, q + r * k, s + 2 * (r * k / 32))
            }
            Storage::Blocks { format: WeightFormat::Q4K, quants, scales, .. } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                let name = if stream_kernel { "mma_stream_q4_k" } else { "mma_rows_q4_k" };
                (name, q + r * k / 2, s + 20 * (r * k / 256))
            }
            _ => {
                return Err(shape_error(
                    KERNEL,
                    format!("{:?} weights have no tensor-core row product", w.format),
                ));
            }
        };
        let args: [&dyn crate::Arg; 10] = [&first, &second, &bias, &xq, &xd, &xs, &y, &n_in32, &n_rows, &t];
        self.launch(name, config, &args)
    }

    /// The streamed kernel's launch for `rows` weight rows: blocks of 64 rows, one group of four
    /// warps each, or two (each a half of K, with its own ring) where that still fits the blocks
    /// in one wave, so that a matrix of few 64-row blocks keeps more warps per SM busy
    /// (`ENGINE_MMA_STREAM_GROUPS=1|2` sets it).
    fn stream_launch(&self, format: WeightFormat, rows: usize) -> Result<LaunchConfig> {
        let group_bytes =
            if format == WeightFormat::Q4K { STREAM_GROUP_BYTES_Q4K } else { STREAM_GROUP_BYTES_Q8 };
        let blocks = rows.div_ceil(STREAM_ROWS);
        static GROUPS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
        let forced = *GROUPS.get_or_init(|| {
            std::env::var("ENGINE_MMA_STREAM_GROUPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|g| (1..=2).contains(g))
        });
        // Blocks of two groups an SM holds (228 KiB of shared memory, 1 KiB kept per block).
        let per_sm = (228 * 1024 / (2 * group_bytes as usize + 1024)).max(1);
        let groups = forced.unwrap_or(if blocks <= per_sm * self.sm_count() { 2 } else { 1 });
        Ok(LaunchConfig {
            grid_dim: (to_u32("mma_stream", "row blocks", blocks)?, 1, 1),
            block_dim: (THREADS * groups, 1, 1),
            shared_mem_bytes: groups * group_bytes,
        })
    }

    /// Y[a, :] = W[e] X[row of a, :] (+ bias[e]) for every assignment a of every expert e, as
    /// routed by [`Gpu::route_experts`] ([`Gpu::gemv_rows_experts`]'s product on the tensor
    /// cores): X as 8-bit activations [T, n_in] (gate and up) or, with `x_per_assignment`,
    /// [T k, n_in] (down); Y [T k, rows].
    pub fn mma_rows_experts(
        &self,
        w: &GpuMatrix,
        routing: &ExpertRouting,
        x: &Q8Activations,
        x_per_assignment: bool,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "mma_rows_mxfp4_experts";
        let rows = crate::moe::expert_rows(KERNEL, w, routing.n_expert)?;
        let (assignments, k, n_in) = (routing.assignments, routing.k, w.n_in);
        let x_rows = if x_per_assignment { assignments } else { assignments / k.max(1) };
        expect_len(KERNEL, "x", x.n, x_rows * n_in)?;
        expect_len(KERNEL, "y", y.len(), assignments * rows)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if assignments == 0 {
            return Ok(());
        }
        let Storage::Mxfp4 { quants, exponents } = w.storage() else {
            unreachable!("checked by expert_rows")
        };
        let stream = self.stream();
        let (q, _q) = quants.device_ptr(stream);
        let (e, _e) = exponents.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (offsets, _offsets) = routing.offsets().device_ptr(stream);
        let (order, _order) = routing.order().device_ptr(stream);
        let (xq, _xq) = x.q.device_ptr(stream);
        let (xd, _xd) = x.d.device_ptr(stream);
        let (y, _y) = y.device_ptr_mut(stream);
        let config = LaunchConfig {
            grid_dim: (
                to_u32(KERNEL, "row blocks", rows.div_ceil(EXPERT_ROWS))?,
                to_u32(KERNEL, "experts", routing.n_expert)?,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: EXPERT_SHARED_BYTES,
        };
        let (n_in, rows) = (n_in as u32, rows as u32);
        let x_div = if x_per_assignment { 1u32 } else { k as u32 };
        let args: [&dyn crate::Arg; 11] =
            [&q, &e, &bias, &offsets, &order, &xq, &xd, &y, &n_in, &rows, &x_div];
        self.launch(KERNEL, config, &args)
    }
}
