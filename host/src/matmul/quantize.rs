//! 8-bit quantization of activations (llama.cpp's Q8_1), the input of the integer GEMV forms, and
//! the decode step's fused forms that make x and quantize it in one launch
//! (`gpu/src/matmul/quantize.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Activations quantized to 8 bits per block of 32 (values, scales, scale times sum), the input of
/// the integer GEMV forms. Made by [`Gpu::quantize_q8`]; reusable for every matrix that reads the
/// same x (q, k and v; gate and up).
pub struct Q8Activations {
    pub(crate) q: CudaSlice<u8>,
    pub(crate) d: CudaSlice<f32>,
    pub(crate) s: CudaSlice<f32>,
    pub n: usize,
}

impl Q8Activations {
    /// The quantized values (as bytes of i8), block scales and block sums, copied to the host:
    /// for tests that compare two ways of producing them.
    pub fn download(&self, gpu: &Gpu) -> Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
        Ok((gpu.download(&self.q)?, gpu.download(&self.d)?, gpu.download(&self.s)?))
    }

    /// Device addresses of (q, d, s), with the guards that keep them borrowed.
    pub(crate) fn pointers_mut<'a>(
        &'a mut self,
        stream: &'a std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> ([u64; 3], [cudarc::driver::SyncOnDrop<'a>; 3]) {
        let (q, q_guard) = self.q.device_ptr_mut(stream);
        let (d, d_guard) = self.d.device_ptr_mut(stream);
        let (s, s_guard) = self.s.device_ptr_mut(stream);
        ([q, d, s], [q_guard, d_guard, s_guard])
    }
}

impl Gpu {
    /// Space for `n` quantized activations (n a multiple of 32).
    pub fn q8_activations(&self, n: usize) -> Result<Q8Activations> {
        if n == 0 || !n.is_multiple_of(32) {
            return Err(shape_error("quantize_q8_1", format!("n = {n} must be a positive multiple of 32")));
        }
        Ok(Q8Activations { q: self.alloc(n)?, d: self.alloc(n / 32)?, s: self.alloc(n / 32)?, n })
    }

    /// Quantizes x into `out` (llama.cpp's Q8_1: round half to even, f16-rounded scale and sum).
    pub fn quantize_q8(&self, x: &impl DevicePtr<f32>, out: &mut Q8Activations) -> Result<()> {
        const KERNEL: &str = "quantize_q8_1";
        expect_len(KERNEL, "x", x.len(), out.n)?;
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (q, _q) = out.q.device_ptr_mut(stream);
        let (d, _d) = out.d.device_ptr_mut(stream);
        let (s, _s) = out.s.device_ptr_mut(stream);
        let blocks = (out.n / 32).div_ceil(8).min(4 * self.sm_count()) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let n = out.n as u32;
        self.launch(KERNEL, config, &[&x, &q, &d, &s, &n])
    }

