//! Integer dot products of GGUF weight blocks with 8-bit activation blocks, the inner loop of the
//! `llama-cpp` numerics (see `cpu/quantized.rs` for the math). One weight row meets a tile of up
//! to [`TILE`] tokens: each weight block is decoded once and dotted against every token of the
//! tile, so a prompt reads each block once per tile instead of once per token.
//!
//! Kernels, chosen once at run time ([`kernel`]; ENGINE_CPU_KERNEL=scalar|avx2|avx512vnni
//! overrides): the scalar reference below, and on x86-64 AVX2 (`_mm256_maddubs_epi16` +
//! `_mm256_madd_epi16`: u8 x i8 pairs into i32 lanes) and AVX-512 VNNI (`vpdpbusd`, the same
//! products in one instruction) in `x86.rs`. Signed weights (Q4_0, Q5_0 after their offset, Q8_0,
//! MXFP4) use |w| x sign(x, w), which is the same integer. Per block the integer dot is exact in
//! every kernel (the proptests check it bit for bit); the f32 sum over blocks runs in eight lanes
//! in the SIMD kernels and in one chain in the scalar one, so rows agree to f32 rounding.
//! Bytes per block pair: the weight block (17-34 B) once per tile, 40 B of activations per token.

pub mod k_quants;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::gguf::GgmlType;
use half::f16;
use std::sync::OnceLock;

/// Tokens per tile, and weight rows per tile: a decode step (one token) takes four rows at a
/// time, a prompt two rows x four tokens, so that four to eight independent accumulators hide
/// the FMA latency and each decoded weight block meets every token of the tile.
pub const TILE: usize = 4;
pub const ROWS: usize = 4;

/// An activation block: scale, sum term (d * sum(q) rounded to f16, for Q4_1/Q5_1) and 32
/// quantized values.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub s: f32,
    pub q: [i8; 32],
}

impl Q8Block {
    pub const ZERO: Q8Block = Q8Block { d: 0.0, s: 0.0, q: [0; 32] };
}

/// Which implementation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel this machine can run, the scalar one first.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2() {
                kernels.push(Kernel::Avx2);
            }
            if x86::has_avx512_vnni() {
                kernels.push(Kernel::Avx512Vnni);
            }
        }
        kernels
    }
}

/// The fastest kernel this machine runs, unless ENGINE_CPU_KERNEL names another it can run.
pub fn kernel() -> Kernel {
    static CHOSEN: OnceLock<Kernel> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let available = Kernel::available();
        let wanted = match std::env::var("ENGINE_CPU_KERNEL").as_deref() {
            Ok("scalar") => Some(Kernel::Scalar),
            Ok("avx2") => Some(Kernel::Avx2),
            Ok("avx512vnni") => Some(Kernel::Avx512Vnni),
            _ => None,
        };
        wanted.filter(|k| available.contains(k)).unwrap_or(*available.last().expect("scalar is always there"))
    })
}

/// Whether `ty` has an integer kernel.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Mxfp4
    )
}

/// Quantizes `x` (a multiple of 32 values) into `out`: d = max|x| / 127 stored as f16,
/// q = round-half-even(x * 127 / max|x|), as llama.cpp's x86 path does.
pub fn quantize(kernel: Kernel, x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), out.len() * 32);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 | Kernel::Avx512Vnni => x86::quantize(x, out),
        _ => quantize_scalar(x, out),
    }
}

/// The reference activation quantization.
pub fn quantize_scalar(x: &[f32], out: &mut [Q8Block]) {
    for (block, values) in out.iter_mut().zip(x.chunks_exact(32)) {
        let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.q.iter_mut().zip(values) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        finish_block(block, amax, sum);
    }
}

/// The block's scales from its max|x| and sum of q (shared by every kernel, so they agree).
fn finish_block(block: &mut Q8Block, amax: f32, sum: i32) {
    let d = amax / 127.0;
    block.d = f16::from_f32(d).to_f32();
    block.s = f16::from_f32(d * sum as f32).to_f32();
}

