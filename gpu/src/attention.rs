//! Attention for one new token over a KV cache (decode), grouped-query heads.
//!
//! Math, for query head h at position p = len - 1: s_j = q_h . k_j / sqrt(head_dim) for j < len,
//! w = softmax(s), out_h = sum_j w_j v_j, with k_j, v_j from KV head h / (n_head / n_head_kv).
//! Layout: q, out [n_head, head_dim] f32; keys, values [capacity, n_head_kv, head_dim] f32.
//! Launch: grid = n_head, 128 threads; dynamic shared memory len * 4 bytes for the scores.
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
    len: u32,
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
) {
    let (head, len, head_dim) = (block_idx(), len as usize, head_dim as usize);
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
