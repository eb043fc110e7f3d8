//! Matrix-matrix products for prefill on the tensor cores (`gpu/src/matmul/gemm.rs`):
//! Y[T, rows] = X[T, n_in] W[rows, :]^T (+ bias), X and Y f32, W a [`GpuMatrix`] in its stored
//! format.
//!
//! X is first rounded to f16 (bf16 for bf16 weights) into a buffer the [`Gpu`] keeps for the
//! purpose (grown to the largest X seen, freed in stream order), which the product then reads; the
//! products are summed in f32. Weights are dequantized to f16 tile by tile in shared memory.

use crate::matmul::{GpuMatrix, Storage, WeightFormat};
use crate::{Gpu, Result, elementwise_config, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use std::ops::Range;

/// Most splits of a product along K (`Gpu::split_k`): 8, or `ENGINE_GEMM_SPLITS` (2 gives the
/// split in two only, as before 2026-12-07; for A/B runs).
fn max_splits() -> usize {
    static SPLITS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SPLITS.get_or_init(|| {
        std::env::var("ENGINE_GEMM_SPLITS").ok().and_then(|v| v.parse().ok()).filter(|&n| n >= 1).unwrap_or(8)
    })
}

/// Whether [`Gpu::gemm`] gives products of at most 64 tokens with quantized weights to the
/// 64-row kernels ([`Gpu::gemm_rows64`]: compiled for that tile alone, 64 KiB of shared memory and
/// at most 128 registers, two blocks an SM): only with `ENGINE_GEMM_ROWS64=1` for now. They were
/// written in a session without a GPU; the conformance tests call them directly, and the default
/// turns on once those have passed and the A/B of benches/NOTES.md (2026-12-07b) has been run.
fn rows64_kernels() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ENGINE_GEMM_ROWS64").is_ok_and(|v| v == "1"))
}

/// Dynamic shared memory of the 64-row kernels: four X stages of 64 x 64 and two W tiles of
/// 128 x 64 16-bit values.
const ROWS64_SHARED_BYTES: u32 = (4 * 64 * 64 * 2 + 2 * 128 * 64 * 2) as u32;

/// Where a product split along K writes: its launch shape (z splits), the address its kernel
/// writes (Y, or the partial sums), and the partials buffer, locked until they are added up.
struct Split<'a> {
    config: LaunchConfig,
    target: u64,
    partials: Option<std::sync::MutexGuard<'a, Option<CudaSlice<f32>>>>,
}

/// Tokens and outputs per block, threads per block (gpu/src/matmul/gemm.rs).
const TILE_M: usize = 128;
const TILE_N: usize = 128;
const THREADS: u32 = 256;
/// Dynamic shared memory of every GEMM kernel: at most the ring of 4 X and 4 W tiles of
/// 128 x 64 16-bit values, or the wide layout's 8 warps x 128 x 32 f32 sums (both 128 KiB).
pub const GEMM_SHARED_BYTES: usize = 128 * 1024;
const _: () =
    assert!(GEMM_SHARED_BYTES <= crate::matmul::GEMV_SHARED_LIMIT, "Gpu::new raises the limit to this");

