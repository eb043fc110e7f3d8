//! Matrix-vector products for decode, one warp per output row: the float forms ([`Gpu::gemv`],
//! `gpu/src/matmul/gemv.rs`) and the integer forms over 8-bit activations ([`Gpu::gemv_q8`],
//! `gpu/src/matmul/gemv.rs`, `gemv_k.rs` and `gemv_mxfp4.rs`).

use super::{GpuMatrix, Q8Activations, Storage, WeightFormat};
use crate::{Gpu, Result, expect_len, shape_error};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Warps (rows at a time) per block of the GEMV kernels.
const WARPS_PER_BLOCK: usize = 8;

/// Bytes of shared memory the GEMV kernels may use for x (raised from the 48 KiB default).
pub const GEMV_SHARED_LIMIT: usize = 160 * 1024;

/// Values of x per padded chunk and padding words, as the kernel lays x out in shared memory.
fn x_layout(format: WeightFormat) -> (usize, usize) {
    match format {
        WeightFormat::F32 => (4, 0),
        WeightFormat::F16 | WeightFormat::Bf16 => (8, 4),
        WeightFormat::Q8_0 => (16, 4),
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => (32, 4),
        // These have only the integer form, which stages nothing.
        WeightFormat::Q4K | WeightFormat::Q6K | WeightFormat::Mxfp4 => (1, 0),
    }
}

/// Shared memory for x of `n_in` values.
pub fn gemv_shared_bytes(format: WeightFormat, n_in: usize) -> usize {
    if format.integer_only() {
        return 0;
    }
    let (chunk, pad) = x_layout(format);
    4 * (n_in + n_in / chunk * pad)
}

/// Threads of the block that `gemv_f32_split` gives each row.
pub(crate) const SPLIT_THREADS: u32 = 256;

impl Gpu {
    /// Whether an f32 matrix is multiplied a block per row (`gemv_f32_split`): few rows (a MoE
    /// router), where a warp per row would leave the GPU nearly idle.
    pub fn gemv_splits_rows(&self, w: &GpuMatrix) -> bool {
        matches!(w.storage, Storage::F32(_))
            && (1..=2 * self.sm_count()).contains(&w.n_out)
            && w.n_in.is_multiple_of(4)
    }

    /// y = W x (+ bias) for x [n_in], y [n_out].
    pub fn gemv(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<f32>,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv";
        if w.format.integer_only() {
            return Err(shape_error(
                KERNEL,
                format!("{:?} weights have only the integer form; use gemv_q8", w.format),
            ));
        }
        expect_len(KERNEL, "x", x.len(), w.n_in)?;
        expect_len(KERNEL, "y", y.len(), w.n_out)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        if x % 16 != 0 {
            return Err(shape_error(KERNEL, "x must start on a 16-byte boundary"));
        }
        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        // A persistent grid: as many blocks per SM as their copies of x fit in shared memory (at
        // most 8), each staging x once and then taking rows in turn. More resident warps keep more
        // loads in flight, which is what a batch-1 GEMV is limited by.
        let shared = gemv_shared_bytes(w.format, w.n_in);
        let per_sm = (200 * 1024 / shared.max(1)).clamp(1, 8);
        let blocks = w.n_out.div_ceil(WARPS_PER_BLOCK).min(per_sm * self.sm_count());
        let config = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: shared as u32,
        };
        let (n_in, n_out) = (w.n_in as u32, w.n_out as u32);
        match &w.storage {
            // Few rows (a router): a block per row instead of a warp.
            Storage::F32(m) if self.gemv_splits_rows(w) => {
                let (m, _m) = m.device_ptr(stream);
                let config = LaunchConfig {
                    grid_dim: (n_out, 1, 1),
                    block_dim: (SPLIT_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                self.launch("gemv_f32_split", config, &[&m, &bias, &x, &y, &n_in])
            }
            Storage::F32(m) => {
                let (m, _m) = m.device_ptr(stream);
                self.launch("gemv_f32", config, &[&m, &bias, &x, &y, &n_in, &n_out])
            }
            Storage::F16(m) => {
                let (m, _m) = m.device_ptr(stream);
                self.launch("gemv_f16", config, &[&m, &bias, &x, &y, &n_in, &n_out])
            }
            Storage::Bf16(m) => {
                let (m, _m) = m.device_ptr(stream);
                self.launch("gemv_bf16", config, &[&m, &bias, &x, &y, &n_in, &n_out])
            }
            Storage::Blocks { format, quants, scales, mins, .. } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                match (format, mins) {
                    (WeightFormat::Q4_1, Some(mins)) => {
                        let (m, _m) = mins.device_ptr(stream);
                        self.launch("gemv_q4_1", config, &[&q, &s, &m, &bias, &x, &y, &n_in, &n_out])
                    }
                    (WeightFormat::Q4_0, _) => {
                        self.launch("gemv_q4_0", config, &[&q, &s, &bias, &x, &y, &n_in, &n_out])
                    }
                    _ => self.launch("gemv_q8_0", config, &[&q, &s, &bias, &x, &y, &n_in, &n_out]),
                }
            }
            Storage::Mxfp4 { .. } => unreachable!("refused above: MXFP4 has only the integer form"),
        }
    }

