//! Weight matrices on the GPU and the matrix-vector product (`gpu/src/matmul/gemv.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::{bf16, f16};

/// How a matrix is stored in the GGUF file (and so how it is handed to [`Gpu::upload_matrix`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    /// Blocks of 32: f16 scale, 32 i8.
    Q8_0,
    /// Blocks of 32: f16 scale, 16 bytes of nibbles (element j low, j + 16 high), q - 8.
    Q4_0,
    /// Blocks of 32: f16 scale, f16 min, 16 bytes of nibbles.
    Q4_1,
    /// Super-blocks of 256: f16 d, f16 dmin, 12 bytes of packed 6-bit sub-block scales and mins,
    /// 128 bytes of nibbles.
    Q4K,
    /// Super-blocks of 256: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 i8
    /// sub-block scales, f16 d.
    Q6K,
    /// Blocks of 32 (OCP MX, GGML type 39): an E8M0 exponent byte, 16 bytes of E2M1 nibbles
    /// (element j low, j + 16 high).
    Mxfp4,
}

impl WeightFormat {
    /// (elements, bytes) per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            WeightFormat::F32 => (1, 4),
            WeightFormat::F16 | WeightFormat::Bf16 => (1, 2),
            WeightFormat::Q8_0 => (32, 34),
            WeightFormat::Q4_0 => (32, 18),
            WeightFormat::Q4_1 => (32, 20),
            WeightFormat::Q4K => (256, 144),
            WeightFormat::Q6K => (256, 210),
            WeightFormat::Mxfp4 => (32, 17),
        }
    }

    /// Whether the format is one of the 256-element super-block ("K") quantizations.
    pub fn is_k_quant(self) -> bool {
        matches!(self, WeightFormat::Q4K | WeightFormat::Q6K)
    }

    /// Whether the GEMV has only the integer form (8-bit activations, [`Gpu::gemv_q8`]).
    pub fn integer_only(self) -> bool {
        matches!(self, WeightFormat::Q4K | WeightFormat::Q6K | WeightFormat::Mxfp4)
    }
}

pub(crate) enum Storage {
    F32(CudaSlice<f32>),
    F16(CudaSlice<f16>),
    Bf16(CudaSlice<bf16>),
    /// The GGUF blocks' fields in separate arrays (see [`repack_blocks`]).
    Blocks {
        format: WeightFormat,
        quants: CudaSlice<u8>,
        scales: CudaSlice<u16>,
        mins: Option<CudaSlice<u16>>,
        /// Q6K's i8 sub-block scales, as stored.
        sub: Option<CudaSlice<u8>>,
    },
    /// MXFP4 regrouped (see [`Repacked`]): 16 nibble bytes and one E8M0 exponent per block.
    Mxfp4 {
        quants: CudaSlice<u8>,
        exponents: CudaSlice<u8>,
    },
}

/// A weight matrix [n_out, n_in] on the GPU, in its stored precision.
pub struct GpuMatrix {
    format: WeightFormat,
    storage: Storage,
    pub n_in: usize,
    pub n_out: usize,
}

impl GpuMatrix {
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The stored format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// Whether the matrix is quantized in blocks (has an integer GEMV form).
    pub fn is_blocks(&self) -> bool {
        matches!(self.storage, Storage::Blocks { .. } | Storage::Mxfp4 { .. })
    }

    /// Device bytes held.
    pub fn size(&self) -> usize {
        match &self.storage {
            Storage::F32(w) => w.len() * 4,
            Storage::F16(w) => w.len() * 2,
            Storage::Bf16(w) => w.len() * 2,
            Storage::Blocks { quants, scales, mins, sub, .. } => {
                quants.len()
                    + 2 * scales.len()
                    + mins.as_ref().map_or(0, |m| 2 * m.len())
                    + sub.as_ref().map_or(0, |s| s.len())
            }
            Storage::Mxfp4 { quants, exponents } => quants.len() + exponents.len(),
        }
    }
}

/// GGUF blocks split by field, so that kernels read quants with aligned 16-byte loads. The same
/// bytes in another order; nothing is dequantized.
#[derive(Debug, Default, PartialEq)]
pub struct Repacked {
    /// Q8_0: 32 i8 per block; Q4_0/Q4_1: 16 nibble bytes (value i low, i + 16 high); Q4K: 16
    /// such nibble bytes per sub-block of 32; Q6K: the low 4 bits in that layout for every block of
    /// the matrix, then the high 2 bits, 8 bytes per block (gpu/src/matmul/kquant.rs). The same
    /// bits as the GGUF blocks, regrouped so that 16 bytes of quants match 32 activations.
    pub quants: Vec<u8>,
    /// The f16 scale of each block (Q6K: the super-block's d). Q4K: the super-block's head, 10
    /// words: d, dmin, then each sub-block's 6-bit (scale, min) unpacked into a byte pair (the
    /// 12 packed bytes become 16: 2.8% more bytes, about a fifth fewer GEMV instructions).
    pub scales: Vec<u16>,
    /// Q4_1: the f16 min of each block; else empty.
    pub mins: Vec<u16>,
    /// Q6K: the 16 i8 scales of each super-block; else empty.
    pub sub: Vec<u8>,
    /// Q6K: the high 2 bits of every value (appended to `quants` on the device); else empty.
    pub high: Vec<u8>,
    /// MXFP4: the E8M0 exponent byte of each block; else empty. (Its `quants` are 16 bytes per
    /// block in another nibble order than GGUF's: byte k holds values 2k (low) and 2k + 1 (high),
    /// so that each 16 bits of nibbles are 4 consecutive values, the order in which the GEMV's
    /// `prmt` lookup returns them; gpu/src/matmul/gemv_mxfp4.rs.)
    pub exponents: Vec<u8>,
}