/// The launch shapes of the conversion of X and of the product for `n_tokens` tokens and the
/// `rows` of a [n_out, n_in] matrix, after checking every length: `lengths` = [x, y], `bias` the
/// bias length when there is one (a bias covers all n_out rows). None when there is no token.
pub fn gemm_config(
    (n_in, n_out): (usize, usize),
    rows: &Range<usize>,
    n_tokens: usize,
    [x, y]: [usize; 2],
    bias: Option<usize>,
) -> Result<Option<(LaunchConfig, LaunchConfig)>> {
    const KERNEL: &str = "gemm";
    if !n_in.is_multiple_of(8) {
        return Err(shape_error(KERNEL, format!("rows of {n_in} values: the GEMM needs a multiple of 8")));
    }
    if rows.start >= rows.end || rows.end > n_out {
        return Err(shape_error(KERNEL, format!("rows {rows:?} of a matrix of {n_out} rows")));
    }
    let elements =
        n_tokens.checked_mul(n_in).ok_or_else(|| shape_error(KERNEL, "n_tokens * n_in overflows"))?;
    expect_len(KERNEL, "x", x, elements)?;
    let outputs =
        n_tokens.checked_mul(rows.len()).ok_or_else(|| shape_error(KERNEL, "y's size overflows"))?;
    expect_len(KERNEL, "y", y, outputs)?;
    if let Some(bias) = bias {
        expect_len(KERNEL, "bias", bias, n_out)?;
    }
    if n_tokens == 0 {
        return Ok(None);
    }
    to_u32(KERNEL, "n_tokens * n_in", elements)?;
    to_u32(KERNEL, "n_tokens", n_tokens)?;
    let column_tiles = rows.len().div_ceil(TILE_N);
    if column_tiles > 65535 {
        return Err(shape_error(KERNEL, format!("{} rows exceed the grid ({})", rows.len(), 65535 * TILE_N)));
    }
    let product = LaunchConfig {
        grid_dim: (n_tokens.div_ceil(TILE_M) as u32, column_tiles as u32, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: GEMM_SHARED_BYTES as u32,
    };
    Ok(Some((elementwise_config(elements), product)))
}

impl Gpu {
    /// The split along K of a product whose kernel takes one (16-bit weights; Q8_0 and Q4_K, the
    /// phased quantized loop): as many splits z as keep the tiles within one wave of the GPU
    /// (z tiles <= SMs; one block per SM) with at least 8 K steps of 64 each, at most
    /// `max_splits()`. GPT-2 XL's 1600-row products at 512 tokens are 52 tiles of 128 x 128 on 132
    /// SMs: two half-length tiles per output tile run in about half the time; a batched decode
    /// step of 64 rows against a 4,096-row matrix is 32 tiles (64 blocks split in two, half the
    /// SMs idle), against the 8B's 1,024-row keys 8. Two splits add into Y, zeroed first (the
    /// first adds the bias; a + b = b + a, so the order they land in does not matter); more write
    /// partial sums into the kept buffer, which `finish_split` adds in split order into Y.
    /// The 64-row kernels fit two blocks an SM, so they split to fill two blocks' worth of SMs.
    fn split_k(&self, mut config: LaunchConfig, n_in: usize, y: u64, outputs: usize) -> Result<Split<'_>> {
        let tiles = (config.grid_dim.0 * config.grid_dim.1) as usize;
        let per_sm = if config.shared_mem_bytes == ROWS64_SHARED_BYTES { 2 } else { 1 };
        let splits = (per_sm * self.sm_count() / tiles).min(n_in.div_ceil(64) / 8).min(max_splits());
        if splits <= 1 {
            return Ok(Split { config, target: y, partials: None });
        }
        config.grid_dim.2 = splits as u32;
        if splits == 2 {
            // SAFETY: y is the product's output, `outputs` f32 long (checked by gemm_config).
            unsafe { cudarc::driver::sys::cuMemsetD32Async(y, 0, outputs, self.stream().cu_stream()) }
                .result()?;
            return Ok(Split { config, target: y, partials: None });
        }
        let mut buffer = self.gemm_partials.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.as_ref().is_none_or(|b| b.len() < splits * outputs) {
            *buffer = None; // freed in stream order, after the kernels that read it
            *buffer = Some(self.alloc::<f32>(splits * outputs)?);
            self.gemm_buffers_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The address outlives its borrow: the guard in `Split` keeps the buffer (and no other
        // product can take it) until `finish_split` has queued the sum that reads it.
        let target = {
            let (target, _record) = buffer.as_mut().expect("allocated above").device_ptr_mut(self.stream());
            target
        };
        Ok(Split { config, target, partials: Some(buffer) })
    }

    /// After the product's launch: the partial sums of a split in more than two added into Y
    /// (`outputs` f32 at address y), in split order.
    fn finish_split(&self, split: Split<'_>, y: u64, outputs: usize) -> Result<()> {
        let Some(buffer) = split.partials else { return Ok(()) };
        let splits = split.config.grid_dim.2;
        let n = to_u32("gemm", "outputs", outputs)?;
        // One element a thread (elementwise_config counts eight a thread): a block per 256.
        self.launch("gemm_sum_splits", elementwise_config(8 * outputs), &[&split.target, &y, &splits, &n])?;
        drop(buffer);
        Ok(())
    }

    /// Rounds the `elements` f32 at device address `x` to f16 (bf16 with `bf16`) into the kept
    /// buffer, grown (outside any graph capture) when it is smaller, and returns it locked: the
    /// product that reads it is launched while the lock is held.
    pub(crate) fn convert_x(
        &self,
        x: u64,
        elements: usize,
        bf16: bool,
        config: LaunchConfig,
    ) -> Result<std::sync::MutexGuard<'_, Option<CudaSlice<u16>>>> {
        let mut buffer = self.gemm_x.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.as_ref().is_none_or(|b| b.len() < elements) {
            *buffer = None; // freed in stream order, after the kernels that read it
            *buffer = Some(self.alloc::<u16>(elements)?);
            self.gemm_buffers_generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let count = to_u32("gemm", "elements of x", elements)?;
        {
            let x16 = buffer.as_mut().expect("allocated above");
            let (x16, _x16) = x16.device_ptr_mut(self.stream());
            let converter = if bf16 { "convert_f32_to_bf16" } else { "convert_f32_to_f16" };
            self.launch(converter, config, &[&x, &x16, &count])?;
        }
        Ok(buffer)
    }

    /// How many times the GEMM's kept buffers (the f16 copy of X, the partial sums of a split)
    /// have been allocated: a CUDA graph that captured a GEMM is valid only while this stays
    /// what it was at the capture.
    pub fn gemm_buffer_generation(&self) -> u64 {
        self.gemm_buffers_generation.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// y[t, :] = W[rows, :] x[t, :] (+ bias[rows]) for the `n_tokens` rows of x [n_tokens, n_in];
    /// y is [n_tokens, rows.len()], bias (when given) [n_out]. x is rounded to f16 (bf16 for bf16
    /// weights), the products summed in f32. Allocates the f16 copy of x when it is larger than
    /// any before, so the first call of a size must not be inside a CUDA graph capture.
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
        let rows64 = n_tokens <= 64 && rows64_kernels() && w.is_blocks();
        self.gemm_with(w, rows, x, n_tokens, bias, y, rows64)
    }

    /// [`Gpu::gemm`] on the 64-row kernels (`gemm_rows64_*`), for at most 64 tokens and a
    /// quantized matrix; fails with a shape error otherwise.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_rows64(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &impl DevicePtr<f32>,
        n_tokens: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        if n_tokens > 64 {
            return Err(shape_error(
                "gemm_rows64",
                format!("{n_tokens} tokens: the 64-row kernels take at most 64"),
            ));
        }
        if !w.is_blocks() {
            return Err(shape_error(
                "gemm_rows64",
                format!("a {:?} matrix: the 64-row kernels take quantized weights", w.format()),
            ));
        }
        self.gemm_with(w, rows, x, n_tokens, bias, y, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn gemm_with(
        &self,
        w: &GpuMatrix,
        rows: Range<usize>,
        x: &impl DevicePtr<f32>,
        n_tokens: usize,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
        rows64: bool,
    ) -> Result<()> {
        const KERNEL: &str = "gemm";
        let (n_in, n_out) = (w.n_in, w.n_out);
        let Some((convert, config)) =
            gemm_config((n_in, n_out), &rows, n_tokens, [x.len(), y.len()], bias.map(|b| b.len()))?
        else {
            return Ok(());
        };
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        if x % 16 != 0 {
            return Err(shape_error(KERNEL, "x must start on a 16-byte boundary"));
        }
        let mut buffer = self.convert_x(x, n_tokens * n_in, w.format() == WeightFormat::Bf16, convert)?;
        let x16 = buffer.as_mut().expect("allocated by convert_x");
        let (x16, _x16) = x16.device_ptr_mut(stream);

        let (y, _y) = y.device_ptr_mut(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| p + 4 * rows.start as u64);
        // Pointers to the first row of the range, in each array of the stored format.
        let (r, n) = (rows.start as u64, n_in as u64);
        let (t, n_in32, n_rows) = (n_tokens as u32, n_in as u32, rows.len() as u32);
        match w.storage() {
            Storage::F32(m) => {
                let (m, _m) = m.device_ptr(stream);
                let m = m + 4 * r * n;
                self.launch("gemm_f32", config, &[&x16, &m, &bias, &y, &t, &n_in32, &n_rows])
            }
            Storage::F16(m) => {
                let (m, _m) = m.device_ptr(stream);
                let m = m + 2 * r * n;
                let split = self.split_k(config, n_in, y, n_tokens * rows.len())?;
                self.launch(
                    "gemm_f16",
                    split.config,
                    &[&x16, &m, &bias, &split.target, &t, &n_in32, &n_rows],
                )?;
                self.finish_split(split, y, n_tokens * rows.len())
            }
            Storage::Bf16(m) => {
                let (m, _m) = m.device_ptr(stream);
                let m = m + 2 * r * n;
                let split = self.split_k(config, n_in, y, n_tokens * rows.len())?;
                self.launch(
                    "gemm_bf16",
                    split.config,
                    &[&x16, &m, &bias, &split.target, &t, &n_in32, &n_rows],
                )?;
                self.finish_split(split, y, n_tokens * rows.len())
            }
            Storage::Blocks { .. } | Storage::Mxfp4 { .. } if rows64 => {
                let config = LaunchConfig { shared_mem_bytes: ROWS64_SHARED_BYTES, ..config };
                let split = self.split_k(config, n_in, y, n_tokens * rows.len())?;
                let target = split.target;
                let (name, weights) = self.quantized_arguments(w, &rows, "gemm_rows64_")?;
                let mut args: Vec<&dyn crate::Arg> = vec![&x16];
                args.extend(weights.iter().map(|p| p as &dyn crate::Arg));
                args.extend([&bias as &dyn crate::Arg, &target, &t, &n_in32, &n_rows]);
                self.launch(&name, split.config, &args)?;
                self.finish_split(split, y, n_tokens * rows.len())
            }
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                let blocks = r * n / 32; // blocks of 32 before the first row
                match (format, mins, sub) {
                    (WeightFormat::Q8_0, _, _) => {
                        let (q, s) = (q + r * n, s + 2 * blocks);
                        let split = self.split_k(config, n_in, y, n_tokens * rows.len())?;
                        let target = split.target;
                        self.launch(
                            "gemm_q8_0",
                            split.config,
                            &[&x16, &q, &s, &bias, &target, &t, &n_in32, &n_rows],
                        )?;
                        self.finish_split(split, y, n_tokens * rows.len())
                    }
                    (WeightFormat::Q4_0, _, _) => {
                        let (q, s) = (q + r * n / 2, s + 2 * blocks);
                        self.launch("gemm_q4_0", config, &[&x16, &q, &s, &bias, &y, &t, &n_in32, &n_rows])
                    }
                    (WeightFormat::Q4_1, Some(mins), _) => {
                        let (m, _m) = mins.device_ptr(stream);
                        let (q, s, m) = (q + r * n / 2, s + 2 * blocks, m + 2 * blocks);
                        self.launch("gemm_q4_1", config, &[&x16, &q, &s, &m, &bias, &y, &t, &n_in32, &n_rows])
                    }
                    (WeightFormat::Q4K, _, _) => {
                        // 20 bytes of head per super-block of 256.
                        let (q, heads) = (q + r * n / 2, s + 20 * (r * n / 256));
                        let split = self.split_k(config, n_in, y, n_tokens * rows.len())?;
                        let target = split.target;
                        self.launch(
                            "gemm_q4_k",
                            split.config,
                            &[&x16, &q, &heads, &bias, &target, &t, &n_in32, &n_rows],
                        )?;
                        self.finish_split(split, y, n_tokens * rows.len())
                    }
                    (WeightFormat::Q6K, _, Some(sub)) => {
                        let (sub, _sub) = sub.device_ptr(stream);
                        // The high bits follow the low nibbles of the whole matrix.
                        let high = q + (n_out * w.n_in / 2) as u64;
                        let super_blocks = r * n / 256;
                        let (low, high) = (q + r * n / 2, high + r * n / 4);
                        let (d, sub) = (s + 2 * super_blocks, sub + 16 * super_blocks);
                        self.launch(
                            "gemm_q6_k",
                            config,
                            &[&x16, &low, &high, &d, &sub, &bias, &y, &t, &n_in32, &n_rows],
                        )
                    }
                    _ => Err(shape_error(KERNEL, format!("{format:?} matrix without its fields"))),
                }
            }
            Storage::Mxfp4 { quants, exponents } => {
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                let (q, e) = (q + r * n / 2, e + r * n / 32);
                self.launch("gemm_mxfp4", config, &[&x16, &q, &e, &bias, &y, &t, &n_in32, &n_rows])
            }
        }
    }
}

impl Gpu {
    /// The kernel `{prefix}{format}` of a product with the quantized matrix `w` and the device
    /// addresses of its weight arrays at row `rows.start`, in the kernel's argument order. The
    /// addresses outlive their guards: the Gpu's context tracks no events (one stream), and the
    /// matrix outlives the product.
    fn quantized_arguments(
        &self,
        w: &GpuMatrix,
        rows: &Range<usize>,
        prefix: &str,
    ) -> Result<(String, Vec<u64>)> {
        let stream = self.stream();
        let (r, n) = (rows.start as u64, w.n_in as u64);
        let blocks = r * n / 32; // blocks of 32 before the first row
        let (suffix, pointers) = match w.storage() {
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                match (format, mins, sub) {
                    (WeightFormat::Q8_0, _, _) => ("q8_0", vec![q + r * n, s + 2 * blocks]),
                    (WeightFormat::Q4_0, _, _) => ("q4_0", vec![q + r * n / 2, s + 2 * blocks]),
                    (WeightFormat::Q4_1, Some(mins), _) => {
                        let (m, _m) = mins.device_ptr(stream);
                        ("q4_1", vec![q + r * n / 2, s + 2 * blocks, m + 2 * blocks])
                    }
                    // 20 bytes of head per super-block of 256.
                    (WeightFormat::Q4K, _, _) => ("q4_k", vec![q + r * n / 2, s + 20 * (r * n / 256)]),
                    (WeightFormat::Q6K, _, Some(sub)) => {
                        let (sub, _sub) = sub.device_ptr(stream);
                        // The high bits follow the low nibbles of the whole matrix.
                        let high = q + (w.n_out * w.n_in / 2) as u64;
                        let super_blocks = r * n / 256;
                        let (low, high) = (q + r * n / 2, high + r * n / 4);
                        ("q6_k", vec![low, high, s + 2 * super_blocks, sub + 16 * super_blocks])
                    }
                    _ => return Err(shape_error("gemm", format!("{format:?} matrix without its fields"))),
                }
            }
            Storage::Mxfp4 { quants, exponents } => {
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                ("mxfp4", vec![q + r * n / 2, e + r * n / 32])
            }
            _ => return Err(shape_error("gemm", "a 16-bit or f32 matrix has no quantized kernel")),
        };
        Ok((format!("{prefix}{suffix}"), pointers))
    }
}

/// Shape checks, which need no GPU.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_are_checked() {
        let lengths = |t: usize, n_in: usize, rows: usize| [t * n_in, t * rows];
        let (_, product) =
            gemm_config((256, 300), &(0..300), 3, lengths(3, 256, 300), Some(300)).unwrap().unwrap();
        assert_eq!(product.grid_dim, (1, 3, 1));
        assert_eq!(product.shared_mem_bytes as usize, GEMM_SHARED_BYTES);
        let error = gemm_config((256, 300), &(0..300), 3, [767, 900], None).unwrap_err();
        assert_eq!(error.to_string(), "gemm: x has 767 elements, expected 768");
        assert!(gemm_config((256, 300), &(0..300), 3, [768, 901], None).is_err());
        assert!(gemm_config((256, 300), &(0..300), 3, [768, 900], Some(299)).is_err());
        // Rows: a sub-range of the matrix; y holds only those, the bias all of them.
        let (_, product) =
            gemm_config((256, 300), &(10..139), 3, lengths(3, 256, 129), Some(300)).unwrap().unwrap();
        assert_eq!(product.grid_dim, (1, 2, 1));
        assert!(gemm_config((256, 300), &(10..301), 3, lengths(3, 256, 291), None).is_err());
        assert!(gemm_config((256, 300), &(10..10), 3, lengths(3, 256, 0), None).is_err());
        assert!(gemm_config((260, 300), &(0..300), 3, lengths(3, 260, 300), None).is_err());
        // No tokens: nothing to launch.
        assert!(gemm_config((256, 300), &(0..300), 0, [0, 0], None).unwrap().is_none());
        let (_, big) = gemm_config((8, 129), &(0..129), 1000, [8000, 129000], None).unwrap().unwrap();
        assert_eq!(big.grid_dim, (8, 2, 1));
    }
}
