//! Attention for one new token of each of a batch of sequences over the paged f16 KV cache,
//! split along the sequence (flash-decoding), then the splits combined.
//!
//! Math, for sequence b with len_b cached positions (the new token's keys and values included, so
//! its position is len_b - 1) and query head h: as in prefill, over j in [first_b, len_b) with
//! first_b = len_b - window when a window applies, else 0. A sequence of length 0 gives zeros.
//! Layout: q, out [n_seq, n_head, head_dim] f32; lens [n_seq] u32 and the block table (row b for
//! sequence b) on the device, so that a captured graph replays while lengths grow and the host
//! adds pages; partial [n_seq, n_head, n_splits, head_dim] and stats [n_seq, n_head, n_splits, 2]
//! (max, sum) f32 hold each split's unnormalised output. With one split (`out` not null) there is
//! nothing to combine: the block writes out [n_seq, n_head, head_dim] itself, normalised, with the
//! head's sink when `sinks` is not null, and partial and stats are not touched.
//!
//! attention_decode_hd{64,80,96,128}_h{1,2,4,8}: grid (n_splits, n_head_kv * ceil(group / H),
//! n_seq), 128 threads, `decode_shared_bytes(head_dim)` of dynamic shared memory. n_splits is fixed
//! at launch (the host picks it so that one long sequence fills the GPU in one wave, and under a
//! window no more than the window's pages need, 16 each, so that a 128-position window takes one
//! split and no combine); each sequence's pages from first_b on are divided evenly among the
//! splits on the device, from its length: pages wholly before the window are never read. A block takes H query heads of one GQA group (H, a compile-time 1, 2, 4 or 8, is the
//! smallest that covers the group, or 8), so that their KV head is read once for all of them, and
//! its 4 warps take the split's pages in turn, each warp on its own: it copies its next pages of K
//! and V into shared memory with `cp.async` (two pages in flight, rows padded by 16 bytes so that
//! 16 lanes reading 16 different rows hit distinct banks), then computes the scores of its 16 keys
//! for every head (lane = key + 16 half: each half-warp takes half of the dims, one shuffle adds
//! them), an online softmax per head, and the weighted sum of values (lane = pairs of dims). At
//! the end the warps' states are merged through shared memory.
//! attention_decode_combine: grid (n_head, n_seq), 128 threads, 4 n_splits bytes of dynamic shared
//! memory: out = sum_s A_s e^(m_s - M) / (e^(sink - M) + sum_s L_s e^(m_s - M)), M the largest of
//! the m_s and the sink; the splits' factors are computed in parallel, then each thread sums its
//! dim over the splits with 8 loads in flight.
//! Cost: each position's K and V read once per block of H heads: 4 head_dim bytes per position
//! per KV head, the floor of decode attention. Per page of 16 positions a warp issues about
//! 16 (HD / 16) (1 + H) + 16 (2 + (HD / 64) (4 + 2H)) instructions (scores, values; ~1,100 at HD 128,
//! H 4), which 12 warps per SM issue faster than the SM's share of the copy rate brings the pages.

use super::paged::{PAGE_SIZE, page_offset};
use crate::device::{
    WARP_SIZE, block_dim, block_idx, block_idx_y, block_idx_z, block_max, block_sum, copy_async_16,
    copy_async_commit, copy_async_wait, dynamic_shared_address, exp, f16x2_to_f32, f16x8_to_f32, fma,
    grid_dim, lane_idx, load_f32x4, max, shared_load_f32, shared_load_f32x4, shared_load_u32,
    shared_load_u32x4, shared_store_f32, shared_store_f32x4, shuffle_xor, sync_threads, sync_warp,
    thread_idx, warp_idx,
};
use crate::matmul::quantize::quantize_block;
use crate::unroll;

/// Query heads per block (of one GQA group).
pub const DECODE_HEADS: usize = 8;
const WARPS: usize = 4;
/// Pages each warp has in flight.
const STAGES: usize = 2;

/// Bytes of one page of one KV head in shared memory: PAGE_SIZE rows of head_dim + 8 f16.
const fn page_bytes(head_dim: usize) -> usize {
    PAGE_SIZE * (head_dim + 8) * 2
}

/// Dynamic shared memory of a block: the queries [8][hd] f32, then per warp STAGES pages of K and
/// of V, then per warp the weights [PAGE_SIZE][8] f32. The merge at the end reuses the pages.
pub const fn decode_shared_bytes(head_dim: usize) -> usize {
    4 * DECODE_HEADS * head_dim + WARPS * (STAGES * 2 * page_bytes(head_dim) + 4 * PAGE_SIZE * DECODE_HEADS)
}