/// Splits GGUF blocks of `format` into a [`Repacked`], on all cores for large matrices (the parts
/// are independent runs of whole blocks, joined in order).
pub fn repack_blocks(format: WeightFormat, bytes: &[u8]) -> Repacked {
    let (_, block_bytes) = format.block();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blocks = bytes.len() / block_bytes;
    if threads == 1 || bytes.len() < (4 << 20) {
        return repack_run(format, bytes);
    }
    let per_thread = blocks.div_ceil(threads) * block_bytes;
    let parts: Vec<Repacked> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            bytes.chunks(per_thread).map(|run| scope.spawn(move || repack_run(format, run))).collect();
        handles.into_iter().map(|h| h.join().expect("repacking does not panic")).collect()
    });
    let mut out = Repacked::default();
    for mut part in parts {
        out.quants.append(&mut part.quants);
        out.scales.append(&mut part.scales);
        out.mins.append(&mut part.mins);
        out.sub.append(&mut part.sub);
        out.high.append(&mut part.high);
        out.exponents.append(&mut part.exponents);
    }
    out
}

/// [`repack_blocks`] of one run of whole blocks.
fn repack_run(format: WeightFormat, bytes: &[u8]) -> Repacked {
    let (_, block_bytes) = format.block();
    let mut out = Repacked::default();
    let half = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    for block in bytes.chunks_exact(block_bytes) {
        match format {
            WeightFormat::Q4_1 => {
                out.scales.push(half(block, 0));
                out.mins.push(half(block, 2));
                out.quants.extend_from_slice(&block[4..]);
            }
            WeightFormat::Q4K => {
                // The head with its 6-bit scales and mins unpacked: d, dmin, then (scale, min)
                // of each sub-block as a byte pair; 20 bytes, 10 words.
                out.scales.extend([half(block, 0), half(block, 2)]);
                let s = &block[4..16];
                out.scales.extend((0..8).map(|j| {
                    let (scale, min) = if j < 4 {
                        (s[j] & 63, s[j + 4] & 63)
                    } else {
                        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
                    };
                    u16::from_le_bytes([scale, min])
                }));
                let qs = &block[16..144];
                for j in 0..8 {
                    let nibble = |t: usize| {
                        let byte = qs[32 * (j / 2) + t];
                        if j % 2 == 1 { byte >> 4 } else { byte & 0xF }
                    };
                    out.quants.extend((0..16).map(|i| nibble(i) | nibble(i + 16) << 4));
                }
            }
            WeightFormat::Q6K => {
                let (ql, qh) = (&block[..128], &block[128..192]);
                let value = |e: usize| {
                    let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
                    let low = ql[64 * n + 32 * (k & 1) + l];
                    let low = if k >= 2 { low >> 4 } else { low & 0xF };
                    (low, (qh[32 * n + l] >> (2 * k)) & 3)
                };
                for b in 0..8 {
                    let v: Vec<(u8, u8)> = (0..32).map(|t| value(32 * b + t)).collect();
                    out.quants.extend((0..16).map(|i| v[i].0 | v[i + 16].0 << 4));
                    for half in 0..2 {
                        out.high.extend(
                            (0..4).map(|t| {
                                (0..4).fold(0u8, |acc, w| acc | v[16 * half + 4 * w + t].1 << (2 * w))
                            }),
                        );
                    }
                }
                out.sub.extend_from_slice(&block[192..208]);
                out.scales.push(half(block, 208));
            }
            WeightFormat::Mxfp4 => {
                out.exponents.push(block[0]);
                let value = |v: usize| if v < 16 { block[1 + v] & 0xF } else { block[1 + v - 16] >> 4 };
                out.quants.extend((0..16).map(|k| value(2 * k) | value(2 * k + 1) << 4));
            }
            _ => {
                out.scales.push(half(block, 0));
                out.quants.extend_from_slice(&block[2..]);
            }
        }
    }
    out
}

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

