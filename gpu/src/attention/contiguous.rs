//! Attention for one new token over an f32 KV cache (decode), grouped-query heads.
//!
//! Math, for query head h at position p = len - 1: s_j = q_h . k_j / sqrt(head_dim) for j < len,
//! w = softmax(s), out_h = sum_j w_j v_j, with k_j, v_j from KV head h / (n_head / n_head_kv).
//! Layout: q, out [n_head, head_dim] f32; keys, values [capacity, n_head_kv, head_dim] f32.
//! The position (len - 1) is read from device memory, so that a captured CUDA graph of the decode
//! step replays unchanged from token to token.
//! Launch: grid = n_head, 128 threads; dynamic shared memory 4 bytes per cached position (the
//! capacity, fixed for the graph) for the scores.
//! Cost: reads len * head_dim * 8 bytes of cache per KV head group (once per query head: a first
//! version; flash-decoding with a split over positions and shared KV reads per group comes next).

use crate::device::{
    block_dim, block_idx, block_max, block_sum, dynamic_shared, exp, sync_threads, thread_idx,
};

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn attention_decode_f32(
    q: *const f32,
    keys: *const f32,
    values: *const f32,
    out: *mut f32,
    position: *const u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
) {
    let (head, len, head_dim) = (block_idx(), unsafe { *position } as usize + 1, head_dim as usize);
    let kv_head = head / (n_head / n_head_kv) as usize;
    let stride = n_head_kv as usize * head_dim;
    let q = unsafe { q.add(head * head_dim) };
    let scores = dynamic_shared::<f32>();
    let scale = 1.0 / crate::device::sqrt(head_dim as f32);

    let mut local_max = f32::NEG_INFINITY;
    let mut j = thread_idx();
    while j < len {
        let k = unsafe { keys.add(j * stride + kv_head * head_dim) };
        let mut s = 0.0f32;
        for d in 0..head_dim {
            s += unsafe { *q.add(d) * *k.add(d) };
        }
        let s = s * scale;
        unsafe { *scores.add(j) = s };
        local_max = crate::device::max(local_max, s);
        j += block_dim();
    }
    let max = block_max(local_max);
    let mut local_sum = 0.0f32;
    let mut j = thread_idx();
    while j < len {
        let w = exp(unsafe { *scores.add(j) } - max);
        unsafe { *scores.add(j) = w };
        local_sum += w;
        j += block_dim();
    }
    let inverse = 1.0 / block_sum(local_sum);
    sync_threads();
    let mut d = thread_idx();
    while d < head_dim {
        let mut acc = 0.0f32;
        for j in 0..len {
            acc += unsafe { *scores.add(j) * *values.add(j * stride + kv_head * head_dim + d) };
        }
        unsafe { *out.add(head * head_dim + d) = acc * inverse };
        d += block_dim();
    }
}

/// cache[position * row + i] = x[i] for i < row: the new token's keys or values into the cache, at
/// the position held in device memory. Launch: any grid, 256 threads (grid-stride over row).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn kv_write_f32(
    x: *const f32,
    cache: *mut f32,
    position: *const u32,
    row: u32,
) {
    let (row, base) = (row as usize, unsafe { *position } as usize * row as usize);
    let mut i = crate::device::global_idx();
    while i < row {
        unsafe { *cache.add(base + i) = *x.add(i) };
        i += crate::device::grid_size();
    }
}
