//! The x86-64 K-quant kernels: one body, instantiated by `kernels!` for AVX2 and for AVX-512
//! VNNI (256-bit registers through AVX-512VL, as the 32-value kernels). A weight block is decoded
//! once per tile into eight registers of 32 unsigned values (nibbles split with a shift and a
//! mask, Q5_K's fifth and Q6_K's two high bits moved into place with a shift and a mask) and
//! eight registers of i16 sub-block scales (a byte shuffle of the unpacked scales: one scale
//! across a register for Q4_K/Q5_K, one per 128-bit half for Q6_K's sub-blocks of 16). Per
//! token: `vpmaddubsw` (u8 q x i8 x into i16 pairs: at most 2 x 63 x 127, no saturation), then
//! the scale product into i32 lanes, the lanes summed once a block; the mins (Q4_K, Q5_K) and
//! Q6_K's offset meet the activation sums in one `vpmaddwd`. Then the scalar reference's f32
//! steps, in its order.

/// The byte shuffles that spread the i16 scales across a register: 0-7 take scale k (bytes 2k,
/// 2k + 1) into every pair (Q4_K, Q5_K); 8-11 take scale 2k of eight into the low half and
/// 2k + 1 into the high half (Q6_K's sub-blocks of 16).
#[repr(align(32))]
struct Picks([[u8; 32]; 12]);

static SCALE_PICKS: Picks = Picks(scale_picks());

const fn scale_picks() -> [[u8; 32]; 12] {
    let mut picks = [[0u8; 32]; 12];
    let mut i = 0;
    while i < 32 {
        let mut k = 0;
        while k < 8 {
            picks[k][i] = 2 * k as u8 + (i % 2) as u8;
            k += 1;
        }
        while k < 12 {
            let first = 4 * (k - 8) as u8 + if i < 16 { 0 } else { 2 };
            picks[k][i] = first + (i % 2) as u8;
            k += 1;
        }
        i += 1;
    }
    picks
}

