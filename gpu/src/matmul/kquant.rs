//! The K-quant super-block formats (256 values) as the host repacks them (host/src/matmul/mod.rs,
//! `repack_blocks`): the same bits as the GGUF blocks, regrouped so that 16 bytes of quants cover
//! one block of 32 activations, the layout Q4_0 has. Decoding helpers shared by the GEMV and
//! embedding kernels.
//!
//! Q4_K: `heads` [rows * n_in / 256] x 20 bytes, each super-block's d and dmin (f16) and then the
//! (scale, min) byte pair of each of its 8 sub-blocks of 32 (GGUF packs them in 12 bytes of 6-bit
//! fields; the host unpacks them); `quants` [rows,
//! n_in / 2] bytes, 16 per sub-block: byte i holds value i (low nibble) and value i + 16 (high).
//! Value = d * scale_j * q - dmin * min_j.
//! Q6_K: `low` [rows, n_in / 2] bytes, the low 4 bits in the same nibble layout as Q4_K; `high`
//! [rows, n_in / 4] bytes, 8 per block of 32: a word for values 0..16 and a word for 16..32, in
//! which byte t holds at bits 2w, 2w + 1 the high 2 bits of value 4w + t of its half (so that
//! shifting a word by 4 - 2w and masking 0x30303030 puts them under the low nibbles of word w);
//! `sub` 16 i8 scales per super-block (one per 16 values); `scales` d (f16) per super-block.
//! Value = d * scale[e / 16] * (q - 32).

/// The 4-bit field of value t (< 32) of a block whose 16 nibble bytes start at `q`.
#[inline(always)]
unsafe fn nibble(q: *const u8, t: usize) -> u32 {
    let byte = unsafe { *q.add(t % 16) } as u32;
    if t < 16 { byte & 0xF } else { byte >> 4 }
}

/// Element e of row `row` of a Q4_K matrix with rows of `n_in` values.
#[inline(always)]
pub unsafe fn q4_k_value(quants: *const u8, heads: *const u8, row: usize, n_in: usize, e: usize) -> f32 {
    let (block, t) = (row * n_in / 32 + e / 32, e % 32);
    let q = unsafe { nibble(quants.add(16 * block), t) } as f32;
    let head = unsafe { heads.add(20 * (block / 8)) };
    let (scale, min) = unsafe { (*head.add(4 + 2 * (block % 8)), *head.add(5 + 2 * (block % 8))) };
    let half = |at: usize| crate::device::f16_to_f32(unsafe { *(head.add(at) as *const u16) });
    half(0) * scale as f32 * q - half(2) * min as f32
}

/// Element e of row `row` of a Q6_K matrix with rows of `n_in` values.
#[inline(always)]
pub unsafe fn q6_k_value(
    low: *const u8,
    high: *const u8,
    scales: *const u16,
    sub: *const u8,
    row: usize,
    n_in: usize,
    e: usize,
) -> f32 {
    let (block, t) = (row * n_in / 32 + e / 32, e % 32);
    let (half, u) = (t / 16, t % 16);
    let bits = unsafe { *high.add(8 * block + 4 * half + u % 4) } >> (2 * (u / 4));
    let q = (unsafe { nibble(low.add(16 * block), t) } | (bits as u32 & 3) << 4) as i32 - 32;
    let scale = unsafe { *(sub.add(16 * (block / 8) + 2 * (block % 8) + half) as *const i8) } as f32;
    crate::device::f16_to_f32(unsafe { *scales.add(block / 8) }) * scale * q as f32
}
