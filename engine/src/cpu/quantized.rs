//! Matrix products with weights kept in their GGUF block format, computed the way llama.cpp's CPU
//! back end computes them: each activation row is quantized to 8-bit blocks of 32 (Q8_0 for Q8_0
//! and MXFP4 weights, Q8_1, which also carries d * sum(q), for Q4_0/Q4_1/Q5_0/Q5_1), and each block
//! pair is an integer dot product scaled by the two f16 scales:
//!   Q8_0 x Q8_0:  d_w d_x sum(q_w q_x)
//!   Q4_0 x Q8_1:  d_w d_x sum((q_w - 8) q_x)        Q5_0: (q_w - 16)
//!   Q4_1 x Q8_1:  d_w d_x sum(q_w q_x) + m_w s_x     Q5_1 likewise
//! Activation quantization: d = max|x| / 127 stored as f16, q = round-half-even(x * 127 / max|x|)
//! (llama.cpp's x86 path). This keeps the weights at their stored size (a quarter or less of f32)
//! and gives the same numbers llama.cpp gives, which is what makes greedy continuations comparable:
//! the alternative, f32 activations against dequantized weights, is more exact but differs from
//! llama.cpp by about the activation rounding, enough to flip near-ties between the top two tokens.
//! Q4_K, Q5_K and Q6_K weights meet activations quantized per 256 values to Q8_K, as llama.cpp
//! does for them (`integer_dot/k_quants.rs` states that math); the other K-quants (Q2_K, Q3_K)
//! are dequantized a row at a time and use f32 activations. The block kernels are in
//! `integer_dot/` (scalar, AVX2, AVX-512 VNNI), the threads in `threads.rs`.

use super::integer_dot::k_quants::{self, Q8KBlock};
use super::integer_dot::{self, Q8Block};
use super::matmul::dot;
use super::threads::{self, SharedOutput};
use crate::gguf::{GgmlType, dequantize};

/// A weight matrix [n_out, n_in], f32, in its stored block format, or repacked at load.
pub enum Matrix {
    F32(Vec<f32>),
    Blocks {
        ty: GgmlType,
        bytes: Vec<u8>,
    },
    /// Rows of `ty` (Q8_0, Q4_0, Q4_1) in groups of [`integer_dot::GROUP_ROWS`]
    /// ([`integer_dot::repack`]), the last n_out % 8 rows as stored. A group takes the bytes its
    /// rows take as stored, so row r of a group-aligned range starts where it would in the
    /// stored matrix.
    Groups {
        ty: GgmlType,
        bytes: Vec<u8>,
    },
}

impl Matrix {
    pub fn from_f32(values: Vec<f32>) -> Self {
        Matrix::F32(values)
    }

    /// A matrix of rows of `n_in` elements in block format `ty` from its stored bytes: repacked
    /// into row groups where this machine's kernel has the grouped product of `ty`, which reads
    /// each group front to back (decode) and needs no repacking per product (prompts).
    pub fn from_blocks(ty: GgmlType, bytes: &[u8], n_in: usize) -> Self {
        if !integer_dot::has_groups(integer_dot::kernel(), ty) {
            return Matrix::Blocks { ty, bytes: bytes.to_vec() };
        }
        let row_bytes = n_in / ty.block_size() * ty.block_bytes();
        let n_out = bytes.len() / row_bytes;
        let group_bytes = integer_dot::GROUP_ROWS * row_bytes;
        let grouped = n_out / integer_dot::GROUP_ROWS * group_bytes;
        let mut packed = Vec::with_capacity(bytes.len());
        for group in bytes[..grouped].chunks_exact(group_bytes) {
            let rows: Vec<&[u8]> = group.chunks_exact(row_bytes).collect();
            integer_dot::repack(ty, &rows, &mut packed);
        }
        packed.extend_from_slice(&bytes[grouped..]);
        Matrix::Groups { ty, bytes: packed }
    }