macro_rules! kernels {
    ($features:literal, |$acc:ident, $products:ident, $scales:ident| $accumulate:expr) => {
        use super::super::{BLOCK, Q8KBlock};
        use super::SCALE_PICKS;
        use crate::cpu::integer_dot::TILE;
        use crate::gguf::GgmlType;
        use std::arch::x86_64::*;

        const Q4_K: u8 = 0;
        const Q5_K: u8 = 1;
        const Q6_K: u8 = 2;

        /// acc + the i32 lanes of the i16 pairs of `products` times those of `scales`.
        #[inline]
        #[target_feature(enable = $features)]
        fn accumulate($acc: __m256i, $products: __m256i, $scales: __m256i) -> __m256i {
            $accumulate
        }

        /// The f16 at `p` as f32.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn f16_at(p: *const u8) -> f32 {
            // SAFETY: the caller gives two readable bytes.
            let bits = unsafe { (p as *const u16).read_unaligned() };
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
        }

        /// A decoded weight block: 8 x 32 unsigned values in value order, each register's i16
        /// scales, the i16 factors of the 16 activation sums (each min twice for Q4_K/Q5_K, the
        /// 16 scales for Q6_K), d and dmin.
        struct Weights {
            values: [__m256i; 8],
            scales: [__m256i; 8],
            factors: __m256i,
            d: f32,
            dmin: f32,
        }

        /// Q4_K/Q5_K's eight 6-bit scales and mins as bytes: scales 0-3 and mins 0-3 are the
        /// low six bits of bytes 0-3 and 4-7; scales 4-7 (mins 4-7) take their low four bits
        /// from the low (high) nibbles of bytes 8-11 and their top two from the top bits of
        /// bytes 0-3 (4-7).
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn scales_and_mins(p: *const u8) -> (u64, u64) {
            // SAFETY: the caller gives 12 readable bytes.
            let word = |i: usize| unsafe { (p.add(4 * i) as *const u32).read_unaligned() };
            let (a, b, c) = (word(0), word(1), word(2));
            let low_six = 0x3F3F_3F3F;
            let top_two = |w: u32| ((w >> 6) & 0x0303_0303) << 4;
            let scales = (a & low_six) as u64 | (((c & 0x0F0F_0F0F) | top_two(a)) as u64) << 32;
            let mins = (b & low_six) as u64 | ((((c >> 4) & 0x0F0F_0F0F) | top_two(b)) as u64) << 32;
            (scales, mins)
        }

        /// The block of type TY at `p`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn decode<const TY: u8>(p: *const u8) -> Weights {
            let nibble = _mm256_set1_epi8(0x0F);
            let load = |at: usize| unsafe { _mm256_loadu_si256(p.add(at) as *const __m256i) };
            let mut values = [_mm256_setzero_si256(); 8];
            let mut scales = [_mm256_setzero_si256(); 8];
            // SAFETY: the caller gives a whole block of type TY.
            unsafe {
                if TY == Q6_K {
                    let bits = _mm256_set1_epi8(0x30);
                    for half in 0..2 {
                        let (first, second, high) =
                            (load(64 * half), load(64 * half + 32), load(128 + 32 * half));
                        let v = &mut values[4 * half..4 * half + 4];
                        v[0] = _mm256_or_si256(
                            _mm256_and_si256(first, nibble),
                            _mm256_and_si256(_mm256_slli_epi16(high, 4), bits),
                        );
                        v[1] = _mm256_or_si256(
                            _mm256_and_si256(second, nibble),
                            _mm256_and_si256(_mm256_slli_epi16(high, 2), bits),
                        );
                        v[2] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(first, 4), nibble),
                            _mm256_and_si256(high, bits),
                        );
                        v[3] = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(second, 4), nibble),
                            _mm256_and_si256(_mm256_srli_epi16(high, 2), bits),
                        );
                    }
                    // Register k holds sub-blocks 2k (low half) and 2k + 1 (high half).
                    let wide = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
                    let halves = [
                        _mm256_permute2x128_si256(wide, wide, 0x00),
                        _mm256_permute2x128_si256(wide, wide, 0x11),
                    ];
                    for (k, scale) in scales.iter_mut().enumerate() {
                        let pick = _mm256_load_si256(SCALE_PICKS.0[8 + k % 4].as_ptr() as *const __m256i);
                        *scale = _mm256_shuffle_epi8(halves[k / 4], pick);
                    }
                    return Weights { values, scales, factors: wide, d: f16_at(p.add(208)), dmin: 0.0 };
                }
                let (nibbles, fifth) = if TY == Q5_K { (48, load(16)) } else { (16, _mm256_setzero_si256()) };
                let bit = _mm256_set1_epi8(0x10);
                for pair in 0..4 {
                    let packed = load(nibbles + 32 * pair);
                    values[2 * pair] = _mm256_and_si256(packed, nibble);
                    values[2 * pair + 1] = _mm256_and_si256(_mm256_srli_epi16(packed, 4), nibble);
                    if TY == Q5_K {
                        // Bits 2 pair and 2 pair + 1 of each byte, moved to bit 4.
                        let shifted = _mm256_srl_epi16(fifth, _mm_cvtsi32_si128(2 * pair as i32));
                        values[2 * pair] = _mm256_or_si256(
                            values[2 * pair],
                            _mm256_and_si256(_mm256_slli_epi16(shifted, 4), bit),
                        );
                        values[2 * pair + 1] = _mm256_or_si256(
                            values[2 * pair + 1],
                            _mm256_and_si256(_mm256_slli_epi16(shifted, 3), bit),
                        );
                    }
                }
                let (scale_bytes, min_bytes) = scales_and_mins(p.add(4));
                let wide =
                    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scale_bytes as i64)));
                for (k, scale) in scales.iter_mut().enumerate() {
                    let pick = _mm256_load_si256(SCALE_PICKS.0[k].as_ptr() as *const __m256i);
                    *scale = _mm256_shuffle_epi8(wide, pick);
                }
                let mins = _mm_cvtsi64_si128(min_bytes as i64);
                let factors = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
                Weights { values, scales, factors, d: f16_at(p), dmin: f16_at(p.add(2)) }
            }
        }

        /// The i32 lanes of S (before Q6_K's offset) and of the activation sums' term C (M, or
        /// Q6_K's sum sc_j sums_j) of the block pair.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn lanes(w: &Weights, a: &Q8KBlock) -> (__m256i, __m256i) {
            let x = a.q.as_ptr() as *const __m256i;
            let mut acc = [_mm256_setzero_si256(); 2];
            for k in 0..BLOCK / 32 {
                // SAFETY: q holds 256 bytes.
                let products = _mm256_maddubs_epi16(w.values[k], unsafe { _mm256_loadu_si256(x.add(k)) });
                acc[k % 2] = accumulate(acc[k % 2], products, w.scales[k]);
            }
            // SAFETY: sums holds 16 i16.
            let activation_sums = unsafe { _mm256_loadu_si256(a.sums.as_ptr() as *const __m256i) };
            (_mm256_add_epi32(acc[0], acc[1]), _mm256_madd_epi16(activation_sums, w.factors))
        }

        /// Four tokens' lanes, pairs[t] = hadd(S_t, C_t) (zero past the tile), summed into
        /// [S0 M0 S1 M1 | S2 M2 S3 M3]: two more horizontal adds and a swap of halves for all
        /// four tokens. Q6_K's S takes its offset here: S - 32 C.
        #[inline]
        #[target_feature(enable = $features)]
        fn reduce<const TY: u8>(pairs: [__m256i; TILE]) -> __m256i {
            let (a, b) = (_mm256_hadd_epi32(pairs[0], pairs[1]), _mm256_hadd_epi32(pairs[2], pairs[3]));
            let full = _mm256_add_epi32(
                _mm256_permute2x128_si256(a, b, 0x20),
                _mm256_permute2x128_si256(a, b, 0x31),
            );
            if TY == Q6_K {
                _mm256_sub_epi32(full, _mm256_slli_epi32(_mm256_srli_epi64(full, 32), 5))
            } else {
                full
            }
        }

        /// One row x T tokens: each block decoded once, its (S, M) for the T tokens reduced
        /// together, then the scalar reference's f32 steps on the T tokens' lanes at once (the
        /// same operations on each, in the same order: the same bits).
        #[target_feature(enable = $features)]
        unsafe fn tile<const TY: u8, const T: usize>(
            row: &[u8],
            block_bytes: usize,
            activations: &[&[Q8KBlock]],
            out: &mut [f32],
        ) {
            let mut totals = _mm_setzero_ps();
            let tokens: [*const Q8KBlock; T] = std::array::from_fn(|t| activations[t].as_ptr());
            let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
            for k in 0..row.len() / block_bytes {
                if T == 1 {
                    // A decode step streams the matrix a row after another: the next row's block
                    // k (adjacent in the matrix) is fetched while this one is dotted. A prefetch
                    // past the matrix's end (its last row) does not fault.
                    let ahead = row.as_ptr().wrapping_add(row.len() + k * block_bytes);
                    for line in (0..block_bytes).step_by(64) {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line) as *const i8);
                    }
                }
                // SAFETY: block k lies within the row, and every activation row has its block k
                // (checked by the caller).
                unsafe {
                    let w = decode::<TY>(row.as_ptr().add(k * block_bytes));
                    let mut pairs = [_mm256_setzero_si256(); TILE];
                    let mut x_scales = [0.0f32; TILE];
                    for t in 0..T {
                        let a = &*tokens[t].add(k);
                        let (s, c) = lanes(&w, a);
                        pairs[t] = _mm256_hadd_epi32(s, c);
                        x_scales[t] = a.d;
                    }
                    let values = _mm256_permutevar8x32_ps(_mm256_cvtepi32_ps(reduce::<TY>(pairs)), order);
                    let x_scales = _mm_loadu_ps(x_scales.as_ptr());
                    let s = _mm256_castps256_ps128(values);
                    totals = _mm_add_ps(totals, _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(w.d), x_scales), s));
                    if TY != Q6_K {
                        let m = _mm256_extractf128_ps(values, 1);
                        totals = _mm_sub_ps(totals, _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(w.dmin), x_scales), m));
                    }
                }
            }
            let mut lanes = [0.0f32; TILE];
            // SAFETY: lanes holds four f32.
            unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), totals) };
            out[..T].copy_from_slice(&lanes[..T]);
        }

        fn code(ty: GgmlType) -> u8 {
            match ty {
                GgmlType::Q4K => Q4_K,
                GgmlType::Q5K => Q5_K,
                GgmlType::Q6K => Q6_K,
                _ => unreachable!("{ty} has no K-quant kernel"),
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn tile_of<const TY: u8>(
            row: &[u8],
            block_bytes: usize,
            activations: &[&[Q8KBlock]],
            out: &mut [f32],
        ) {
            // SAFETY: as the caller promises.
            unsafe {
                match activations.len() {
                    1 => tile::<TY, 1>(row, block_bytes, activations, out),
                    2 => tile::<TY, 2>(row, block_bytes, activations, out),
                    3 => tile::<TY, 3>(row, block_bytes, activations, out),
                    _ => tile::<TY, 4>(row, block_bytes, activations, out),
                }
            }
        }

        /// See `k_quants::dot_tile`; the caller checked the sizes.
        pub fn dot_tile(ty: GgmlType, row: &[u8], activations: &[&[Q8KBlock]], out: &mut [f32]) {
            assert!(supported() && activations.len() <= TILE);
            let bytes = ty.block_bytes();
            // SAFETY: the features are present (asserted); the caller checked the sizes.
            unsafe {
                match code(ty) {
                    Q4_K => tile_of::<Q4_K>(row, bytes, activations, out),
                    Q5_K => tile_of::<Q5_K>(row, bytes, activations, out),
                    _ => tile_of::<Q6_K>(row, bytes, activations, out),
                }
            }
        }

        #[target_feature(enable = $features)]
        unsafe fn block_sums_of<const TY: u8>(
            row: &[u8],
            block_bytes: usize,
            activations: &[Q8KBlock],
        ) -> Vec<(i32, i32)> {
            (0..row.len() / block_bytes)
                // SAFETY: block k lies within the row; activations has a block k (checked by the caller).
                .map(|k| unsafe {
                    let (s, c) = lanes(&decode::<TY>(row.as_ptr().add(k * block_bytes)), &activations[k]);
                    let mut pairs = [_mm256_setzero_si256(); TILE];
                    pairs[0] = _mm256_hadd_epi32(s, c);
                    let sums = reduce::<TY>(pairs);
                    let m = if TY == Q6_K { 0 } else { _mm256_extract_epi32::<1>(sums) };
                    (_mm256_extract_epi32::<0>(sums), m)
                })
                .collect()
        }

        /// See `k_quants::block_sums`.
        pub fn block_sums(ty: GgmlType, row: &[u8], activations: &[Q8KBlock]) -> Vec<(i32, i32)> {
            assert!(supported());
            let bytes = ty.block_bytes();
            // SAFETY: the features are present (asserted); the caller checked the sizes.
            unsafe {
                match code(ty) {
                    Q4_K => block_sums_of::<Q4_K>(row, bytes, activations),
                    Q5_K => block_sums_of::<Q5_K>(row, bytes, activations),
                    _ => block_sums_of::<Q6_K>(row, bytes, activations),
                }
            }
        }
    };
}

pub mod avx2 {
    fn supported() -> bool {
        crate::cpu::integer_dot::x86::has_avx2()
    }
    kernels!("avx2,fma,f16c", |acc, products, scales| _mm256_add_epi32(
        acc,
        _mm256_madd_epi16(products, scales)
    ));
}

pub mod avx512_vnni {
    fn supported() -> bool {
        crate::cpu::integer_dot::x86::has_avx512_vnni()
    }
    kernels!("avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni", |acc, products, scales| {
        _mm256_dpwssd_epi32(acc, products, scales)
    });
}