// The merge area (per warp: 8 x (max, sum) and 8 x head_dim sums) fits in the page buffers.
const _: () = assert!(WARPS * DECODE_HEADS * (2 + 128) * 4 <= WARPS * STAGES * 2 * page_bytes(64));

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_decode<const HD: usize, const HEADS: usize>(
    q: *const f32,
    key_pages: *const u16,
    value_pages: *const u16,
    block_table: *const u32,
    lens: *const u32,
    partial: *mut f32,
    stats: *mut f32,
    sinks: *const f32,
    out: *mut f32,
    n_head: u32,
    n_head_kv: u32,
    n_pages: u32,
    max_pages: u32,
    window: u32,
    scale: f32,
) {
    let (n_head, n_head_kv) = (n_head as usize, n_head_kv as usize);
    let (n_pages, max_pages, window) = (n_pages as usize, max_pages as usize, window as usize);
    let (tid, lane, warp) = (thread_idx(), lane_idx(), warp_idx());
    let (split, n_splits, seq) = (block_idx(), grid_dim(), block_idx_z());
    let group = n_head / n_head_kv;
    let head_blocks = group.div_ceil(HEADS);
    let (kv_head, head_block) = (block_idx_y() / head_blocks, block_idx_y() % head_blocks);
    let first_head = kv_head * group + head_block * HEADS;
    // Heads of this block that exist; the others (when HEADS does not divide the group) have zero
    // queries and are computed and dropped, which keeps the inner loops free of branches.
    let heads = (group - head_block * HEADS).min(HEADS);

    // This split's pages: the sequence's visible pages divided evenly among the splits.
    let len = unsafe { *lens.add(seq) } as usize;
    let first = if window > 0 { len.saturating_sub(window) } else { 0 };
    let (page_begin, page_end) = (first / PAGE_SIZE, len.div_ceil(PAGE_SIZE).min(max_pages));
    let per_split = page_end.saturating_sub(page_begin).div_ceil(n_splits);
    let split_begin = page_begin + split * per_split;
    let split_end = (split_begin + per_split).min(page_end);
    let table_row = unsafe { block_table.add(seq * max_pages) };

    let q_shared = dynamic_shared_address();
    let pages = q_shared + (4 * DECODE_HEADS * HD) as u32;
    let pb = page_bytes(HD) as u32;
    let warp_pages = pages + warp as u32 * STAGES as u32 * 2 * pb;
    let weights = pages + (WARPS * STAGES) as u32 * 2 * pb + (warp * 4 * PAGE_SIZE * DECODE_HEADS) as u32;

    // Page k of this warp is the split's page warp + 4k.
    let page_index = |k: usize| split_begin + warp + WARPS * k;
    let my_pages = split_end.saturating_sub(split_begin + warp).div_ceil(WARPS);
    // Starts copying this warp's page k (K and V of this KV head) into stage buffer `stage`; a page
    // missing from the table reads as zeros.
    let issue = |k: usize, stage: usize| {
        let index = page_index(k);
        let page = unsafe { *table_row.add(index) } as usize;
        let valid = page < n_pages;
        let base = if valid { page_offset(page, kv_head, n_head_kv, HD) } else { 0 };
        let (k_buffer, v_buffer) =
            (warp_pages + 2 * stage as u32 * pb, warp_pages + (2 * stage as u32 + 1) * pb);
        for c in 0..HD / 16 {
            let piece = lane + WARP_SIZE * c; // of PAGE_SIZE * HD / 8
            let (row, col) = (piece / (HD / 8), piece % (HD / 8));
            let shared = (row * (HD + 8) * 2 + 16 * col) as u32;
            let global = base + row * HD + 8 * col;
            unsafe {
                copy_async_16(k_buffer + shared, key_pages.add(global) as *const u8, valid);
                copy_async_16(v_buffer + shared, value_pages.add(global) as *const u8, valid);
            }
        }
    };

    let (key, half) = (lane % PAGE_SIZE, lane / PAGE_SIZE);
    let mut m = [f32::NEG_INFINITY; DECODE_HEADS];
    // This lane's share of the sum: the weight of its key (both halves hold the same).
    let mut l = [0.0f32; DECODE_HEADS];
    // acc[g]: dims 2 lane, 2 lane + 1, 2 (lane + 32), 2 (lane + 32) + 1 of head g.
    let mut acc = [[0.0f32; 4]; DECODE_HEADS];

    // The first pages are on their way while the queries are staged.
    for stage in 0..STAGES {
        if stage < my_pages {
            issue(stage, stage);
        }
        copy_async_commit();
    }
    let mut i = tid;
    while i < HEADS * HD / 4 {
        let (g, c) = (i / (HD / 4), i % (HD / 4));
        let v = if g < heads {
            unsafe { load_f32x4(q.add((seq * n_head + first_head + g) * HD + 4 * c)) }
        } else {
            [0.0; 4]
        };
        unsafe { shared_store_f32x4(q_shared + (16 * i) as u32, v) };
        i += block_dim();
    }
    sync_threads();
    for k in 0..my_pages {
        copy_async_wait::<{ STAGES as u32 - 1 }>();
        sync_warp();
        let stage = (k % STAGES) as u32;
        let (k_buffer, v_buffer) = (warp_pages + 2 * stage * pb, warp_pages + (2 * stage + 1) * pb);
        let p0 = page_index(k) * PAGE_SIZE;
        let position = p0 + key;
        let visible = position >= first && position < len;

        let mut s = [0.0f32; DECODE_HEADS];
        let k_row = k_buffer + (key * (HD + 8) * 2 + half * HD) as u32;
        let q_half = q_shared + (half * HD / 2 * 4) as u32;
        for c in 0..HD / 16 {
            let kf = f16x8_to_f32(unsafe { shared_load_u32x4(k_row + 16 * c as u32) });
            unroll!([0, 1, 2, 3, 4, 5, 6, 7], |g| {
                if g < HEADS {
                    let at = q_half + (4 * (g * HD + 8 * c)) as u32;
                    let (qa, qb) = unsafe { (shared_load_f32x4(at), shared_load_f32x4(at + 16)) };
                    let low =
                        fma(qa[3], kf[3], fma(qa[2], kf[2], fma(qa[1], kf[1], fma(qa[0], kf[0], s[g]))));
                    s[g] = fma(qb[3], kf[7], fma(qb[2], kf[6], fma(qb[1], kf[5], fma(qb[0], kf[4], low))));
                }
            });
        }
        let mut p = [0.0f32; DECODE_HEADS];
        unroll!([0, 1, 2, 3, 4, 5, 6, 7], |g| {
            if g < HEADS {
                let total = s[g] + shuffle_xor(s[g], 16);
                let score = if visible { total * scale } else { f32::NEG_INFINITY };
                let mut page_max = max(score, shuffle_xor(score, 8));
                page_max = max(page_max, shuffle_xor(page_max, 4));
                page_max = max(page_max, shuffle_xor(page_max, 2));
                page_max = max(page_max, shuffle_xor(page_max, 1));
                let new_max = max(m[g], page_max);
                // With nothing visible yet (new_max = -inf) the weights stay 0 and nothing changes.
                let finite = new_max != f32::NEG_INFINITY;
                let correction = if finite { exp(m[g] - new_max) } else { 1.0 };
                p[g] = if finite { exp(score - new_max) } else { 0.0 };
                l[g] = l[g] * correction + p[g];
                for a in acc[g].iter_mut() {
                    *a *= correction;
                }
                m[g] = new_max;
            }
        });
        if half == 0 {
            let at = weights + (4 * key * DECODE_HEADS) as u32;
            unsafe { shared_store_f32x4(at, [p[0], p[1], p[2], p[3]]) };
            if HEADS > 4 {
                unsafe { shared_store_f32x4(at + 16, [p[4], p[5], p[6], p[7]]) };
            }
        }
        sync_warp();
        // Only visible keys: slots past the sequence's end may hold anything, NaN included.
        let (j0, j1) = (first.max(p0) - p0, len.min(p0 + PAGE_SIZE).saturating_sub(p0));
        for j in j0..j1 {
            let at = weights + (4 * j * DECODE_HEADS) as u32;
            let wa = unsafe { shared_load_f32x4(at) };
            let wb = if HEADS > 4 { unsafe { shared_load_f32x4(at + 16) } } else { [0.0; 4] };
            let w = [wa[0], wa[1], wa[2], wa[3], wb[0], wb[1], wb[2], wb[3]];
            unroll!([0, 1], |half_word| {
                let word = lane + WARP_SIZE * half_word;
                if WARP_SIZE * half_word < HD / 2 && word < HD / 2 {
                    let at = v_buffer + (j * (HD + 8) * 2 + 4 * word) as u32;
                    let [a, b] = f16x2_to_f32(unsafe { shared_load_u32(at) });
                    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |g| {
                        if g < HEADS {
                            acc[g][2 * half_word] = fma(w[g], a, acc[g][2 * half_word]);
                            acc[g][2 * half_word + 1] = fma(w[g], b, acc[g][2 * half_word + 1]);
                        }
                    });
                }
            });
        }
        sync_warp();
        if k + STAGES < my_pages {
            issue(k + STAGES, stage as usize);
        }
        copy_async_commit();
    }
    copy_async_wait::<0>();
    sync_threads();

    // Merge the warps: per warp, (max, sum) of each head, then its sums over values [8][HD].
    let merge = pages;
    let stat_at = |w: usize, g: usize| merge + (4 * 2 * (w * DECODE_HEADS + g)) as u32;
    let acc_at = |w: usize, g: usize, d: usize| {
        merge + (4 * (2 * WARPS * DECODE_HEADS + (w * DECODE_HEADS + g) * HD + d)) as u32
    };
    unroll!([0, 1, 2, 3, 4, 5, 6, 7], |g| {
        if g < HEADS && g < heads {
            let mut sum = l[g] + shuffle_xor(l[g], 8);
            sum += shuffle_xor(sum, 4);
            sum += shuffle_xor(sum, 2);
            sum += shuffle_xor(sum, 1);
            if lane == 0 {
                unsafe {
                    shared_store_f32(stat_at(warp, g), m[g]);
                    shared_store_f32(stat_at(warp, g) + 4, sum);
                }
            }
            unroll!([0, 1], |half_word| {
                let word = lane + WARP_SIZE * half_word;
                if WARP_SIZE * half_word < HD / 2 && word < HD / 2 {
                    unsafe {
                        shared_store_f32(acc_at(warp, g, 2 * word), acc[g][2 * half_word]);
                        shared_store_f32(acc_at(warp, g, 2 * word + 1), acc[g][2 * half_word + 1]);
                    }
                }
            });
        }
    });
    sync_threads();
    let mut i = tid;
    while i < heads * HD {
        let (g, d) = (i / HD, i % HD);
        let mut total_max = f32::NEG_INFINITY;
        for w in 0..WARPS {
            total_max = max(total_max, unsafe { shared_load_f32(stat_at(w, g)) });
        }
        let (mut sum, mut value) = (0.0f32, 0.0f32);
        for w in 0..WARPS {
            let warp_max = unsafe { shared_load_f32(stat_at(w, g)) };
            if warp_max != f32::NEG_INFINITY {
                let factor = exp(warp_max - total_max);
                sum += unsafe { shared_load_f32(stat_at(w, g) + 4) } * factor;
                value += unsafe { shared_load_f32(acc_at(w, g, d)) } * factor;
            }
        }
        if out.is_null() {
            let index = (seq * n_head + first_head + g) * n_splits + split;
            unsafe { *partial.add(index * HD + d) = value };
            if d == 0 {
                unsafe {
                    *stats.add(2 * index) = total_max;
                    *stats.add(2 * index + 1) = sum;
                }
            }
        } else {
            // One split: the block finishes the softmax itself, sink included (as the combine
            // kernel would for one split).
            let head = first_head + g;
            let sink = if sinks.is_null() { f32::NEG_INFINITY } else { unsafe { *sinks.add(head) } };
            let top = max(total_max, sink);
            let factor = if total_max == f32::NEG_INFINITY { 0.0 } else { exp(total_max - top) };
            let sink_weight = if sink == f32::NEG_INFINITY { 0.0 } else { exp(sink - top) };
            let denominator = fma(sum, factor, sink_weight);
            let inverse = if denominator > 0.0 { 1.0 / denominator } else { 0.0 };
            unsafe { *out.add((seq * n_head + head) * HD + d) = value * factor * inverse };
        }
        i += block_dim();
    }
}

