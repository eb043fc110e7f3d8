//! The x86-64 integer dot kernels: one body, instantiated twice by `kernels!`, once with AVX2's
//! u8 x i8 -> i16 pairs -> i32 (`vpmaddubsw` + `vpmaddwd`) and once with AVX-512 VNNI's
//! `vpdpbusd` (the same products straight into i32, on 256-bit registers through AVX-512VL).
//! A weight block is decoded into one 256-bit register of 32 bytes in value order (nibbles
//! split with a shift and a mask; Q5's fifth bits spread from their u32 with a byte shuffle and
//! a compare; MXFP4's codes through a 16-entry byte table), then dotted against each token's 32
//! activation bytes; the i32 lanes become f32 (exact: |dot| < 2^24) and meet d_w d_x in an FMA.
//! The kernels are separate functions with their features enabled (`#[target_feature]`) and
//! are only called after run-time detection.

use super::Q8Block;

pub fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

pub fn has_avx512_vnni() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// The SIMD activation quantization, bit-identical to the scalar one: the same f32 product, and
/// `vcvtps2dq` rounds half to even under the default rounding mode, as `round_ties_even` does.
pub fn quantize(x: &[f32], out: &mut [Q8Block]) {
    assert!(has_avx2());
    // SAFETY: AVX2, FMA and F16C are present (checked above).
    unsafe { quantize_avx2(x, out) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], out: &mut [Q8Block]) {
    use std::arch::x86_64::*;
    let sign_mask = _mm256_set1_ps(-0.0);
    for (block, values) in out.iter_mut().zip(x.chunks_exact(32)) {
        let p = values.as_ptr();
        // SAFETY: `values` holds 32 f32.
        let v = unsafe { [0, 8, 16, 24].map(|i| _mm256_loadu_ps(p.add(i))) };
        let mut amax = _mm256_andnot_ps(sign_mask, v[0]);
        for item in &v[1..] {
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, *item));
        }
        let high = _mm256_extractf128_ps(amax, 1);
        let mut m = _mm_max_ps(high, _mm256_castps256_ps128(amax));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let amax = _mm_cvtss_f32(m);
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q = v.map(|item| _mm256_cvtps_epi32(_mm256_mul_ps(item, id)));
        // Sum of q: 32 values of at most 127 in magnitude.
        let total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let half = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
        let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
        let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b10_11_00_01));
        let sum = _mm_cvtsi128_si32(half);
        // Pack to bytes: packs works within 128-bit halves, so restore the order afterwards.
        let low = _mm256_packs_epi32(q[0], q[1]);
        let high = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_packs_epi16(low, high);
        let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: q is 32 bytes.
        unsafe { _mm256_storeu_si256(block.q.as_mut_ptr() as *mut __m256i, bytes) };
        // `finish_block`'s two f16 roundings in one F16C conversion (to nearest even, as there).
        let d = amax / 127.0;
        let scales =
            _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(d, d * sum as f32, 0.0, 0.0)));
        block.d = _mm_cvtss_f32(scales);
        block.s = _mm_cvtss_f32(_mm_movehdup_ps(scales));
    }
}