/// out[r][t] = sum over blocks of weight row `rows[r]` (type `ty`) . activations[t], for up to
/// [`ROWS`] rows of equal length and [`TILE`] tokens; each activation row holds the weight rows'
/// blocks' worth of [`Q8Block`]s.
pub fn dot_tile(
    kernel: Kernel,
    ty: GgmlType,
    rows: &[&[u8]],
    activations: &[&[Q8Block]],
    out: &mut [[f32; TILE]],
) {
    assert!(activations.len() <= TILE && !activations.is_empty());
    assert!(rows.len() <= ROWS && !rows.is_empty() && out.len() >= rows.len());
    let row_bytes = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == row_bytes), "weight rows of different lengths");
    let n_blocks = row_bytes / ty.block_bytes();
    assert!(activations.iter().all(|a| a.len() >= n_blocks), "activation rows shorter than the weight row");
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::avx2::dot_tile(ty, rows, activations, out),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::avx512_vnni::dot_tile(ty, rows, activations, out),
        _ => {
            for (row, out) in rows.iter().zip(out) {
                dot_tile_scalar(ty, row, activations, out);
            }
        }
    }
}

/// The integer dot of every block of `row` with `activations` (one row), as the kernel computes
/// it: what the proptests compare bit for bit.
pub fn block_dots(kernel: Kernel, ty: GgmlType, row: &[u8], activations: &[Q8Block]) -> Vec<i32> {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => x86::avx2::block_dots(ty, row, activations),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => x86::avx512_vnni::block_dots(ty, row, activations),
        _ => row
            .chunks_exact(ty.block_bytes())
            .zip(activations)
            .map(|(block, a)| {
                let mut q = [0i32; 32];
                weight_block(ty, block, &mut q);
                q.iter().zip(&a.q).map(|(&w, &x)| w * x as i32).sum()
            })
            .collect(),
    }
}

/// The scalar reference: each block decoded to small integers, an i32 dot per token, then
/// d_w d_x dot + m_w s_x summed in order.
pub fn dot_tile_scalar(ty: GgmlType, row: &[u8], activations: &[&[Q8Block]], out: &mut [f32]) {
    let mut sums = [0.0f32; TILE];
    let mut q = [0i32; 32];
    for (k, block) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let (d_w, m_w) = weight_block(ty, block, &mut q);
        for (sum, act) in sums.iter_mut().zip(activations) {
            let a = &act[k];
            let dot: i32 = q.iter().zip(&a.q).map(|(&w, &x)| w * x as i32).sum();
            *sum += d_w * a.d * dot as f32 + m_w * a.s;
        }
    }
    out[..activations.len()].copy_from_slice(&sums[..activations.len()]);
}

/// Rows a repacked group holds: one per i32 lane of a 256-bit register.
pub const GROUP_ROWS: usize = 8;

/// Whether `kernel` has a fast repacked product of `ty` ([`dot_group`]; the others run its
/// scalar reference, so matrices are repacked only for the kernels that have it).
pub fn has_groups(kernel: Kernel, ty: GgmlType) -> bool {
    match kernel {
        Kernel::Avx512Vnni => matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1),
        Kernel::Avx2 => matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1),
        Kernel::Scalar => false,
    }
}

/// Bytes of one block of a repacked group of `ty`: what its eight blocks take as stored, so a
/// matrix repacked at load is no larger.
pub fn group_block_bytes(ty: GgmlType) -> usize {
    GROUP_ROWS * ty.block_bytes()
}

/// Where a block's scales (d, then m for Q4_1) and weights start as stored, and the weights'
/// bytes.
fn block_parts(ty: GgmlType) -> (usize, usize, usize) {
    match ty {
        GgmlType::Q8_0 => (1, 2, 32),
        GgmlType::Q4_0 => (1, 2, 16),
        GgmlType::Q4_1 => (2, 4, 16),
        _ => unreachable!("{ty} has no row groups"),
    }
}

