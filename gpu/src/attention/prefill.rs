//! Causal attention of T new tokens of one sequence over the paged f16 KV cache (prefill), in the
//! flash-attention style: no T x T matrix anywhere, K/V tiles through shared memory, an online
//! softmax in f32.
//!
//! Math, for token t at position p = start + t and query head h (KV head h / (n_head / n_head_kv)):
//! s_j = scale q_h . k_j for j <= p (and j > p - window when window > 0), out = sum_j w_j v_j with
//! w the softmax of s, joined by the head's sink when there are sinks (see `attention/mod.rs`).
//! The keys and values of positions 0..start + T must already be in the cache (kv_write_paged).
//! Layout: q, out [T, n_head, head_dim] f32; pages as in `paged.rs`; `start` one u32 on the device.
//! Launch: grid (ceil(T / 64), n_head), 128 threads, `prefill_shared_bytes(head_dim)` of dynamic
//! shared memory; one entry point per head dim (64, 80, 96, 128), so that every array is sized at
//! compile time and lives in registers.
//! Each block takes a tile of 64 queries of one head (the last tiles, which see the most keys,
//! are launched first) and walks tiles of 32 keys from the first its window reaches to its
//! diagonal. Per tile: the block converts K and V to f32 in shared memory (rows padded by 4 words,
//! so that the 16-byte reads below are free of bank conflicts); thread (tq, tk) = (tid / 8, tid % 8)
//! computes the 4 x 4 scores of queries 4tq..4tq + 3 and keys tk, tk + 8, tk + 16, tk + 24 (64 FMAs
//! per 8 shared loads); a row's maximum and sum come from the 8 lanes that share tq; the weights go
//! to shared memory transposed, and the thread accumulates queries 4tq..4tq + 3 times dims
//! 4(tk + 8c)..+3 of the values.
//! Cost: 2 T (start + T/2) head_dim FMAs per head (causal, no window), all on CUDA cores; the
//! cache is read once per query tile and head (from L2 mostly). Prefill attention is a few percent
//! of a prefill's FLOPs at these lengths, hence no tensor cores yet.

use super::paged::{PAGE_SIZE, page_of, page_offset};
use crate::device::{
    block_idx, block_idx_y, dynamic_shared_address, exp, f16x8_to_f32, fma, grid_dim, load_f32x4, load_u16x8,
    max, shared_load_f32x4, shared_store_f32x4, shuffle_xor, store_f32x4, sync_threads, thread_idx,
};
use crate::unroll;

pub const QUERY_TILE: usize = 64;
pub const KEY_TILE: usize = 32;
const THREADS: usize = 128;
/// Words per row of the transposed weights [KEY_TILE][QUERY_TILE + 4].
const WEIGHT_ROW: usize = QUERY_TILE + 4;

/// Dynamic shared memory of a block: Q [64][hd + 4], K and V [32][hd + 4] f32, weights [32][68].
pub const fn prefill_shared_bytes(head_dim: usize) -> usize {
    4 * ((QUERY_TILE + 2 * KEY_TILE) * (head_dim + 4) + KEY_TILE * WEIGHT_ROW)
}

/// acc + a . b, in FMAs.
#[inline(always)]
fn dot4(acc: f32, a: [f32; 4], b: [f32; 4]) -> f32 {
    fma(a[3], b[3], fma(a[2], b[2], fma(a[1], b[1], fma(a[0], b[0], acc))))
}

/// Sum over the 8 lanes that share bits 3.. of the lane index.
#[inline(always)]
fn sum8(mut v: f32) -> f32 {
    v += shuffle_xor(v, 1);
    v += shuffle_xor(v, 2);
    v + shuffle_xor(v, 4)
}

