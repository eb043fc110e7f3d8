//! The matrix product on the tensor cores (`gpu/src/matmul/gemm.rs`), for prefill:
//! Y[T, n_out] = X[T, n_in] W^T (+ bias), X and Y f32, W a [`GpuMatrix`] in its stored format.
//!
//! X is first rounded to f16 (bf16 for bf16 weights) into a [`GemmWorkspace`], which the product
//! then reads; the products are summed in f32. Quantized weights are dequantized to f16 tile by
//! tile in shared memory. F32 weights have no form here (the tensor cores take 16-bit operands).

use crate::matmul::{GpuMatrix, Storage, WeightFormat};
use crate::{Gpu, Result, elementwise_config, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Tokens and outputs per block, threads per block (gpu/src/matmul/gemm.rs).
const TILE_M: usize = 128;
const TILE_N: usize = 128;
const THREADS: u32 = 256;
/// Bytes of one 128 x 64 tile of 16-bit values, and tiles in the copy ring.
const TILE_BYTES: usize = 128 * 64 * 2;
const STAGES: usize = 4;
const _: () =
    assert!(2 * STAGES * TILE_BYTES <= crate::matmul::GEMV_SHARED_LIMIT, "Gpu::new raises the limit to this");

/// Dynamic shared memory of the product for weights of `format`: a ring of X tiles, then a ring of
/// W tiles (16-bit weights) or two dequantized W tiles.
pub fn gemm_shared_bytes(format: WeightFormat) -> usize {
    match format {
        WeightFormat::F16 | WeightFormat::Bf16 => 2 * STAGES * TILE_BYTES,
        _ => (STAGES + 2) * TILE_BYTES,
    }
}

/// The 16-bit copy of X that the product reads, reusable across calls and matrices.
pub struct GemmWorkspace {
    x: CudaSlice<u16>,
}

impl GemmWorkspace {
    /// Room for X of up to `elements` values (tokens x n_in).
    pub fn new(gpu: &Gpu, elements: usize) -> Result<Self> {
        if elements == 0 {
            return Err(shape_error("GemmWorkspace", "a workspace needs room for at least one value"));
        }
        Ok(GemmWorkspace { x: gpu.alloc(elements)? })
    }

    /// Values of X it holds.
    pub fn capacity(&self) -> usize {
        self.x.len()
    }
}

/// The launch shapes of the conversion of X and of the product, after checking every length:
/// `lengths` = [x, y, workspace], `bias` the bias length when there is one.
pub fn gemm_config(
    format: WeightFormat,
    t: usize,
    (n_in, n_out): (usize, usize),
    lengths: [usize; 3],
    bias: Option<usize>,
) -> Result<(LaunchConfig, LaunchConfig)> {
    const KERNEL: &str = "gemm";
    if format == WeightFormat::F32 {
        return Err(shape_error(
            KERNEL,
            "F32 weights have no GEMM form (the tensor cores take 16-bit operands)",
        ));
    }
    if t == 0 {
        return Err(shape_error(KERNEL, "t = 0: the product needs at least one token"));
    }
    let [x, y, workspace] = lengths;
    let elements = t.checked_mul(n_in).ok_or_else(|| shape_error(KERNEL, "t * n_in overflows"))?;
    expect_len(KERNEL, "x", x, elements)?;
    expect_len(
        KERNEL,
        "y",
        y,
        t.checked_mul(n_out).ok_or_else(|| shape_error(KERNEL, "t * n_out overflows"))?,
    )?;
    if let Some(bias) = bias {
        expect_len(KERNEL, "bias", bias, n_out)?;
    }
    if workspace < elements {
        return Err(shape_error(
            KERNEL,
            format!("the workspace holds {workspace} values; X of {t} x {n_in} needs {elements}"),
        ));
    }
    to_u32(KERNEL, "t * n_in", elements)?;
    let row_tiles = to_u32(KERNEL, "t / 128", t.div_ceil(TILE_M))?;
    let column_tiles = n_out.div_ceil(TILE_N);
    if column_tiles > 65535 {
        return Err(shape_error(
            KERNEL,
            format!("n_out = {n_out} exceeds the grid ({} outputs)", 65535 * TILE_N),
        ));
    }
    let product = LaunchConfig {
        grid_dim: (row_tiles, column_tiles as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: gemm_shared_bytes(format) as u32,
    };
    Ok((elementwise_config(elements), product))
}

impl Gpu {
    /// y = x W^T (+ bias) for x [t, n_in] and y [t, n_out] (row-major f32), on the tensor cores:
    /// x is rounded to f16 (bf16 for bf16 weights) into `workspace`, products summed in f32.
    pub fn gemm(
        &self,
        w: &GpuMatrix,
        x: &impl DevicePtr<f32>,
        t: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
        workspace: &mut GemmWorkspace,
    ) -> Result<()> {
        let (convert, config) = gemm_config(
            w.format(),
            t,
            (w.n_in, w.n_out),
            [x.len(), y.len(), workspace.capacity()],
            bias.map(|b| b.len()),
        )?;
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        if x % 16 != 0 {
            return Err(shape_error("gemm", "x must start on a 16-byte boundary"));
        }
        let (x16, _x16) = workspace.x.device_ptr_mut(stream);
        let elements = (t * w.n_in) as u32;
        let converter =
            if w.format() == WeightFormat::Bf16 { "convert_f32_to_bf16" } else { "convert_f32_to_f16" };
        self.launch(converter, convert, &[&x, &x16, &elements])?;

        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (t, n_in, n_out) = (t as u32, w.n_in as u32, w.n_out as u32);
        match &w.storage {
            Storage::F16(m) => {
                let (m, _m) = m.device_ptr(stream);
                self.launch("gemm_f16", config, &[&x16, &m, &bias, &y, &t, &n_in, &n_out])
            }
            Storage::Bf16(m) => {
                let (m, _m) = m.device_ptr(stream);
                self.launch("gemm_bf16", config, &[&x16, &m, &bias, &y, &t, &n_in, &n_out])
            }
            Storage::F32(_) => Err(shape_error("gemm", "F32 weights have no GEMM form")),
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                match (format, mins, sub) {
                    (WeightFormat::Q8_0, _, _) => {
                        self.launch("gemm_q8_0", config, &[&x16, &q, &s, &bias, &y, &t, &n_in, &n_out])
                    }
                    (WeightFormat::Q4_0, _, _) => {
                        self.launch("gemm_q4_0", config, &[&x16, &q, &s, &bias, &y, &t, &n_in, &n_out])
                    }
                    (WeightFormat::Q4_1, Some(mins), _) => {
                        let (m, _m) = mins.device_ptr(stream);
                        self.launch("gemm_q4_1", config, &[&x16, &q, &s, &m, &bias, &y, &t, &n_in, &n_out])
                    }
                    (WeightFormat::Q4K, _, _) => {
                        self.launch("gemm_q4_k", config, &[&x16, &q, &s, &bias, &y, &t, &n_in, &n_out])
                    }
                    (WeightFormat::Q6K, _, Some(sub)) => {
                        let (sub, _sub) = sub.device_ptr(stream);
                        let high = q + (w.n_out * w.n_in / 2) as u64;
                        self.launch(
                            "gemm_q6_k",
                            config,
                            &[&x16, &q, &high, &s, &sub, &bias, &y, &t, &n_in, &n_out],
                        )
                    }
                    _ => Err(shape_error("gemm", format!("{format:?} matrix without its fields"))),
                }
            }
        }
    }
}

/// Shape checks, which need no GPU.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let ok = gemm_config(WeightFormat::Q4K, 3, (256, 300), [768, 900, 768], Some(300)).unwrap();
        assert_eq!(ok.1.grid_dim, (1, 3, 1));
        assert_eq!(ok.1.shared_mem_bytes as usize, 6 * TILE_BYTES);
        let error = gemm_config(WeightFormat::Q4K, 3, (256, 300), [767, 900, 768], None).unwrap_err();
        assert_eq!(error.to_string(), "gemm: x has 767 elements, expected 768");
        assert!(gemm_config(WeightFormat::F16, 3, (256, 300), [768, 901, 768], None).is_err());
        assert!(gemm_config(WeightFormat::F16, 3, (256, 300), [768, 900, 768], Some(299)).is_err());
        assert!(gemm_config(WeightFormat::F16, 3, (256, 300), [768, 900, 767], None).is_err());
        assert!(gemm_config(WeightFormat::F16, 0, (256, 300), [0, 0, 768], None).is_err());
        assert!(gemm_config(WeightFormat::F32, 3, (256, 300), [768, 900, 768], None).is_err());
        let (_, big) = gemm_config(WeightFormat::F16, 1000, (8, 129), [8000, 129000, 8000], None).unwrap();
        assert_eq!(big.grid_dim, (8, 2, 1));
        assert_eq!(big.shared_mem_bytes as usize, 8 * TILE_BYTES);
    }
}