macro_rules! decode_entry {
    ($($name:ident = ($hd:literal, $heads:literal)),*) => {$(
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            q: *const f32,
            key_pages: *const u16,
            value_pages: *const u16,
            block_table: *const u32,
            lens: *const u32,
            partial: *mut f32,
            stats: *mut f32,
            sinks: *const f32,
            out: *mut f32,
            n_head: u32,
            n_head_kv: u32,
            n_pages: u32,
            max_pages: u32,
            window: u32,
            scale: f32,
        ) {
            unsafe {
                attention_decode::<$hd, $heads>(
                    q, key_pages, value_pages, block_table, lens, partial, stats, sinks, out, n_head,
                    n_head_kv, n_pages, max_pages, window, scale,
                )
            }
        }
    )*};
}

// attention_decode_hd{head_dim}_h{heads per block}; the host takes the smallest of 1, 2, 4, 8
// that covers the group (8 for larger groups, in several blocks).
decode_entry!(
    attention_decode_hd64_h1 = (64, 1),
    attention_decode_hd64_h2 = (64, 2),
    attention_decode_hd64_h4 = (64, 4),
    attention_decode_hd64_h8 = (64, 8),
    attention_decode_hd80_h1 = (80, 1),
    attention_decode_hd80_h2 = (80, 2),
    attention_decode_hd80_h4 = (80, 4),
    attention_decode_hd80_h8 = (80, 8),
    attention_decode_hd96_h1 = (96, 1),
    attention_decode_hd96_h2 = (96, 2),
    attention_decode_hd96_h4 = (96, 4),
    attention_decode_hd96_h8 = (96, 8),
    attention_decode_hd128_h1 = (128, 1),
    attention_decode_hd128_h2 = (128, 2),
    attention_decode_hd128_h4 = (128, 4),
    attention_decode_hd128_h8 = (128, 8)
);