#[inline(always)]
fn max8(mut v: f32) -> f32 {
    v = max(v, shuffle_xor(v, 1));
    v = max(v, shuffle_xor(v, 2));
    max(v, shuffle_xor(v, 4))
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_prefill<const HD: usize>(
    q: *const f32,
    key_pages: *const u16,
    value_pages: *const u16,
    block_table: *const u32,
    start: *const u32,
    sinks: *const f32,
    out: *mut f32,
    seq: u32,
    n_tokens: u32,
    n_head: u32,
    n_head_kv: u32,
    n_pages: u32,
    max_pages: u32,
    window: u32,
    scale: f32,
) {
    let row = HD + 4; // words per padded row of Q, K, V
    let quads = HD / 4; // 16-byte pieces of a head's row of f32
    let tid = thread_idx();
    let (tq, tk) = (tid / 8, tid % 8);
    let (n_tokens, n_head, n_head_kv) = (n_tokens as usize, n_head as usize, n_head_kv as usize);
    let (n_pages, max_pages, window) = (n_pages as usize, max_pages as usize, window as usize);
    let head = block_idx_y();
    let kv_head = head / (n_head / n_head_kv);
    let t0 = (grid_dim() - 1 - block_idx()) * QUERY_TILE;
    let rows = n_tokens.saturating_sub(t0).min(QUERY_TILE);
    let start = unsafe { *start } as usize;
    // Keys this tile's queries can see: [low, high).
    let high = start + t0 + rows;
    let low = if window > 0 { (start + t0 + 1).saturating_sub(window) } else { 0 };
    let table_row = unsafe { block_table.add(seq as usize * max_pages) };
    let q_stride = n_head * HD;

    let q_tile = dynamic_shared_address();
    let k_tile = q_tile + (4 * QUERY_TILE * row) as u32;
    let v_tile = k_tile + (4 * KEY_TILE * row) as u32;
    let weights = v_tile + (4 * KEY_TILE * row) as u32;

    let mut i = tid;
    while i < QUERY_TILE * quads {
        let (r, c) = (i / quads, i % quads);
        let v = if r < rows {
            unsafe { load_f32x4(q.add((t0 + r) * q_stride + head * HD + 4 * c)) }
        } else {
            [0.0; 4]
        };
        unsafe { shared_store_f32x4(q_tile + (4 * (r * row + 4 * c)) as u32, v) };
        i += THREADS;
    }

    // Running maximum and (this lane's part of the) sum per query row; the sink starts both.
    let sink = if sinks.is_null() { f32::NEG_INFINITY } else { unsafe { *sinks.add(head) } };
    let mut m = [sink; 4];
    let mut l = [if !sinks.is_null() && tk == 0 { 1.0f32 } else { 0.0 }; 4];
    // acc[i][c]: query 4tq + i, dims 4(tk + 8c)..+3.
    let mut acc = [[[0.0f32; 4]; 4]; 4];

    let mut tile = low / KEY_TILE * KEY_TILE;
    while tile < high {
        sync_threads(); // every thread is done with the previous tile
        let mut c = tid;
        while c < KEY_TILE * HD / 8 {
            let (key, piece) = (c / (HD / 8), c % (HD / 8));
            let position = tile + key;
            let page = if position >= low && position < high {
                unsafe { page_of(table_row, position, max_pages, n_pages) }
            } else {
                None
            };
            let (k, v) = match page {
                Some(page) => {
                    let at =
                        page_offset(page, kv_head, n_head_kv, HD) + position % PAGE_SIZE * HD + 8 * piece;
                    unsafe {
                        (
                            f16x8_to_f32(load_u16x8(key_pages.add(at))),
                            f16x8_to_f32(load_u16x8(value_pages.add(at))),
                        )
                    }
                }
                None => ([0.0; 8], [0.0; 8]),
            };
            let at = (4 * (key * row + 8 * piece)) as u32;
            unsafe {
                shared_store_f32x4(k_tile + at, [k[0], k[1], k[2], k[3]]);
                shared_store_f32x4(k_tile + at + 16, [k[4], k[5], k[6], k[7]]);
                shared_store_f32x4(v_tile + at, [v[0], v[1], v[2], v[3]]);
                shared_store_f32x4(v_tile + at + 16, [v[4], v[5], v[6], v[7]]);
            }
            c += THREADS;
        }
        sync_threads();

        let mut s = [[0.0f32; 4]; 4];
        let mut d = 0;
        while d < HD {
            let qv: [[f32; 4]; 4] = core::array::from_fn(|i| unsafe {
                shared_load_f32x4(q_tile + (4 * ((4 * tq + i) * row + d)) as u32)
            });
            let kv: [[f32; 4]; 4] = core::array::from_fn(|j| unsafe {
                shared_load_f32x4(k_tile + (4 * ((tk + 8 * j) * row + d)) as u32)
            });
            for i in 0..4 {
                for j in 0..4 {
                    s[i][j] = dot4(s[i][j], qv[i], kv[j]);
                }
            }
            d += 4;
        }

        let mut p = [[0.0f32; 4]; 4];
        unroll!([0, 1, 2, 3], |i| {
            let query = start + t0 + 4 * tq + i;
            for j in 0..4 {
                let key = tile + tk + 8 * j;
                let visible = key <= query && (window == 0 || key + window > query);
                s[i][j] = if visible { s[i][j] * scale } else { f32::NEG_INFINITY };
            }
            let row_max = max8(max(max(s[i][0], s[i][1]), max(s[i][2], s[i][3])));
            let new_max = max(m[i], row_max);
            // With nothing visible yet (new_max = -inf) the weights stay 0 and nothing changes.
            let finite = new_max != f32::NEG_INFINITY;
            let correction = if finite { exp(m[i] - new_max) } else { 1.0 };
            for j in 0..4 {
                p[i][j] = if finite { exp(s[i][j] - new_max) } else { 0.0 };
            }
            l[i] = l[i] * correction + (p[i][0] + p[i][1]) + (p[i][2] + p[i][3]);
            unroll!([0, 1, 2, 3], |c| {
                for e in 0..4 {
                    acc[i][c][e] *= correction;
                }
            });
            m[i] = new_max;
        });
        for j in 0..4 {
            let at = (4 * ((tk + 8 * j) * WEIGHT_ROW + 4 * tq)) as u32;
            unsafe { shared_store_f32x4(weights + at, [p[0][j], p[1][j], p[2][j], p[3][j]]) };
        }
        sync_threads();

        for key in 0..KEY_TILE {
            let w = unsafe { shared_load_f32x4(weights + (4 * (key * WEIGHT_ROW + 4 * tq)) as u32) };
            unroll!([0, 1, 2, 3], |c| {
                let quad = tk + 8 * c;
                if 8 * c < quads && quad < quads {
                    let v = unsafe { shared_load_f32x4(v_tile + (4 * (key * row + 4 * quad)) as u32) };
                    unroll!([0, 1, 2, 3], |i| {
                        for e in 0..4 {
                            acc[i][c][e] = fma(w[i], v[e], acc[i][c][e]);
                        }
                    });
                }
            });
        }
        tile += KEY_TILE;
    }

    unroll!([0, 1, 2, 3], |i| {
        let total = sum8(l[i]);
        let r = 4 * tq + i;
        if r < rows {
            let inverse = if total > 0.0 { 1.0 / total } else { 0.0 };
            unroll!([0, 1, 2, 3], |c| {
                let quad = tk + 8 * c;
                if 8 * c < quads && quad < quads {
                    let a = acc[i][c];
                    let o = [a[0] * inverse, a[1] * inverse, a[2] * inverse, a[3] * inverse];
                    unsafe { store_f32x4(out.add((t0 + r) * q_stride + head * HD + 4 * quad), o) };
                }
            });
        }
    });
}

macro_rules! prefill_entry {
    ($($name:ident = $hd:literal),*) => {$(
        #[unsafe(no_mangle)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe extern "ptx-kernel" fn $name(
            q: *const f32,
            key_pages: *const u16,
            value_pages: *const u16,
            block_table: *const u32,
            start: *const u32,
            sinks: *const f32,
            out: *mut f32,
            seq: u32,
            n_tokens: u32,
            n_head: u32,
            n_head_kv: u32,
            n_pages: u32,
            max_pages: u32,
            window: u32,
            scale: f32,
        ) {
            unsafe {
                attention_prefill::<$hd>(
                    q, key_pages, value_pages, block_table, start, sinks, out, seq, n_tokens, n_head,
                    n_head_kv, n_pages, max_pages, window, scale,
                )
            }
        }
    )*};
}

prefill_entry!(
    attention_prefill_hd64 = 64,
    attention_prefill_hd80 = 80,
    attention_prefill_hd96 = 96,
    attention_prefill_hd128 = 128
);
