//! Matrix-matrix products for prefill (`gpu/src/matmul/gemm.rs`), on the tensor cores.

use crate::matmul::{GpuMatrix, Storage, WeightFormat};
use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use std::ops::Range;

/// Shared bytes of the GEMM kernels (X and W tiles of f16, padded rows).
pub const GEMM_SHARED: usize = (128 + 128) * 40 * 2;

impl Gpu {
    /// y[t, :] = W[rows, :] x[t, :] (+ bias[rows]) for the `n_tokens` rows of x [n_tokens, n_in];
    /// y is [n_tokens, rows.len()]. f16 products, f32 sums.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &impl DevicePtr<f32>,
        n_tokens: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemm";
        let (n_in, n_out) = (w.n_in, rows.len());
        if rows.start > rows.end || rows.end > w.n_out || n_out == 0 {
            return Err(shape_error(KERNEL, format!("rows {rows:?} of a matrix of {} rows", w.n_out)));
        }
        expect_len(KERNEL, "x", x.len(), n_tokens * n_in)?;
        expect_len(KERNEL, "y", y.len(), n_tokens * n_out)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if n_tokens == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        if x % 16 != 0 {
            return Err(shape_error(KERNEL, "x must start on a 16-byte boundary"));
        }
        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| p + 4 * rows.start as u64);
        let r = rows.start as u64;
        let n = n_in as u64;
        let (kernel, pointers, _guards) = match w.storage() {
            Storage::F32(m) => {
                let (p, g) = m.device_ptr(stream);
                ("gemm_f32", [p + 4 * r * n, 0, 0, 0], vec![g])
            }
            Storage::F16(m) => {
                let (p, g) = m.device_ptr(stream);
                ("gemm_f16", [p + 2 * r * n, 0, 0, 0], vec![g])
            }
            Storage::Bf16(_) => {
                return Err(shape_error(KERNEL, "BF16 weights have no GEMM yet; run tokens one by one"));
            }
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let (q, gq) = quants.device_ptr(stream);
                let (s, gs) = scales.device_ptr(stream);
                let mut guards = vec![gq, gs];
                let m = mins.as_ref().map_or(0, |v| {
                    let (p, g) = v.device_ptr(stream);
                    guards.push(g);
                    p
                });
                let sub = sub.as_ref().map_or(0, |v| {
                    let (p, g) = v.device_ptr(stream);
                    guards.push(g);
                    p
                });
                let blocks32 = r * n / 32;
                match format {
                    WeightFormat::Q8_0 => ("gemm_q8_0", [q + r * n, s + 2 * blocks32, 0, 0], guards),
                    WeightFormat::Q4_0 => ("gemm_q4_0", [q + r * n / 2, s + 2 * blocks32, 0, 0], guards),
                    WeightFormat::Q4_1 => {
                        ("gemm_q4_1", [q + r * n / 2, s + 2 * blocks32, m + 2 * blocks32, 0], guards)
                    }
                    WeightFormat::Q4K => ("gemm_q4_k", [q + r * n / 2, s + 20 * r * n / 256, 0, 0], guards),
                    WeightFormat::Q6K => {
                        let high = q + (w.n_out * n_in / 2) as u64;
                        let sb = r * n / 256;
                        ("gemm_q6_k", [q + r * n / 2, high + r * n / 4, s + 2 * sb, sub + 16 * sb], guards)
                    }
                    _ => unreachable!("block formats are the ones above"),
                }
            }
        };
        // Blocks of 128 tokens when that still gives two blocks per SM (measured at T = 512:
        // 106-107 against 81-82 TFLOP/s at 14336 x 4096), else of 64 (at 4096 x 4096 the wide
        // grid is 128 blocks for 132 SMs, and Q8_0 fell from 84 to 73 TFLOP/s; benches/NOTES.md).
        let wide = n_out.div_ceil(128) * n_tokens.div_ceil(128) >= 2 * self.sm_count();
        let (kernel, bm) = if wide { (format!("{kernel}_wide"), 128) } else { (kernel.to_string(), 64) };
        let config = LaunchConfig {
            grid_dim: (
                to_u32(KERNEL, "n_out", n_out.div_ceil(128))?,
                to_u32(KERNEL, "n_tokens", n_tokens.div_ceil(bm))?,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: GEMM_SHARED as u32,
        };
        let (t, n_in, n_out) = (n_tokens as u32, n_in as u32, n_out as u32);
        let [w0, w1, w2, w3] = pointers;
        self.launch(&kernel, config, &[&w0, &w1, &w2, &w3, &bias, &x, &y, &t, &n_in, &n_out])
    }
}