    /// Row `i` in its stored block format (a row of a group unpacked).
    fn stored_row(&self, n_in: usize, i: usize) -> (GgmlType, std::borrow::Cow<'_, [u8]>) {
        match self {
            Matrix::F32(_) => unreachable!("f32 rows have no block format"),
            Matrix::Blocks { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                (*ty, bytes[i * row..(i + 1) * row].into())
            }
            Matrix::Groups { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                let grouped = bytes.len() / row / integer_dot::GROUP_ROWS * integer_dot::GROUP_ROWS;
                if i >= grouped {
                    return (*ty, bytes[i * row..(i + 1) * row].into());
                }
                let (g, lane) = (i / integer_dot::GROUP_ROWS, i % integer_dot::GROUP_ROWS);
                let group =
                    &bytes[g * integer_dot::GROUP_ROWS * row..(g + 1) * integer_dot::GROUP_ROWS * row];
                let mut out = Vec::with_capacity(row);
                integer_dot::group_row(*ty, group, lane, &mut out);
                (*ty, out.into())
            }
        }
    }

    /// Rows [start, end) of a matrix with rows of `n_in` elements.
    pub fn rows(&self, n_in: usize, start: usize, end: usize) -> Matrix {
        match self {
            Matrix::F32(v) => Matrix::F32(v[start * n_in..end * n_in].to_vec()),
            Matrix::Blocks { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                Matrix::Blocks { ty: *ty, bytes: bytes[start * row..end * row].to_vec() }
            }
            Matrix::Groups { ty, bytes } => {
                let row = n_in / ty.block_size() * ty.block_bytes();
                let n_out = bytes.len() / row;
                let aligned = |i: usize| i.is_multiple_of(integer_dot::GROUP_ROWS) || i == n_out;
                if aligned(start) && aligned(end) {
                    return Matrix::Groups { ty: *ty, bytes: bytes[start * row..end * row].to_vec() };
                }
                let stored: Vec<u8> =
                    (start..end).flat_map(|i| self.stored_row(n_in, i).1.into_owned()).collect();
                Matrix::from_blocks(*ty, &stored, n_in)
            }
        }
    }

    /// Row `i` as f32 (an embedding lookup).
    pub fn row_f32(&self, n_in: usize, i: usize) -> Vec<f32> {
        match self {
            Matrix::F32(v) => v[i * n_in..(i + 1) * n_in].to_vec(),
            _ => {
                let (ty, row) = self.stored_row(n_in, i);
                dequantize(ty, &row, n_in).expect("row size checked at load")
            }
        }
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        match self {
            Matrix::F32(v) => v.len() * 4,
            Matrix::Blocks { bytes, .. } | Matrix::Groups { bytes, .. } => bytes.len(),
        }
    }
}

/// Weight rows a part of a job takes at a time: their blocks stay in cache while every tile of
/// tokens passes over them (64 rows of a 4096-wide Q8_0 matrix: 280 KB).
const ROWS_PER_CHUNK: usize = 64;

/// Parts of a product per thread, claimed by whichever thread comes first: on a machine whose
/// cores are shared (a VM, a build beside it) a thread that runs ahead takes more of them.
const PARTS_PER_THREAD: usize = 4;