    /// y = W x (+ bias) with W quantized (Q8_0, Q4_0, Q4_1, Q4K, Q6K, MXFP4) and x given as 8-bit
    /// activations: the integer (dp4a) form, the numbers llama.cpp computes.
    pub fn gemv_q8(
        &self,
        w: &GpuMatrix,
        x: &Q8Activations,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv_q8";
        expect_len(KERNEL, "x", x.n, w.n_in)?;
        expect_len(KERNEL, "y", y.len(), w.n_out)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if let Storage::Mxfp4 { quants, exponents } = &w.storage {
            let stream = self.stream();
            let (y, _y) = y.device_ptr_mut(stream);
            let bias_guard = bias.map(|b| b.device_ptr(stream));
            let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
            let (xq, _xq) = x.q.device_ptr(stream);
            let (xd, _xd) = x.d.device_ptr(stream);
            let (q, _q) = quants.device_ptr(stream);
            let (e, _e) = exponents.device_ptr(stream);
            let config = LaunchConfig {
                grid_dim: (w.n_out.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
                block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
                shared_mem_bytes: 0,
            };
            let (n_in, n_out) = (w.n_in as u32, w.n_out as u32);
            return self.launch("gemv_mxfp4_q8", config, &[&q, &e, &bias, &xq, &xd, &y, &n_in, &n_out]);
        }
        let Storage::Blocks { format, quants, scales, mins, sub } = &w.storage else {
            return Err(shape_error(
                KERNEL,
                format!("{:?} weights have no integer form; use gemv", w.format),
            ));
        };
        let stream = self.stream();
        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (xq, _xq) = x.q.device_ptr(stream);
        let (xd, _xd) = x.d.device_ptr(stream);
        let (xs, _xs) = x.s.device_ptr(stream);
        let (q, _q) = quants.device_ptr(stream);
        let (s, _s) = scales.device_ptr(stream);
        let sub_guard = sub.as_ref().map(|s| s.device_ptr(stream));
        let sub = sub_guard.as_ref().map_or(0u64, |(p, _)| *p);
        // A warp per row: no shared state, so every row gets its own warp and the GPU holds as
        // many loads in flight as its occupancy allows.
        let config = LaunchConfig {
            grid_dim: (w.n_out.div_ceil(WARPS_PER_BLOCK) as u32, 1, 1),
            block_dim: (32 * WARPS_PER_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_in, n_out) = (w.n_in as u32, w.n_out as u32);
        match (format, mins) {
            (WeightFormat::Q8_0, _) => {
                self.launch("gemv_q8_0_q8", config, &[&q, &s, &bias, &xq, &xd, &y, &n_in, &n_out])
            }
            (WeightFormat::Q4_0, _) => {
                self.launch("gemv_q4_0_q8", config, &[&q, &s, &bias, &xq, &xd, &xs, &y, &n_in, &n_out])
            }
            (WeightFormat::Q4_1, Some(mins)) => {
                let (m, _m) = mins.device_ptr(stream);
                self.launch("gemv_q4_1_q8", config, &[&q, &s, &m, &bias, &xq, &xd, &xs, &y, &n_in, &n_out])
            }
            (WeightFormat::Q4K, _) => {
                // One resident wave of blocks taking rows in turn (measured 2% faster in the
                // decode step than a block per 8 rows; benches/NOTES.md).
                let mut config = config;
                let per_sm = self.resident_blocks("gemv_q4_k_q8", config.block_dim.0, 0)?;
                config.grid_dim.0 = config.grid_dim.0.min((per_sm * self.sm_count()) as u32);
                self.launch("gemv_q4_k_q8", config, &[&q, &s, &bias, &xq, &xd, &xs, &y, &n_in, &n_out])
            }
            (WeightFormat::Q6K, _) => {
                let high = q + (w.n_out * w.n_in / 2) as u64;
                self.launch(
                    "gemv_q6_k_q8",
                    config,
                    &[&q, &high, &s, &sub, &bias, &xq, &xd, &y, &n_in, &n_out],
                )
            }
            _ => Err(shape_error(KERNEL, format!("{format:?} has no integer form"))),
        }
    }
}