/// Combines the splits of `attention_decode_hd*` (see the top of this file). When `q8` is not
/// null, `out` is also quantized as by `quantize_q8_1` into (q8, q8_d, q8_s), which saves the
/// decode step a launch before an 8-bit GEMV; the host passes it only where head_dim and the
/// block size are multiples of 32, so that each warp's 32 values form one block.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn attention_decode_combine(
    partial: *const f32,
    stats: *const f32,
    sinks: *const f32,
    out: *mut f32,
    q8: *mut i8,
    q8_d: *mut f32,
    q8_s: *mut f32,
    n_head: u32,
    n_splits: u32,
    head_dim: u32,
) {
    let (head, seq, tid) = (block_idx(), block_idx_y(), thread_idx());
    let (n_splits, head_dim) = (n_splits as usize, head_dim as usize);
    let row = seq * n_head as usize + head;
    let sink = if sinks.is_null() { f32::NEG_INFINITY } else { unsafe { *sinks.add(head) } };
    let stats = unsafe { stats.add(2 * row * n_splits) };
    let mut local_max = sink;
    let mut s = tid;
    while s < n_splits {
        local_max = max(local_max, unsafe { *stats.add(2 * s) });
        s += block_dim();
    }
    let total_max = block_max(local_max);
    // factors[s] = e^(m_s - M), 0 for an empty split; the sum of the L_s weighted by them.
    let factors = dynamic_shared_address();
    let mut local_sum = 0.0f32;
    let mut s = tid;
    while s < n_splits {
        let split_max = unsafe { *stats.add(2 * s) };
        let factor = if split_max == f32::NEG_INFINITY { 0.0 } else { exp(split_max - total_max) };
        unsafe { shared_store_f32(factors + 4 * s as u32, factor) };
        local_sum = fma(unsafe { *stats.add(2 * s + 1) }, factor, local_sum);
        s += block_dim();
    }
    // block_sum's barriers also make the factors visible to every thread.
    let mut sum = block_sum(local_sum);
    if sink != f32::NEG_INFINITY {
        sum += exp(sink - total_max);
    }
    let inverse = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    let partial = unsafe { partial.add(row * n_splits * head_dim) };
    let mut d = tid;
    while d < head_dim {
        let mut value = [0.0f32; 8];
        let mut s = 0;
        while s + 8 <= n_splits {
            let loaded: [f32; 8] = core::array::from_fn(|k| unsafe { *partial.add((s + k) * head_dim + d) });
            for k in 0..8 {
                value[k] = fma(loaded[k], unsafe { shared_load_f32(factors + 4 * (s + k) as u32) }, value[k]);
            }
            s += 8;
        }
        while s < n_splits {
            value[0] = fma(
                unsafe { *partial.add(s * head_dim + d) },
                unsafe { shared_load_f32(factors + 4 * s as u32) },
                value[0],
            );
            s += 1;
        }
        let total =
            ((value[0] + value[1]) + (value[2] + value[3])) + ((value[4] + value[5]) + (value[6] + value[7]));
        let value = total * inverse;
        unsafe { *out.add(row * head_dim + d) = value };
        if !q8.is_null() {
            unsafe { quantize_block(value, (row * head_dim + d) / 32, q8, q8_d, q8_s) };
        }
        d += block_dim();
    }
}
