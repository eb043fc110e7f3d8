//! Weight matrices on the GPU: their stored formats, the upload with its repacking of GGUF blocks,
//! and the matrix products over them (`gpu/src/matmul/`). `gemv`: matrix-vector products for
//! decode; `quantize`: 8-bit activations for the integer GEMV forms, with the decode step's fused
//! norms and activations; `gemm`: matrix products for prefill.

pub mod gemm;
pub mod gemv;
pub mod gemv_rows;
pub mod mma_rows;
pub mod quantize;

pub use gemv::{GEMV_SHARED_LIMIT, gemv_shared_bytes};
pub use quantize::Q8Activations;

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::CudaSlice;
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
}