    /// x += residual (when given), then out = RMSNorm(x) * weight (when `out` is given) and its
    /// 8-bit quantization into `q8`, for one row of `q8.n` values: the decode step's norm, in one
    /// launch.
    pub fn rms_norm_q8(
        &self,
        x: &mut impl DevicePtrMut<f32>,
        residual: Option<&CudaSlice<f32>>,
        weight: &impl DevicePtr<f32>,
        eps: f32,
        out: Option<&mut CudaSlice<f32>>,
        q8: &mut Q8Activations,
    ) -> Result<()> {
        const KERNEL: &str = "rms_norm_q8_1";
        let n = q8.n;
        expect_len(KERNEL, "x", x.len(), n)?;
        expect_len(KERNEL, "weight", weight.len(), n)?;
        if let Some(r) = residual {
            expect_len(KERNEL, "residual", r.len(), n)?;
        }
        if let Some(o) = &out {
            expect_len(KERNEL, "out", o.len(), n)?;
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr_mut(stream);
        let residual_guard = residual.map(|r| r.device_ptr(stream));
        let residual = residual_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (w, _w) = weight.device_ptr(stream);
        let out_guard = out.map(|o| o.device_ptr_mut(stream));
        let out = out_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (q, _q) = q8.q.device_ptr_mut(stream);
        let (d, _d) = q8.d.device_ptr_mut(stream);
        let (s, _s) = q8.s.device_ptr_mut(stream);
        // One thread per value up to 512 threads: the kernel keeps 8 values per thread in
        // registers (72 of them), so 1024 threads would ask for more than an SM's 64K registers.
        let threads = (n / 32).clamp(1, 16) as u32 * 32;
        let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let dim = n as u32;
        self.launch(KERNEL, config, &[&x, &residual, &w, &eps, &out, &q, &d, &s, &dim])
    }

    /// x += residual (when given), then out = LayerNorm(x) * weight + bias (when `out` is given;
    /// mean and variance over the row) and its 8-bit quantization into `q8`, for one row of `q8.n`
    /// values: GPT-2's decode-step norm, in one launch.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_q8(
        &self,
        x: &mut impl DevicePtrMut<f32>,
        residual: Option<&CudaSlice<f32>>,
        weight: &impl DevicePtr<f32>,
        bias: &impl DevicePtr<f32>,
        eps: f32,
        out: Option<&mut CudaSlice<f32>>,
        q8: &mut Q8Activations,
    ) -> Result<()> {
        const KERNEL: &str = "layer_norm_q8_1";
        let n = q8.n;
        expect_len(KERNEL, "x", x.len(), n)?;
        expect_len(KERNEL, "weight", weight.len(), n)?;
        expect_len(KERNEL, "bias", bias.len(), n)?;
        if let Some(r) = residual {
            expect_len(KERNEL, "residual", r.len(), n)?;
        }
        if let Some(o) = &out {
            expect_len(KERNEL, "out", o.len(), n)?;
        }
        let dim = to_u32(KERNEL, "dim", n)?;
        let stream = self.stream();
        let (x, _x) = x.device_ptr_mut(stream);
        let residual_guard = residual.map(|r| r.device_ptr(stream));
        let residual = residual_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (w, _w) = weight.device_ptr(stream);
        let (b, _b) = bias.device_ptr(stream);
        let out_guard = out.map(|o| o.device_ptr_mut(stream));
        let out = out_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let ([q, d, s], _q8) = q8.pointers_mut(stream);
        // As rms_norm_q8: one thread per value up to 512 threads, 8 values per thread in
        // registers (weight and bias too), the kernel's loops beyond 4096.
        let threads = (n / 32).clamp(1, 16) as u32 * 32;
        let config = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        self.launch(KERNEL, config, &[&x, &residual, &w, &b, &eps, &out, &q, &d, &s, &dim])
    }

    /// act = silu(gate) * up for gate_up = [gate; up] (into `out` when given), quantized into `q8`.
    pub fn swiglu_q8(
        &self,
        gate_up: &impl DevicePtr<f32>,
        out: Option<&mut CudaSlice<f32>>,
        q8: &mut Q8Activations,
    ) -> Result<()> {
        const KERNEL: &str = "swiglu_q8_1";
        let n = q8.n;
        expect_len(KERNEL, "gate_up", gate_up.len(), 2 * n)?;
        if let Some(o) = &out {
            expect_len(KERNEL, "out", o.len(), n)?;
        }
        let stream = self.stream();
        let (g, _g) = gate_up.device_ptr(stream);
        let out_guard = out.map(|o| o.device_ptr_mut(stream));
        let out = out_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (q, _q) = q8.q.device_ptr_mut(stream);
        let (d, _d) = q8.d.device_ptr_mut(stream);
        let (s, _s) = q8.s.device_ptr_mut(stream);
        let blocks = (n / 32).div_ceil(8).min(4 * self.sm_count()) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let n = n as u32;
        self.launch(KERNEL, config, &[&g, &out, &q, &d, &s, &n])
    }

    /// act = gelu_tanh(x) (GPT-2's `gelu_new`) for x of `q8.n` values (into `out` when given),
    /// quantized into `q8`: the GPT-2 decode step's FFN activation, in one launch.
    pub fn gelu_q8(
        &self,
        x: &impl DevicePtr<f32>,
        out: Option<&mut CudaSlice<f32>>,
        q8: &mut Q8Activations,
    ) -> Result<()> {
        const KERNEL: &str = "gelu_tanh_q8_1";
        let n = q8.n;
        expect_len(KERNEL, "x", x.len(), n)?;
        if let Some(o) = &out {
            expect_len(KERNEL, "out", o.len(), n)?;
        }
        let n32 = to_u32(KERNEL, "n", n)?;
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let out_guard = out.map(|o| o.device_ptr_mut(stream));
        let out = out_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let ([q, d, s], _q8) = q8.pointers_mut(stream);
        let blocks = (n / 32).div_ceil(8).min(4 * self.sm_count()) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(KERNEL, config, &[&x, &out, &q, &d, &s, &n32])
    }
}