macro_rules! kernels {
    ($features:literal, |$w:ident, $x:ident| $unsigned_dot:expr) => {
        use super::super::{MXFP4_VALUES, Q8Block, TILE};
        use crate::gguf::GgmlType;
        use std::arch::x86_64::*;

        const Q4_0: u8 = 0;
        const Q4_1: u8 = 1;
        const Q5_0: u8 = 2;
        const Q5_1: u8 = 3;
        const Q8_0: u8 = 4;
        const MXFP4: u8 = 5;

        /// i32 lanes of sum(w x) for u8 w and i8 x.
        #[inline]
        #[target_feature(enable = $features)]
        fn unsigned_dot($w: __m256i, $x: __m256i) -> __m256i {
            $unsigned_dot
        }

        /// The f16 at `p` as f32.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_at(p: *const u8) -> f32 {
            // SAFETY: the caller gives two readable bytes.
            let bits = unsafe { (p as *const u16).read_unaligned() };
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }

        /// 16 bytes of nibbles at `p` as 32 bytes: low nibbles first, then high.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            // SAFETY: the caller gives 16 readable bytes.
            let packed = unsafe { _mm_loadu_si128(p as *const __m128i) };
            let mask = _mm_set1_epi8(0x0F);
            let low = _mm_and_si128(packed, mask);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
            _mm256_set_m128i(high, low)
        }

        /// Bit i of the u32 at `p` as 0x10 in byte i (Q5's fifth bit), else 0.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn fifth_bits(p: *const u8) -> __m256i {
            // SAFETY: the caller gives four readable bytes.
            let bits = unsafe { (p as *const u32).read_unaligned() };
            let spread = _mm256_shuffle_epi8(
                _mm256_set1_epi32(bits as i32),
                _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
            );
            // Byte i keeps bit i % 8 of its source byte; every other bit is forced to one.
            let others = _mm256_set1_epi64x(0x7FBF_DFEF_F7FB_FDFEu64 as i64);
            let set = _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1));
            _mm256_and_si256(set, _mm256_set1_epi8(0x10))
        }

        /// The block at `p` of type TY: its 32 values as bytes (signed for Q4_0, Q5_0, Q8_0 and
        /// MXFP4, unsigned for Q4_1 and Q5_1), d and m.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode<const TY: u8>(p: *const u8) -> (__m256i, f32, f32) {
            // SAFETY: the caller gives a whole block of type TY.
            unsafe {
                match TY {
                    Q4_0 => (_mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)), f16_at(p), 0.0),
                    Q4_1 => (nibbles(p.add(4)), f16_at(p), f16_at(p.add(2))),
                    Q5_0 => {
                        let values = _mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2)));
                        (_mm256_sub_epi8(values, _mm256_set1_epi8(16)), f16_at(p), 0.0)
                    }
                    Q5_1 => (
                        _mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4))),
                        f16_at(p),
                        f16_at(p.add(2)),
                    ),
                    Q8_0 => (_mm256_loadu_si256(p.add(2) as *const __m256i), f16_at(p), 0.0),
                    _ => {
                        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                            MXFP4_VALUES.as_ptr() as *const __m128i
                        ));
                        (_mm256_shuffle_epi8(table, nibbles(p.add(1))), crate::gguf::e8m0_half(*p), 0.0)
                    }
                }
            }
        }

        const fn signed(ty: u8) -> bool {
            matches!(ty, Q4_0 | Q5_0 | Q8_0 | MXFP4)
        }

        /// i32 lanes of the block dot: |w| x sign(x, w) for signed weights.
        #[inline]
        #[target_feature(enable = $features)]
        fn block_lanes<const TY: u8>(w: __m256i, x: __m256i) -> __m256i {
            if signed(TY) {
                unsigned_dot(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
            } else {
                unsigned_dot(w, x)
            }
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn sum_f32(v: __m256) -> f32 {
            let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let half = _mm_add_ps(half, _mm_movehl_ps(half, half));
            _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)))
        }

        #[inline]
        #[target_feature(enable = $features)]
        fn sum_i32(v: __m256i) -> i32 {
            let half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(half, _mm_shuffle_epi32(half, 0b10_11_00_01)))
        }

        /// R weight rows against T tokens: each weight block decoded once per tile, each
        /// activation block loaded once per tile, R x T independent accumulators.
        #[target_feature(enable = $features)]
        unsafe fn tile<const TY: u8, const R: usize, const T: usize>(
            rows: &[&[u8]],
            block_bytes: usize,
            activations: &[&[Q8Block]],
            out: &mut [[f32; TILE]],
        ) {
            let n_blocks = rows[0].len() / block_bytes;
            let mut row_pointers = [std::ptr::null::<u8>(); R];
            for r in 0..R {
                row_pointers[r] = rows[r].as_ptr();
            }
            let mut token_pointers = [std::ptr::null::<Q8Block>(); T];
            for t in 0..T {
                token_pointers[t] = activations[t].as_ptr();
            }
            let mut accumulators = [[_mm256_setzero_ps(); T]; R];
            let mut minimums = [[0.0f32; T]; R];
            // A decode step streams the matrix once, R rows at a time; the rows R further on
            // (the next tile's, adjacent in the matrix) are fetched while these are dotted.
            // A prefetch past the matrix's end (its last tile) does not fault.
            let ahead = R * rows[0].len();
            for k in 0..n_blocks {
                if T == 1 {
                    for pointer in &row_pointers {
                        _mm_prefetch::<_MM_HINT_T0>(
                            pointer.wrapping_add(ahead + k * block_bytes) as *const i8
                        );
                    }
                }
                let mut x = [_mm256_setzero_si256(); T];
                let (mut x_scale, mut x_sum) = ([0.0f32; T], [0.0f32; T]);
                for t in 0..T {
                    // SAFETY: each activation row holds n_blocks blocks (checked by the caller).
                    unsafe {
                        let a = &*token_pointers[t].add(k);
                        x[t] = _mm256_loadu_si256(a.q.as_ptr() as *const __m256i);
                        x_scale[t] = a.d;
                        x_sum[t] = a.s;
                    }
                }
                for r in 0..R {
                    // SAFETY: block k lies within each row (all rows have n_blocks blocks).
                    let (w, d, m) = unsafe { decode::<TY>(row_pointers[r].add(k * block_bytes)) };
                    let magnitude = if signed(TY) { _mm256_sign_epi8(w, w) } else { w };
                    for t in 0..T {
                        let signed_x = if signed(TY) { _mm256_sign_epi8(x[t], w) } else { x[t] };
                        let lanes = _mm256_cvtepi32_ps(unsigned_dot(magnitude, signed_x));
                        accumulators[r][t] =
                            _mm256_fmadd_ps(_mm256_set1_ps(d * x_scale[t]), lanes, accumulators[r][t]);
                        if !signed(TY) {
                            minimums[r][t] += m * x_sum[t];
                        }
                    }
                }
            }
            for r in 0..R {
                for t in 0..T {
                    out[r][t] = sum_f32(accumulators[r][t]) + minimums[r][t];
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn tile_of<const R: usize, const T: usize>(
            ty: GgmlType,
            rows: &[&[u8]],
            activations: &[&[Q8Block]],
            out: &mut [[f32; TILE]],
        ) {
            let bytes = ty.block_bytes();
            // SAFETY: the caller checked the sizes; the features are enabled here.
            unsafe {
                match ty {
                    GgmlType::Q4_0 => tile::<Q4_0, R, T>(rows, bytes, activations, out),
                    GgmlType::Q4_1 => tile::<Q4_1, R, T>(rows, bytes, activations, out),
                    GgmlType::Q5_0 => tile::<Q5_0, R, T>(rows, bytes, activations, out),
                    GgmlType::Q5_1 => tile::<Q5_1, R, T>(rows, bytes, activations, out),
                    GgmlType::Q8_0 => tile::<Q8_0, R, T>(rows, bytes, activations, out),
                    GgmlType::Mxfp4 => tile::<MXFP4, R, T>(rows, bytes, activations, out),
                    _ => unreachable!("{ty} has no integer kernel"),
                }
            }
        }

        /// See `integer_dot::dot_tile`; the caller checked the sizes. Shapes other than
        /// 4 rows x 1 or 4 tokens and 2 rows x 2-4 tokens go a row at a time.
        pub fn dot_tile(ty: GgmlType, rows: &[&[u8]], activations: &[&[Q8Block]], out: &mut [[f32; TILE]]) {
            assert!(supported());
            // SAFETY: the features are present (asserted) and the sizes were checked by the caller.
            unsafe {
                match (rows.len(), activations.len()) {
                    (4, 1) => return tile_of::<4, 1>(ty, rows, activations, out),
                    (2, 2) => return tile_of::<2, 2>(ty, rows, activations, out),
                    (2, 3) => return tile_of::<2, 3>(ty, rows, activations, out),
                    (2, 4) => return tile_of::<2, 4>(ty, rows, activations, out),
                    (4, 4) => return tile_of::<4, 4>(ty, rows, activations, out),
                    _ => {}
                }
                for (r, row) in rows.iter().enumerate() {
                    let one = std::slice::from_ref(row);
                    let out = &mut out[r..r + 1];
                    match activations.len() {
                        1 => tile_of::<1, 1>(ty, one, activations, out),
                        2 => tile_of::<1, 2>(ty, one, activations, out),
                        3 => tile_of::<1, 3>(ty, one, activations, out),
                        _ => tile_of::<1, 4>(ty, one, activations, out),
                    }
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn block_dots_of<const TY: u8>(
            row: &[u8],
            block_bytes: usize,
            activations: &[Q8Block],
        ) -> Vec<i32> {
            (0..row.len() / block_bytes)
                .map(|k| {
                    // SAFETY: block k lies within `row`.
                    let (w, _, _) = unsafe { decode::<TY>(row.as_ptr().add(k * block_bytes)) };
                    // SAFETY: q is 32 bytes.
                    let x = unsafe { _mm256_loadu_si256(activations[k].q.as_ptr() as *const __m256i) };
                    sum_i32(block_lanes::<TY>(w, x))
                })
                .collect()
        }

        /// See `integer_dot::block_dots`.
        pub fn block_dots(ty: GgmlType, row: &[u8], activations: &[Q8Block]) -> Vec<i32> {
            assert!(supported());
            assert!(activations.len() >= row.len() / ty.block_bytes());
            let bytes = ty.block_bytes();
            // SAFETY: the features are present (asserted).
            unsafe {
                match ty {
                    GgmlType::Q4_0 => block_dots_of::<Q4_0>(row, bytes, activations),
                    GgmlType::Q4_1 => block_dots_of::<Q4_1>(row, bytes, activations),
                    GgmlType::Q5_0 => block_dots_of::<Q5_0>(row, bytes, activations),
                    GgmlType::Q5_1 => block_dots_of::<Q5_1>(row, bytes, activations),
                    GgmlType::Q8_0 => block_dots_of::<Q8_0>(row, bytes, activations),
                    GgmlType::Mxfp4 => block_dots_of::<MXFP4>(row, bytes, activations),
                    _ => unreachable!("{ty} has no integer kernel"),
                }
            }
        }
    };
}

pub mod avx2 {
    fn supported() -> bool {
        super::has_avx2()
    }
    kernels!("avx2,fma,f16c", |w, x| _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
}

pub mod avx512_vnni {
    fn supported() -> bool {
        super::has_avx512_vnni()
    }
    kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", |w, x| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        w,
        x
    ));
}

macro_rules! groups {
    ($features:literal, |$acc:ident, $w:ident, $x:ident| $accumulate:expr) => {
        use super::super::super::{GROUP_ROWS, Q8Block, TILE, group_block_bytes};
        use crate::gguf::GgmlType;
        use std::arch::x86_64::*;

        const Q8_0: u8 = 0;
        const Q4_0: u8 = 1;
        const Q4_1: u8 = 2;

        /// acc + the i32 lanes of sum(w x) over each lane's four u8 w and i8 x.
        #[inline]
        #[target_feature(enable = $features)]
        fn accumulate($acc: __m256i, $w: __m256i, $x: __m256i) -> __m256i {
            $accumulate
        }

        /// See `integer_dot::dot_group`; the caller checked the sizes.
        pub fn dot_group(
            ty: GgmlType,
            group: &[u8],
            n_blocks: usize,
            corrections: &[&[i32]],
            activations: &[&[Q8Block]],
            out: &mut [[f32; GROUP_ROWS]; TILE],
        ) {
            assert!(supported());
            let bytes = group_block_bytes(ty);
            let args = (group, n_blocks, bytes, corrections, activations, out);
            // SAFETY: the features are present (asserted); the caller checked the sizes.
            unsafe {
                match ty {
                    GgmlType::Q8_0 => tokens::<Q8_0>(args),
                    GgmlType::Q4_0 => tokens::<Q4_0>(args),
                    GgmlType::Q4_1 => tokens::<Q4_1>(args),
                    _ => unreachable!("{ty} has no row groups"),
                }
            }
        }

        type Args<'a, 'b> =
            (&'a [u8], usize, usize, &'a [&'a [i32]], &'a [&'a [Q8Block]], &'b mut [[f32; GROUP_ROWS]; TILE]);

        #[target_feature(enable = $features)]
        unsafe fn tokens<const TY: u8>(args: Args<'_, '_>) {
            // SAFETY: as the caller promises.
            unsafe {
                match args.4.len() {
                    1 => tile::<TY, 1>(args),
                    2 => tile::<TY, 2>(args),
                    3 => tile::<TY, 3>(args),
                    _ => tile::<TY, 4>(args),
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn tile<const TY: u8, const T: usize>(
            (group, n_blocks, block_bytes, corrections, activations, out): Args<'_, '_>,
        ) {
            let starts: [*const i32; T] = std::array::from_fn(|t| corrections[t].as_ptr());
            let blocks: [*const Q8Block; T] = std::array::from_fn(|t| activations[t].as_ptr());
            let mut sums = [_mm256_setzero_ps(); T];
            let nibble_mask = _mm256_set1_epi8(0x0F);
            for k in 0..n_blocks {
                // SAFETY: block k of the group lies within `group`; each token has n_blocks blocks
                // and n_blocks corrections (checked by the caller).
                unsafe {
                    let base = group.as_ptr().add(k * block_bytes);
                    let row_scales = _mm256_cvtph_ps(_mm_loadu_si128(base as *const __m128i));
                    let values: [*const i8; T] = std::array::from_fn(|t| (*blocks[t].add(k)).q.as_ptr());
                    let x = |t: usize, at: usize| {
                        _mm256_set1_epi32((values[t].add(at) as *const i32).read_unaligned())
                    };
                    let mut even: [__m256i; T] = std::array::from_fn(|t| {
                        if TY == Q4_1 { _mm256_setzero_si256() } else { _mm256_set1_epi32(*starts[t].add(k)) }
                    });
                    let mut odd = [_mm256_setzero_si256(); T];
                    if TY == Q8_0 {
                        for step in 0..8 {
                            let w = _mm256_loadu_si256(base.add(16 + 32 * step) as *const __m256i);
                            for t in 0..T {
                                if step % 2 == 0 {
                                    even[t] = accumulate(even[t], w, x(t, 4 * step));
                                } else {
                                    odd[t] = accumulate(odd[t], w, x(t, 4 * step));
                                }
                            }
                        }
                    } else {
                        let weights = base.add(if TY == Q4_1 { 32 } else { 16 });
                        for step in 0..4 {
                            let packed = _mm256_loadu_si256(weights.add(32 * step) as *const __m256i);
                            let low = _mm256_and_si256(packed, nibble_mask);
                            let high = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble_mask);
                            for t in 0..T {
                                even[t] = accumulate(even[t], low, x(t, 4 * step));
                                odd[t] = accumulate(odd[t], high, x(t, 16 + 4 * step));
                            }
                        }
                    }
                    let row_minimums = if TY == Q4_1 {
                        _mm256_cvtph_ps(_mm_loadu_si128(base.add(16) as *const __m128i))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for t in 0..T {
                        let a = &*blocks[t].add(k);
                        let dot = _mm256_cvtepi32_ps(_mm256_add_epi32(even[t], odd[t]));
                        let scale = _mm256_mul_ps(row_scales, _mm256_set1_ps(a.d));
                        let mut term = _mm256_mul_ps(scale, dot);
                        if TY == Q4_1 {
                            term = _mm256_add_ps(term, _mm256_mul_ps(row_minimums, _mm256_set1_ps(a.s)));
                        }
                        sums[t] = _mm256_add_ps(sums[t], term);
                    }
                }
            }
            for t in 0..T {
                // SAFETY: out[t] holds GROUP_ROWS f32.
                unsafe { _mm256_storeu_ps(out[t].as_mut_ptr(), sums[t]) };
            }
        }
    };
}

/// The repacked products (`integer_dot::dot_group`): eight rows in the eight i32 lanes of a
/// register, so each `vpdpbusd` takes four unsigned values of each of eight rows against four
/// values of one token (broadcast), and a block's dot needs no horizontal sum. With AVX2 the
/// same products are `vpmaddubsw` + `vpmaddwd`, exact for Q4's nibbles only (pairs of at most
/// 15 x 127 fit in i16; Q8_0's w + 128 would saturate), so AVX2 groups Q4_0 and Q4_1. Q4's nibbles are
/// split with a mask and a shift, each half a step of its own. Two integer accumulators per
/// token (even and odd steps) keep the chains short. A group is read front to back, one
/// stream, which the hardware prefetcher follows (a decode step is a pass over the matrix).
pub mod groups {
    /// The AVX-512 VNNI form (Q8_0, Q4_0, Q4_1).
    pub mod vnni {
        fn supported() -> bool {
            super::super::has_avx512_vnni()
        }
        groups!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", |acc, w, x| _mm256_dpbusd_epi32(
            acc, w, x
        ));
    }

    /// The AVX2 form (Q4_0, Q4_1).
    pub mod avx2 {
        fn supported() -> bool {
            super::super::has_avx2()
        }
        groups!("avx2,fma,f16c", |acc, w, x| _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
        ));
    }
}