thread_local! {
    /// The calling thread's quantized activations, kept between calls (no allocation per token).
    static ACTIVATIONS: std::cell::RefCell<Vec<Q8Block>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's Q8_K activations (K-quant weights), kept between calls.
    static K_ACTIVATIONS: std::cell::RefCell<Vec<Q8KBlock>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The calling thread's activation corrections, for repacked products.
    static CORRECTIONS: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The activation blocks of the rows of `x` (for the reference form in `matvec_k_q8_1`).
fn quantize_q8(x: &[f32]) -> Vec<Q8Block> {
    let mut blocks = vec![Q8Block::ZERO; x.len() / 32];
    integer_dot::quantize_scalar(x, &mut blocks);
    blocks
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    integer_dot::f16_at(bytes, at)
}

/// out[t, :] = W x[t, :] (+ bias), W [n_out, n_in] as `weight`. Rows of W are split evenly into
/// [`PARTS_PER_THREAD`] parts a thread (whole groups of a repacked Q8_0 matrix); each part walks its rows in
/// chunks, and each chunk meets the tokens a tile at a time ([`integer_dot::TILE`]), so a prompt
/// reads each weight block once per tile.
pub fn matmul(x: &[f32], weight: &Matrix, bias: Option<&[f32]>, out: &mut [f32], n_in: usize, n_out: usize) {
    let (ty, bytes, grouped_rows) = match weight {
        Matrix::F32(w) => return super::matmul::matmul(x, w, bias, out, n_in, n_out),
        Matrix::Blocks { ty, bytes } => (*ty, bytes, 0),
        Matrix::Groups { ty, bytes } => {
            (*ty, bytes, n_out / integer_dot::GROUP_ROWS * integer_dot::GROUP_ROWS)
        }
    };
    let n_tokens = x.len() / n_in;
    assert_eq!(out.len(), n_tokens * n_out);
    let row_bytes = n_in / ty.block_size() * ty.block_bytes();
    assert_eq!(bytes.len(), row_bytes * n_out, "weight is not [{n_out}, {n_in}] of {ty}");
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n_out);
    }
    let pool = threads::pool();
    let output = SharedOutput(out.as_mut_ptr());
    if k_quants::supported(ty) {
        return matmul_k_quants(x, ty, bytes, bias, output, n_in, n_out);
    }
    if !integer_dot::supported(ty) {
        // Other K-quants (Q2_K, Q3_K): a row dequantized at a time, against f32 activations.
        pool.run(&|part, parts| {
            for o in threads::split(n_out, part, parts) {
                let row = dequantize(ty, &bytes[o * row_bytes..(o + 1) * row_bytes], n_in)
                    .expect("row size checked");
                let b = bias.map_or(0.0, |b| b[o]);
                for t in 0..n_tokens {
                    let value = dot(&row, &x[t * n_in..(t + 1) * n_in]) + b;
                    // SAFETY: row o belongs to this part only; t * n_out + o < out.len().
                    unsafe { output.write(t * n_out + o, value) };
                }
            }
        });
        return;
    }
    let kernel = integer_dot::kernel();
    let n_blocks = n_in / 32;
    let grouped = grouped_rows > 0;
    ACTIVATIONS.with_borrow_mut(|activations| {
        CORRECTIONS.with_borrow_mut(|corrections| {
            activations.resize(n_tokens * n_blocks, Q8Block::ZERO);
            corrections.resize(if grouped { n_tokens * n_blocks } else { 0 }, 0);
            if n_tokens >= 8 {
                let blocks = SharedOutput(activations.as_mut_ptr());
                let starts = SharedOutput(corrections.as_mut_ptr());
                pool.run(&|part, parts| {
                    let tokens = threads::split(n_tokens, part, parts);
                    let range = tokens.start * n_blocks..tokens.end * n_blocks;
                    // SAFETY: each part quantizes its own tokens' blocks.
                    let mine = unsafe { blocks.part(range.start, range.len()) };
                    integer_dot::quantize(kernel, &x[tokens.start * n_in..tokens.end * n_in], mine);
                    if grouped {
                        // SAFETY: each part writes its own tokens' corrections.
                        integer_dot::corrections(ty, mine, unsafe { starts.part(range.start, range.len()) });
                    }
                });
            } else {
                integer_dot::quantize(kernel, x, activations);
                if grouped {
                    integer_dot::corrections(ty, activations, corrections);
                }
            }
            let activations = &activations[..];
            let corrections = &corrections[..];
            let token_range = |first: usize, count: usize| {
                let mut tile: [&[Q8Block]; integer_dot::TILE] = [&[]; integer_dot::TILE];
                let mut starts: [&[i32]; integer_dot::TILE] = [&[]; integer_dot::TILE];
                for t in 0..count {
                    let blocks = (first + t) * n_blocks..(first + t + 1) * n_blocks;
                    tile[t] = &activations[blocks.clone()];
                    if grouped {
                        starts[t] = &corrections[blocks];
                    }
                }
                (tile, starts)
            };
            pool.run_parts(pool.n_threads() * PARTS_PER_THREAD, &|part, parts| {
                // Whole groups split over the parts, then the rows after the last group.
                let groups = threads::split(grouped_rows / integer_dot::GROUP_ROWS, part, parts);
                let group_bytes = integer_dot::GROUP_ROWS * row_bytes;
                let mut group_values = [[0.0f32; integer_dot::GROUP_ROWS]; integer_dot::TILE];
                let groups_per_chunk = ROWS_PER_CHUNK / integer_dot::GROUP_ROWS;
                for chunk in (groups.start..groups.end).step_by(groups_per_chunk) {
                    let chunk_end = (chunk + groups_per_chunk).min(groups.end);
                    for first in (0..n_tokens).step_by(integer_dot::TILE) {
                        let count = integer_dot::TILE.min(n_tokens - first);
                        let (tile, starts) = token_range(first, count);
                        for g in chunk..chunk_end {
                            let group = &bytes[g * group_bytes..(g + 1) * group_bytes];
                            integer_dot::dot_group(
                                kernel,
                                ty,
                                group,
                                &starts[..count],
                                &tile[..count],
                                &mut group_values,
                            );
                            let start = g * integer_dot::GROUP_ROWS;
                            for (t, token_values) in group_values[..count].iter().enumerate() {
                                for (r, value) in token_values.iter().enumerate() {
                                    let b = bias.map_or(0.0, |b| b[start + r]);
                                    // SAFETY: row start + r belongs to this part only; the index is within out.
                                    unsafe { output.write((first + t) * n_out + start + r, value + b) };
                                }
                            }
                        }
                    }
                }
                let rows = threads::split(n_out - grouped_rows, part, parts);
                let rows = grouped_rows + rows.start..grouped_rows + rows.end;
                let mut values = [[0.0f32; integer_dot::TILE]; integer_dot::ROWS];
                let mut weight_rows: [&[u8]; integer_dot::ROWS] = [&[]; integer_dot::ROWS];
                for chunk in (rows.start..rows.end).step_by(ROWS_PER_CHUNK) {
                    let chunk_end = (chunk + ROWS_PER_CHUNK).min(rows.end);
                    for first in (0..n_tokens).step_by(integer_dot::TILE) {
                        let count = integer_dot::TILE.min(n_tokens - first);
                        let (tile, _) = token_range(first, count);
                        // One token: four rows at a time; more: two (or four) rows x the tile's tokens.
                        // With AVX-512's 32 vector registers, 4 rows x 4 tokens (16 accumulators).
                        let wide = count == 4 && kernel == integer_dot::Kernel::Avx512Vnni;
                        let step = if count == 1 || wide { 4 } else { 2 };
                        let mut o = chunk;
                        while o < chunk_end {
                            let n_rows = if o + step <= chunk_end { step } else { 1 };
                            for (r, slot) in weight_rows[..n_rows].iter_mut().enumerate() {
                                *slot = &bytes[(o + r) * row_bytes..(o + r + 1) * row_bytes];
                            }
                            integer_dot::dot_tile(
                                kernel,
                                ty,
                                &weight_rows[..n_rows],
                                &tile[..count],
                                &mut values,
                            );
                            for (r, row_values) in values[..n_rows].iter().enumerate() {
                                let b = bias.map_or(0.0, |b| b[o + r]);
                                for (t, value) in row_values[..count].iter().enumerate() {
                                    // SAFETY: row o + r belongs to this part only; the index is within out.
                                    unsafe { output.write((first + t) * n_out + o + r, value + b) };
                                }
                            }
                            o += n_rows;
                        }
                    }
                }
            });
        })
    });
}

