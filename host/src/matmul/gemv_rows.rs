//! Products of a few activation rows with a quantized matrix, for batched decode
//! (`gpu/src/matmul/gemv_rows.rs`): the integer GEMV of [`Gpu::gemv_q8`] with each weight load
//! serving up to eight rows, so that a step of B sequences reads its weights once. Each row's
//! sums are the batch-1 GEMV's, bit for bit.
//!
//! Formats: Q8_0, Q4_K, Q6_K and MXFP4 (what the 8B, gpt-oss and Qwen files hold); others go
//! through the tensor-core GEMM ([`Gpu::gemm`]), as does every product of many rows.

use super::{GpuMatrix, Q8Activations, Storage, WeightFormat};
use crate::moe::ExpertRouting;
use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use std::ops::Range;

/// Warps (weight rows at a time) per block.
const WARPS_PER_BLOCK: usize = 8;

/// Most activation rows a product takes through these kernels by default (past it, the GEMM);
/// `ENGINE_GEMV_ROWS` sets another (0: never). Chosen on the H200 (benches/NOTES.md).
const DEFAULT_MAX_ROWS: usize = 8;
/// Most tokens whose experts go through [`Gpu::gemv_rows_experts`] by default (where the
/// tensor-core kernels of mma_rows.rs do not take them).
const DEFAULT_MAX_EXPERT_TOKENS: usize = 16;

/// The most rows for which [`Gpu::gemv_rows`] is used instead of the GEMM.
pub fn gemv_rows_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ENGINE_GEMV_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_ROWS)
    })
}

/// The most tokens for which a mixture of experts takes [`Gpu::gemv_rows_experts`] instead of
/// [`Gpu::gemm_experts`]; `ENGINE_GEMV_ROWS_EXPERTS` sets another (0: never).
pub fn gemv_rows_expert_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("ENGINE_GEMV_ROWS_EXPERTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_EXPERT_TOKENS)
    })
}

impl GpuMatrix {
    /// Whether [`Gpu::gemv_rows`] takes this matrix.
    pub fn has_gemv_rows(&self) -> bool {
        matches!(
            self.format,
            WeightFormat::Q8_0 | WeightFormat::Q4K | WeightFormat::Q6K | WeightFormat::Mxfp4
        )
    }
}

impl Gpu {
    /// Y[t, :] = W[rows, :] X[t, :] (+ bias[rows]) for the `n` rows of X, given as 8-bit
    /// activations [n, n_in]; Y [n, rows.len()], bias (when given) [n_out].
    pub fn gemv_rows(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &Q8Activations,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv_rows";
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
        let config = LaunchConfig {
            grid_dim: (rows.len().div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (r, k) = (rows.start as u64, n_in as u64);
        let (n_in32, n_rows, t) = (n_in as u32, rows.len() as u32, n as u32);
        match &w.storage {
            Storage::Mxfp4 { quants, exponents } => {
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                let (q, e) = (q + r * k / 2, e + r * k / 32);
                self.launch("gemv_rows_mxfp4", config, &[&q, &e, &bias, &xq, &xd, &y, &n_in32, &n_rows, &t])
            }
            Storage::Blocks { format, quants, scales, sub, .. } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                match (format, sub) {
                    (WeightFormat::Q8_0, _) => {
                        let (q, s) = (q + r * k, s + 2 * (r * k / 32));
                        self.launch(
                            "gemv_rows_q8_0",
                            config,
                            &[&q, &s, &bias, &xq, &xd, &y, &n_in32, &n_rows, &t],
                        )
                    }
                    (WeightFormat::Q4K, _) => {
                        let (q, heads) = (q + r * k / 2, s + 20 * (r * k / 256));
                        let args: [&dyn crate::Arg; 10] =
                            [&q, &heads, &bias, &xq, &xd, &xs, &y, &n_in32, &n_rows, &t];
                        self.launch("gemv_rows_q4_k", config, &args)
                    }
                    (WeightFormat::Q6K, Some(sub)) => {
                        let (sub, _sub) = sub.device_ptr(stream);
                        // The high bits follow the low nibbles of the whole matrix.
                        let high = q + (n_out * n_in / 2) as u64;
                        let super_blocks = r * k / 256;
                        let (low, high) = (q + r * k / 2, high + r * k / 4);
                        let (d, sub) = (s + 2 * super_blocks, sub + 16 * super_blocks);
                        let args: [&dyn crate::Arg; 11] =
                            [&low, &high, &d, &sub, &bias, &xq, &xd, &y, &n_in32, &n_rows, &t];
                        self.launch("gemv_rows_q6_k", config, &args)
                    }
                    _ => Err(shape_error(KERNEL, format!("{format:?} weights have no multi-row GEMV"))),
                }
            }
            _ => Err(shape_error(KERNEL, format!("{:?} weights have no multi-row GEMV", w.format))),
        }
    }

    /// Y[t, :] = W X[t, :] (+ bias) for an f32 matrix of at most 2 * SMs rows (a router) and
    /// the `n` rows of X [n, n_in] f32: each row's sums are [`Gpu::gemv`]'s (a block per row).
    pub fn gemv_rows_f32(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<f32>,
        n: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv_rows_f32_split";
        let Storage::F32(m) = &w.storage else {
            return Err(shape_error(KERNEL, format!("{:?} weights: this product takes f32", w.format)));
        };
        if !(self.gemv_splits_rows(w)) {
            return Err(shape_error(KERNEL, format!("{} rows of {}: not a router's shape", w.n_out, w.n_in)));
        }
        expect_len(KERNEL, "x", x.len(), n * w.n_in)?;
        expect_len(KERNEL, "y", y.len(), n * w.n_out)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (m, _m) = m.device_ptr(stream);
        let (x, _x) = x.device_ptr(stream);
        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let groups = to_u32(KERNEL, "row groups", n.div_ceil(8))?;
        let config = LaunchConfig {
            grid_dim: (w.n_out as u32, groups, 1),
            block_dim: (super::gemv::SPLIT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_in, n) = (w.n_in as u32, n as u32);
        self.launch(KERNEL, config, &[&m, &bias, &x, &y, &n_in, &n])
    }

    /// Y[a, :] = W[e] X[row of a, :] (+ bias[e]) for every assignment a of every expert e, as
    /// routed by [`Gpu::route_experts`] ([`Gpu::gemm_experts`]'s product), X given as 8-bit
    /// activations: [T, n_in] (one row per token: gate and up) or, with `x_per_assignment`,
    /// [T k, n_in] (down); Y [T k, rows]. Each row's sums are [`Gpu::gemv_q8_experts`]'s.
    pub fn gemv_rows_experts(
        &self,
        w: &GpuMatrix,
        routing: &ExpertRouting,
        x: &Q8Activations,
        x_per_assignment: bool,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv_rows_mxfp4_experts";
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
        let warps = routing.n_expert * rows;
        let config = LaunchConfig {
            grid_dim: (to_u32(KERNEL, "expert rows", warps.div_ceil(WARPS_PER_BLOCK))?, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_in, rows, n) = (n_in as u32, rows as u32, routing.n_expert as u32);
        let x_div = if x_per_assignment { 1u32 } else { k as u32 };
        let args: [&dyn crate::Arg; 12] =
            [&q, &e, &bias, &offsets, &order, &xq, &xd, &y, &n_in, &rows, &n, &x_div];
        self.launch(KERNEL, config, &args)
    }
}