impl Gpu {
    /// Uploads a GGUF-stored matrix [n_out, n_in] (`bytes` exactly as in the file).
    pub fn upload_matrix(
        &self,
        format: WeightFormat,
        bytes: &[u8],
        n_in: usize,
        n_out: usize,
    ) -> Result<GpuMatrix> {
        const KERNEL: &str = "upload_matrix";
        let (block, block_bytes) = format.block();
        let row_multiple = if block == 1 { 16 / block_bytes } else { block };
        if n_in == 0 || !n_in.is_multiple_of(row_multiple) {
            return Err(shape_error(
                KERNEL,
                format!("{format:?} rows of {n_in} are not a positive multiple of {row_multiple}"),
            ));
        }
        to_u32(KERNEL, "n_in", n_in)?;
        if gemv_shared_bytes(format, n_in) > GEMV_SHARED_LIMIT {
            return Err(shape_error(KERNEL, format!("rows of {n_in} do not fit the GEMV's shared memory")));
        }
        to_u32(KERNEL, "n_out", n_out)?;
        expect_len(KERNEL, "bytes", bytes.len(), n_in / block * block_bytes * n_out)?;
        let storage = match format {
            WeightFormat::F32 => Storage::F32(
                self.upload(
                    &bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect::<Vec<_>>(),
                )?,
            ),
            WeightFormat::F16 => Storage::F16(self.upload(
                &bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>(),
            )?),
            WeightFormat::Bf16 => Storage::Bf16(self.upload(
                &bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]])).collect::<Vec<_>>(),
            )?),
            WeightFormat::Mxfp4 => {
                let r = repack_blocks(format, bytes);
                Storage::Mxfp4 { quants: self.upload(&r.quants)?, exponents: self.upload(&r.exponents)? }
            }
            _ => {
                let mut r = repack_blocks(format, bytes);
                r.quants.append(&mut r.high);
                Storage::Blocks {
                    format,
                    quants: self.upload(&r.quants)?,
                    scales: self.upload(&r.scales)?,
                    mins: if r.mins.is_empty() { None } else { Some(self.upload(&r.mins)?) },
                    sub: if r.sub.is_empty() { None } else { Some(self.upload(&r.sub)?) },
                }
            }
        };
        Ok(GpuMatrix { format, storage, n_in, n_out })
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
            Storage::F32(m) if (1..=2 * self.sm_count()).contains(&w.n_out) && w.n_in.is_multiple_of(4) => {
                let (m, _m) = m.device_ptr(stream);
                let config =
                    LaunchConfig { grid_dim: (n_out, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
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
}

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

impl Gpu {
    /// out[t] = row ids[t] of `w` (a token embedding table [vocab, dim] in its stored precision),
    /// for every id; out is [ids.len(), dim].
    pub fn embed(
        &self,
        w: &GpuMatrix,
        ids: &impl DevicePtr<u32>,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "embed";
        let tokens = ids.len();
        expect_len(KERNEL, "out", out.len(), tokens * w.n_in)?;
        if tokens == 0 {
            return Ok(());
        }
        match &w.storage {
            Storage::F32(table) => self.embedding(table, ids, out, w.n_in),
            Storage::F16(table) => self.embedding(table, ids, out, w.n_in),
            Storage::Bf16(table) => self.embedding(table, ids, out, w.n_in),
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let stream = self.stream();
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                let mins_guard = mins.as_ref().map(|m| m.device_ptr(stream));
                let m = mins_guard.as_ref().map_or(0u64, |(p, _)| *p);
                let sub_guard = sub.as_ref().map(|s| s.device_ptr(stream));
                let sub = sub_guard.as_ref().map_or(0u64, |(p, _)| *p);
                let (i, _i) = ids.device_ptr(stream);
                let (o, _o) = out.device_ptr_mut(stream);
                let config = LaunchConfig {
                    grid_dim: (to_u32(KERNEL, "ids", tokens)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let dim = w.n_in as u32;
                match format {
                    WeightFormat::Q4K => self.launch("embedding_q4_k", config, &[&q, &s, &i, &o, &dim]),
                    WeightFormat::Q6K => {
                        let high = q + (w.n_out * w.n_in / 2) as u64;
                        self.launch("embedding_q6_k", config, &[&q, &high, &s, &sub, &i, &o, &dim])
                    }
                    _ => {
                        let bits: u32 = if *format == WeightFormat::Q8_0 { 8 } else { 4 };
                        self.launch("embedding_blocks", config, &[&q, &s, &m, &i, &o, &dim, &bits])
                    }
                }
            }
            Storage::Mxfp4 { quants, exponents } => {
                let stream = self.stream();
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                let (i, _i) = ids.device_ptr(stream);
                let (o, _o) = out.device_ptr_mut(stream);
                let config = LaunchConfig {
                    grid_dim: (to_u32(KERNEL, "ids", tokens)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let dim = w.n_in as u32;
                self.launch("embedding_mxfp4", config, &[&q, &e, &i, &o, &dim])
            }
        }
    }
}