/// [`matmul`] of Q4_K, Q5_K and Q6_K weights ([`k_quants`]): each token's row quantized to Q8_K
/// (split over the threads for prompts), then the rows of W split into parts as for the other
/// types, each part walking its rows in chunks that meet the tokens a tile at a time.
fn matmul_k_quants(
    x: &[f32],
    ty: GgmlType,
    bytes: &[u8],
    bias: Option<&[f32]>,
    output: SharedOutput,
    n_in: usize,
    n_out: usize,
) {
    assert!(n_in.is_multiple_of(k_quants::BLOCK), "{ty} rows of {n_in} values");
    let (kernel, pool) = (integer_dot::kernel(), threads::pool());
    let n_tokens = x.len() / n_in;
    let n_blocks = n_in / k_quants::BLOCK;
    let row_bytes = n_blocks * ty.block_bytes();
    K_ACTIVATIONS.with_borrow_mut(|activations| {
        activations.resize(n_tokens * n_blocks, Q8KBlock::ZERO);
        if n_tokens >= 8 {
            let blocks = SharedOutput(activations.as_mut_ptr());
            pool.run(&|part, parts| {
                let tokens = threads::split(n_tokens, part, parts);
                // SAFETY: each part quantizes its own tokens' blocks.
                let mine = unsafe { blocks.part(tokens.start * n_blocks, tokens.len() * n_blocks) };
                k_quants::quantize(&x[tokens.start * n_in..tokens.end * n_in], mine);
            });
        } else {
            k_quants::quantize(x, activations);
        }
        let activations = &activations[..];
        pool.run_parts(pool.n_threads() * PARTS_PER_THREAD, &|part, parts| {
            let rows = threads::split(n_out, part, parts);
            let mut values = [0.0f32; integer_dot::TILE];
            for chunk in (rows.start..rows.end).step_by(ROWS_PER_CHUNK) {
                let chunk_end = (chunk + ROWS_PER_CHUNK).min(rows.end);
                for first in (0..n_tokens).step_by(integer_dot::TILE) {
                    let count = integer_dot::TILE.min(n_tokens - first);
                    let tile: [&[Q8KBlock]; integer_dot::TILE] = std::array::from_fn(|t| {
                        let t = (first + t).min(n_tokens - 1);
                        &activations[t * n_blocks..(t + 1) * n_blocks]
                    });
                    for o in chunk..chunk_end {
                        let row = &bytes[o * row_bytes..(o + 1) * row_bytes];
                        k_quants::dot_tile(kernel, ty, row, &tile[..count], &mut values);
                        let b = bias.map_or(0.0, |b| b[o]);
                        for (t, value) in values[..count].iter().enumerate() {
                            // SAFETY: row o belongs to this part only; the index is within out.
                            unsafe { output.write((first + t) * n_out + o, value + b) };
                        }
                    }
                }
            }
        });
    });
}