/// Repacks [`GROUP_ROWS`] rows of `ty` (Q8_0, Q4_0 or Q4_1) so that one register's i32 lanes
/// are the eight rows. Per block: the rows' f16 d (and for Q4_1 their f16 m), then the weights
/// in steps of four bytes, each step the eight rows' four bytes: Q8_0's values made unsigned
/// (w + 128, a flip of the top bit) in eight steps of four values; Q4's 16 bytes of nibbles in
/// four steps, step j holding values 4j..4j + 4 in its low nibbles and 16 + 4j.. in its high
/// ones. Appends to `out`.
pub fn repack(ty: GgmlType, rows: &[&[u8]], out: &mut Vec<u8>) {
    assert_eq!(rows.len(), GROUP_ROWS);
    let block_bytes = ty.block_bytes();
    let (n_scales, weights_at, weight_bytes) = block_parts(ty);
    let n_blocks = rows[0].len() / block_bytes;
    assert!(rows.iter().all(|r| r.len() == n_blocks * block_bytes), "{ty} rows of different lengths");
    let flip = if ty == GgmlType::Q8_0 { 0x80 } else { 0 };
    let start = out.len();
    out.resize(start + n_blocks * group_block_bytes(ty), 0);
    for (k, packed) in out[start..].chunks_exact_mut(group_block_bytes(ty)).enumerate() {
        for (r, row) in rows.iter().enumerate() {
            let block = &row[k * block_bytes..(k + 1) * block_bytes];
            for scale in 0..n_scales {
                packed[16 * scale + 2 * r..16 * scale + 2 * r + 2]
                    .copy_from_slice(&block[2 * scale..2 * scale + 2]);
            }
            for step in 0..weight_bytes / 4 {
                let at = 16 * n_scales + 32 * step + 4 * r;
                let stored = &block[weights_at + 4 * step..weights_at + 4 * step + 4];
                for (w, &value) in packed[at..at + 4].iter_mut().zip(stored) {
                    *w = value ^ flip;
                }
            }
        }
    }
}

/// Row `lane` of a repacked group of `ty` as stored (the inverse of [`repack`]), appended to
/// `out`.
pub fn group_row(ty: GgmlType, group: &[u8], lane: usize, out: &mut Vec<u8>) {
    let (n_scales, _, weight_bytes) = block_parts(ty);
    assert!(lane < GROUP_ROWS && group.len().is_multiple_of(group_block_bytes(ty)));
    let flip = if ty == GgmlType::Q8_0 { 0x80 } else { 0 };
    for block in group.chunks_exact(group_block_bytes(ty)) {
        for scale in 0..n_scales {
            out.extend_from_slice(&block[16 * scale + 2 * lane..16 * scale + 2 * lane + 2]);
        }
        for step in 0..weight_bytes / 4 {
            let at = 16 * n_scales + 32 * step + 4 * lane;
            out.extend(block[at..at + 4].iter().map(|&w| w ^ flip));
        }
    }
}

/// Each activation block's correction for [`dot_group`] with weights of `ty`: what the
/// repacked weights' offset adds to the integer dot, taken back: Q8_0's w + 128 adds 128
/// sum(q), Q4_0's nibbles (w + 8) add 8 sum(q); Q4_1's nibbles are its values (0).
pub fn corrections(ty: GgmlType, activations: &[Q8Block], out: &mut [i32]) {
    assert_eq!(out.len(), activations.len());
    let offset = match ty {
        GgmlType::Q8_0 => 128,
        GgmlType::Q4_0 => 8,
        _ => 0,
    };
    for (c, block) in out.iter_mut().zip(activations) {
        *c = -offset * block.q.iter().map(|&q| q as i32).sum::<i32>();
    }
}

/// out[t][r] = sum over blocks of row r of a repacked group of `ty` ([`repack`]) .
/// activations[t], for up to [`TILE`] tokens, given each token's [`corrections`] too. Per block
/// the lanes start at the correction and `vpdpbusd` adds the unsigned weights times the signed
/// activations, which leaves sum(w x) exactly; then d_w d_x dot (+ m_w s_x) is added to the row's
/// sum in block order, the scalar reference's order and roundings (so the results are the
/// scalar tile's, bit for bit; the tests check it). Kernels without the fast form
/// ([`has_groups`]) unpack each row and run the scalar tile.
pub fn dot_group(
    kernel: Kernel,
    ty: GgmlType,
    group: &[u8],
    corrections: &[&[i32]],
    activations: &[&[Q8Block]],
    out: &mut [[f32; GROUP_ROWS]; TILE],
) {
    assert!(!activations.is_empty() && activations.len() <= TILE && corrections.len() == activations.len());
    let n_blocks = group.len() / group_block_bytes(ty);
    assert_eq!(group.len(), n_blocks * group_block_bytes(ty));
    assert!(activations.iter().all(|a| a.len() >= n_blocks), "activation rows shorter than the group");
    assert!(corrections.iter().all(|c| c.len() >= n_blocks), "correction rows shorter than the group");
    #[cfg(target_arch = "x86_64")]
    if has_groups(kernel, ty) {
        let dot =
            if kernel == Kernel::Avx2 { x86::groups::avx2::dot_group } else { x86::groups::vnni::dot_group };
        dot(ty, group, n_blocks, corrections, activations, out);
        return;
    }
    let mut row = Vec::with_capacity(n_blocks * ty.block_bytes());
    let mut values = [[0.0f32; TILE]; GROUP_ROWS];
    for (lane, lane_values) in values.iter_mut().enumerate() {
        row.clear();
        group_row(ty, group, lane, &mut row);
        dot_tile_scalar(ty, &row, activations, lane_values);
    }
    for (t, token_out) in out[..activations.len()].iter_mut().enumerate() {
        for (value, lane_values) in token_out.iter_mut().zip(&values) {
            *value = lane_values[t];
        }
    }
}

pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The 32 weight values of a block as small integers (before scaling) and its (d, m) scales.
pub fn weight_block(ty: GgmlType, b: &[u8], q: &mut [i32; 32]) -> (f32, f32) {
    match ty {
        GgmlType::Q8_0 => {
            for (qi, &v) in q.iter_mut().zip(&b[2..34]) {
                *qi = v as i8 as i32;
            }
            (f16_at(b, 0), 0.0)
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let has_min = ty == GgmlType::Q4_1;
            let qs = if has_min { &b[4..20] } else { &b[2..18] };
            let offset = if has_min { 0 } else { 8 };
            for j in 0..16 {
                q[j] = (qs[j] & 0x0F) as i32 - offset;
                q[j + 16] = (qs[j] >> 4) as i32 - offset;
            }
            (f16_at(b, 0), if has_min { f16_at(b, 2) } else { 0.0 })
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = ty == GgmlType::Q5_1;
            let rest = if has_min { &b[4..] } else { &b[2..] };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let offset = if has_min { 0 } else { 16 };
            for (i, qi) in q.iter_mut().enumerate() {
                let low = if i < 16 { rest[4 + i] & 0x0F } else { rest[4 + i - 16] >> 4 };
                *qi = (low as u32 | (((qh >> i) & 1) << 4)) as i32 - offset;
            }
            (f16_at(b, 0), if has_min { f16_at(b, 2) } else { 0.0 })
        }
        GgmlType::Mxfp4 => {
            // E2M1 doubled as integers, scale 2^(e - 128).
            for j in 0..16 {
                q[j] = MXFP4_VALUES[(b[1 + j] & 0x0F) as usize] as i32;
                q[j + 16] = MXFP4_VALUES[(b[1 + j] >> 4) as usize] as i32;
            }
            (crate::gguf::e8m0_half(b[0]), 0.0)
        }
        _ => unreachable!("weight_block is only called for the types `supported` lists"),
    }
}

/// MXFP4's E2M1 code points, doubled so that they are integers.
pub(crate) const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

#[cfg(test)]
mod tests;