/// y = W x (+ bias) for K-quant weights (Q4_K, Q6_K) in the GPU's integer form
/// (gpu/src/matmul/gemv_k.rs): x quantized to Q8_1 blocks of 32 as above, then per sub-block
///   Q4_K:  d sc xd sum(q xq) - dmin m xs          (sc, m: the sub-block's 6-bit scale and min)
///   Q6_K:  d sc xd sum((q - 32) xq) per 16 values  (sc: i8 scale)
/// summed in f64. The reference the GPU kernels are checked against; llama.cpp's CPU back end
/// quantizes x differently for these types (per 256), so this is not the CPU engine's path.
pub fn matvec_k_q8_1(
    x: &[f32],
    ty: GgmlType,
    bytes: &[u8],
    bias: Option<&[f32]>,
    n_in: usize,
    n_out: usize,
) -> Vec<f32> {
    assert!(matches!(ty, GgmlType::Q4K | GgmlType::Q6K), "{ty} is not a K-quant");
    assert_eq!(n_in % 256, 0);
    let block_bytes = ty.block_bytes();
    let row_bytes = n_in / 256 * block_bytes;
    assert_eq!(bytes.len(), row_bytes * n_out);
    let act = quantize_q8(x);
    (0..n_out)
        .map(|o| {
            let mut total = 0.0f64;
            for (sb, b) in bytes[o * row_bytes..(o + 1) * row_bytes].chunks_exact(block_bytes).enumerate() {
                if ty == GgmlType::Q4K {
                    let (d, dmin, s, qs) = (f16_at(b, 0) as f64, f16_at(b, 2) as f64, &b[4..16], &b[16..144]);
                    for j in 0..8 {
                        let (sc, m) = crate::gguf::k_scale_min(s, j);
                        let a = &act[8 * sb + j];
                        let dot: i32 = (0..32)
                            .map(|k| {
                                let byte = qs[32 * (j / 2) + k];
                                let q = if j % 2 == 1 { byte >> 4 } else { byte & 0xF };
                                q as i32 * a.q[k] as i32
                            })
                            .sum();
                        total += d * sc as f64 * a.d as f64 * dot as f64 - dmin * m as f64 * a.s as f64;
                    }
                } else {
                    let (ql, qh, sc, d) = (&b[..128], &b[128..192], &b[192..208], f16_at(b, 208) as f64);
                    for t in 0..16 {
                        let a = &act[8 * sb + t / 2];
                        let dot: i32 = (16 * t..16 * t + 16)
                            .map(|e| {
                                let (n, k, l) = (e / 128, (e % 128) / 32, e % 32);
                                let low = ql[64 * n + 32 * (k & 1) + l];
                                let low = if k >= 2 { low >> 4 } else { low & 0xF } as i32;
                                let high = ((qh[32 * n + l] >> (2 * k)) & 3) as i32;
                                ((low | (high << 4)) - 32) * a.q[e % 32] as i32
                            })
                            .sum();
                        total += d * (sc[t] as i8) as f64 * a.d as f64 * dot as f64;
                    }
                }
            }
            (total + bias.map_or(0.0, |b| b[o] as f64)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    /// A xorshift64 stream of test bytes from `seed`.
    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// A Q4_1 block with scale d, min m and the given nibbles.
    fn q4_1_block(d: f32, m: f32, nibbles: &[u8; 32]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&f16::from_f32(d).to_le_bytes());
        b.extend_from_slice(&f16::from_f32(m).to_le_bytes());
        for j in 0..16 {
            b.push(nibbles[j] | (nibbles[j + 16] << 4));
        }
        b
    }

    #[test]
    fn q8_0_product_is_exact_on_representable_inputs() {
        // Weights 0.5 * (i - 16); activations multiples of 0.25 with max 127 * 0.25, so the
        // activation scale is exactly 0.25 and nothing rounds.
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let weight = Matrix::Blocks { ty: GgmlType::Q8_0, bytes: block };
        let mut x: Vec<f32> = (0..32).map(|i| (i % 5) as f32 * 0.25).collect();
        x[0] = 127.0 * 0.25;
        let expected: f32 = (0..32).map(|i| 0.5 * (i as f32 - 16.0) * x[i]).sum();
        let mut out = [0.0f32];
        matmul(&x, &weight, None, &mut out, 32, 1);
        assert_eq!(out[0], expected);
    }

    /// Q8_0, Q4_0 and Q4_1 matrices repacked at load against the same bytes as stored: the
    /// grouped rows' products equal the scalar reference's bit for bit at every token count (one
    /// to a prompt's, tiles of 1-4), the rows after the last group (row tiles) agree to f32
    /// rounding; the same rows, embedding rows and sub-matrices.
    #[test]
    fn repacked_matrices_agree_with_the_stored_rows() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1] {
            let (n_in, n_out) = (96, 8 * 5 + 3);
            let row_bytes = n_in / 32 * ty.block_bytes();
            let mut bytes: Vec<u8> = (0..n_out * row_bytes).map(|_| next() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                let scale = 0.001 + (block[5] as f32) / 256.0;
                block[..2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
                if ty == GgmlType::Q4_1 {
                    block[2..4].copy_from_slice(&f16::from_f32(-0.5 * scale).to_le_bytes());
                }
            }
            let stored = Matrix::Blocks { ty, bytes: bytes.clone() };
            let repacked = Matrix::from_blocks(ty, &bytes, n_in);
            let grouped = matches!(repacked, Matrix::Groups { .. });
            if integer_dot::has_groups(integer_dot::kernel(), ty) {
                assert!(grouped, "this machine repacks {ty}");
            }
            assert_eq!(repacked.size(), stored.size());
            let bias: Vec<f32> = (0..n_out).map(|o| o as f32 * 0.01).collect();
            for n_tokens in [1, 2, 3, 4, 5, 8, 13] {
                let x: Vec<f32> =
                    (0..n_tokens * n_in).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                let mut got = vec![0.0f32; n_tokens * n_out];
                matmul(&x, &repacked, Some(&bias), &mut got, n_in, n_out);
                for t in 0..n_tokens {
                    let activations = quantize_q8(&x[t * n_in..(t + 1) * n_in]);
                    for o in 0..n_out {
                        let mut value = [0.0f32; 1];
                        let row = &bytes[o * row_bytes..(o + 1) * row_bytes];
                        integer_dot::dot_tile_scalar(ty, row, &[&activations], &mut value);
                        let (want, got) = (value[0] + bias[o], got[t * n_out + o]);
                        if grouped && o < n_out / 8 * 8 {
                            // The grouped product is the scalar reference's, bit for bit.
                            assert_eq!(
                                got.to_bits(),
                                want.to_bits(),
                                "{ty} {n_tokens} tokens: token {t} row {o}"
                            );
                        } else {
                            // Row tiles sum their blocks in eight lanes.
                            assert!(
                                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                                "{ty} token {t} row {o}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
            for i in [0, 7, 8, 39, 40, 42] {
                assert_eq!(repacked.row_f32(n_in, i), stored.row_f32(n_in, i), "{ty} row {i}");
            }
            for (start, end) in [(8, 24), (16, 43), (3, 20), (0, 43)] {
                let (a, b) = (repacked.rows(n_in, start, end), stored.rows(n_in, start, end));
                for i in 0..end - start {
                    assert_eq!(a.row_f32(n_in, i), b.row_f32(n_in, i), "{ty} rows {start}..{end}, row {i}");
                }
            }
        }
    }

    /// Q4_K, Q5_K and Q6_K matrices: every token count (one, tiles of 1-4, a prompt's whose
    /// quantization is split over the threads) gives the scalar reference's row products bit
    /// for bit (every kernel takes its f32 steps in its order), bias added.
    #[test]
    fn k_quant_products_equal_the_scalar_reference() {
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            let (n_in, n_out) = (512, 37);
            let row_bytes = n_in / 256 * ty.block_bytes();
            let mut bytes: Vec<u8> = (0..n_out * row_bytes).map(|_| next() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                let scale = f16::from_f32(0.001 + (block[5] as f32) / 25600.0).to_le_bytes();
                let at = if ty == GgmlType::Q6K { 208 } else { 0 };
                block[at..at + 2].copy_from_slice(&scale);
                if ty != GgmlType::Q6K {
                    block[2..4].copy_from_slice(&f16::from_f32(0.003).to_le_bytes());
                }
            }
            let weight = Matrix::from_blocks(ty, &bytes, n_in);
            let bias: Vec<f32> = (0..n_out).map(|o| o as f32 * 0.01).collect();
            for n_tokens in [1, 2, 3, 4, 5, 8, 13] {
                let x: Vec<f32> =
                    (0..n_tokens * n_in).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
                let mut got = vec![0.0f32; n_tokens * n_out];
                matmul(&x, &weight, Some(&bias), &mut got, n_in, n_out);
                for t in 0..n_tokens {
                    let mut activations = vec![Q8KBlock::ZERO; n_in / 256];
                    k_quants::quantize(&x[t * n_in..(t + 1) * n_in], &mut activations);
                    for o in 0..n_out {
                        let mut value = [0.0f32];
                        let row = &bytes[o * row_bytes..(o + 1) * row_bytes];
                        k_quants::dot_tile_scalar(ty, row, &[&activations], &mut value);
                        let want = value[0] + bias[o];
                        let got = got[t * n_out + o];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{ty} {n_tokens} tokens: token {t} row {o}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q4_1_product_is_within_the_activation_rounding() {
        let nibbles: [u8; 32] = std::array::from_fn(|i| (i * 7 % 16) as u8);
        let block = q4_1_block(0.5, -2.0, &nibbles);
        let exact_w = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        let weight = Matrix::Blocks { ty: GgmlType::Q4_1, bytes: block };
        let x: Vec<f32> = (0..32).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.173).collect();
        let mut out = [0.0f32];
        matmul(&x, &weight, None, &mut out, 32, 1);
        let expected: f32 = exact_w.iter().zip(&x).map(|(w, x)| w * x).sum();
        // Each activation moves by at most half a step (max|x| / 254); s rounds to f16.
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = exact_w.iter().map(|w| w.abs()).sum::<f32>() * amax / 254.0 + 2.0 * 2e-3 * 3.0;
        assert!((out[0] - expected).abs() <= bound, "{} vs {expected} (bound {bound})", out[0]);
        assert_ne!(
            out[0], expected,
            "the integer path rounds activations; equality would mean it did not run"
        );
    }

    #[test]
    fn activation_quantization_rounds_half_to_even() {
        // max 127 makes the scale exactly 1: 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        x[3] = -2.5;
        let blocks = quantize_q8(&x);
        assert_eq!(&blocks[0].q[..4], &[127, 2, 4, -2]);
        assert_eq!(blocks[0].d, 1.0);
        assert_eq!(blocks[0].s, 131.0);
    }

    /// The K-quant integer form against dequantized weights times exact activations: equal up
    /// to the activation rounding, and not equal (the rounding happened).
    #[test]
    fn k_quant_integer_form_is_within_the_activation_rounding() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let (n_in, n_out) = (512, 3);
            let mut bytes: Vec<u8> =
                (0..n_in / 256 * ty.block_bytes() * n_out).map(|_| next() as u8).collect();
            for block in bytes.chunks_exact_mut(ty.block_bytes()) {
                let at = if ty == GgmlType::Q4K { 0 } else { 208 };
                block[at..at + 2].copy_from_slice(&f16::from_f32(0.01).to_le_bytes());
                if ty == GgmlType::Q4K {
                    block[2..4].copy_from_slice(&f16::from_f32(0.02).to_le_bytes());
                }
            }
            let x: Vec<f32> = (0..n_in).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.1).collect();
            let w = dequantize(ty, &bytes, n_in * n_out).unwrap();
            let got = matvec_k_q8_1(&x, ty, &bytes, None, n_in, n_out);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for o in 0..n_out {
                let row = &w[o * n_in..(o + 1) * n_in];
                let exact: f64 = row.iter().zip(&x).map(|(&w, &x)| w as f64 * x as f64).sum();
                let bound =
                    row.iter().map(|w| w.abs() as f64).sum::<f64>() * amax as f64 / 254.0 * 1.01 + 1e-3;
                assert!(
                    (got[o] as f64 - exact).abs() <= bound,
                    "{ty} row {o}: {} vs {exact} (bound {bound})",
                    got[o]
                );
                assert_ne!(got[o] as f64, exact, "{ty}: no rounding means the integer form did not run");
            }
        }
    }
}
