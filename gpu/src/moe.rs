//! Mixture of experts: products with expert-indexed matrices, W [n_expert, rows, n_in] stored as
//! one MXFP4 matrix of n_expert * rows rows (the layout of gemv_mxfp4.rs; expert e's rows are
//! e rows..(e + 1) rows), biases [n_expert, rows] f32.
//!
//! Decode (`gemv_mxfp4_q8_experts`): for the k experts a token selected, ids [k] u32 read from
//! device memory (so that a captured graph replays with whatever the router wrote),
//!   y[j, r] = W[ids[j], r, :] . x_j (+ bias[ids[j], r]),   j < k, r < rows,
//! x_j one vector for every j (gate and up) or row j of [k, n_in] (down), as 8-bit activations.
//! Launch: a warp per output row (k rows rows in all), 8 warps per block; each row as in
//! gemv_mxfp4.rs. Cost: the k selected experts' bytes once.
//!
//! Prefill: `moe_route` groups the T k assignments (a = t k + j: token t's j-th expert) by
//! expert: offsets [n_expert + 1] (expert e's assignments are order[offsets[e]..offsets[e + 1]])
//! and order [T k] (the assignments, grouped; within an expert in no fixed order, which changes
//! no result: every output row is computed on its own). Launch: one block of 1024 threads,
//! 8 n_expert bytes of dynamic shared memory (counts, then cursors).
//! `gemm_mxfp4_experts` then computes, for every assignment a of expert e,
//!   Y[a, :] = W[e] X[a / x_div, :] (+ bias[e])
//! (x_div = k: X [T, n_in], one row per token, for gate and up; x_div = 1: X [T k, n_in] for
//! down), in one launch: block (i, bn) takes the i-th 128-assignment tile in expert order (the
//! tiles of expert e follow those of e - 1; blocks past the last tile exit) and outputs 128 bn..;
//! X rows are gathered into the tile by `cp.async` and Y rows scattered at the store. The tensor
//! core product is gemm.rs's (phased, narrow layout; a tile of at most 64 assignments computes
//! only its first 64 rows: at T = 512 and 4 of 32 experts most tiles hold ~64). Each expert's weights are read from DRAM
//! once per column tile and step (the blocks of one expert run together, bi fastest), so a
//! prefill step reads every expert once, however many tokens chose it.

use crate::device::{
    WARP_SIZE, block_dim, block_idx, block_idx_y, dynamic_shared_address, exp, global_idx, grid_dim,
    grid_size, lane_idx, shared_atomic_add_u32, shared_load_u32, shared_store_u32, shuffle_xor, sync_threads,
    thread_idx, warp_idx, warp_max, warp_sum,
};
use crate::matmul::gemm::{GatherCopy, Mxfp4, TILE_M, TILE_N, gemm_phased_tile};
use crate::matmul::gemv::WARPS_PER_BLOCK;
use crate::matmul::gemv_mxfp4::mxfp4_row;
use crate::matmul::quantize::quantize_block;

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemv_mxfp4_q8_experts(
    quants: *const u8,
    exponents: *const u8,
    bias: *const f32,
    ids: *const u32,
    xq: *const u8,
    xd: *const f32,
    y: *mut f32,
    n_in: u32,
    rows: u32,
    slots: u32,
    n_expert: u32,
    x_per_slot: u32,
) {
    let (n_in, rows, slots) = (n_in as usize, rows as usize, slots as usize);
    let blocks = n_in / 32;
    let mut g = block_idx() * WARPS_PER_BLOCK + warp_idx();
    while g < slots * rows {
        let (slot, r) = (g / rows, g % rows);
        let expert = unsafe { *ids.add(slot) };
        // An id out of range would read past the matrix: the row is NaN instead.
        let mut value = f32::NAN;
        if expert < n_expert {
            let row = expert as usize * rows + r;
            let x = if x_per_slot != 0 { slot * n_in } else { 0 };
            let dot = unsafe {
                mxfp4_row(
                    quants.add(16 * row * blocks),
                    exponents.add(row * blocks),
                    xq.add(x),
                    xd.add(x / 32),
                    blocks,
                )
            };
            value = warp_sum(dot) + if bias.is_null() { 0.0 } else { unsafe { *bias.add(row) } };
        }
        if lane_idx() == 0 {
            unsafe { *y.add(g) = value };
        }
        g += grid_dim() * WARPS_PER_BLOCK;
    }
}

/// Groups assignments by expert (see the module notes). Ids of n_expert or more are left out of
/// every group.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn moe_route(
    ids: *const u32,
    assignments: u32,
    n_expert: u32,
    offsets: *mut u32,
    order: *mut u32,
) {
    let (assignments, n_expert) = (assignments as usize, n_expert as usize);
    let shared = dynamic_shared_address();
    let count = |e: usize| shared + 4 * e as u32;
    let cursor = |e: usize| shared + 4 * (n_expert + e) as u32;
    let mut e = thread_idx();
    while e < n_expert {
        unsafe { shared_store_u32(count(e), 0) };
        e += block_dim();
    }
    sync_threads();
    let mut a = thread_idx();
    while a < assignments {
        let e = unsafe { *ids.add(a) } as usize;
        if e < n_expert {
            unsafe { shared_atomic_add_u32(count(e), 1) };
        }
        a += block_dim();
    }
    sync_threads();
    if thread_idx() == 0 {
        let mut sum = 0u32;
        for e in 0..n_expert {
            unsafe {
                *offsets.add(e) = sum;
                shared_store_u32(cursor(e), sum);
                sum += shared_load_u32(count(e));
            }
        }
        unsafe { *offsets.add(n_expert) = sum };
    }
    sync_threads();
    let mut a = thread_idx();
    while a < assignments {
        let e = unsafe { *ids.add(a) } as usize;
        if e < n_expert {
            let at = unsafe { shared_atomic_add_u32(cursor(e), 1) };
            unsafe { *order.add(at as usize) = a as u32 };
        }
        a += block_dim();
    }
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn gemm_mxfp4_experts(
    x: *const u16,
    quants: *const u8,
    exponents: *const u8,
    bias: *const f32,
    offsets: *const u32,
    order: *const u32,
    y: *mut f32,
    n_in: u32,
    rows: u32,
    n_expert: u32,
    x_div: u32,
) {
    let (n_in, rows) = (n_in as usize, rows as usize);
    // Which expert, and which of its tiles, this block takes (the same for the whole block).
    let tile = block_idx();
    let (mut expert, mut before) = (0usize, 0usize);
    let (mut begin, mut count) = (0usize, 0usize);
    let mut found = false;
    while expert < n_expert as usize {
        let (start, end) = unsafe { (*offsets.add(expert) as usize, *offsets.add(expert + 1) as usize) };
        let tiles = (end - start).div_ceil(TILE_M);
        if tile < before + tiles {
            begin = start + TILE_M * (tile - before);
            count = (end - begin).min(TILE_M);
            found = true;
            break;
        }
        before += tiles;
        expert += 1;
    }
    if !found {
        return;
    }
    let blocks = n_in / 32;
    let w = Mxfp4 {
        quants: unsafe { quants.add(16 * expert * rows * blocks) },
        exponents: unsafe { exponents.add(expert * rows * blocks) },
        n_in,
    };
    let bias = if bias.is_null() { bias } else { unsafe { bias.add(expert * rows) } };
    let assignment = move |m: usize| {
        if m < count { Some(unsafe { *order.add(begin + m) } as usize) } else { None }
    };
    let x_div = x_div as usize;
    let x_copy = GatherCopy::new(x, n_in, |r| assignment(r).map(|a| a / x_div));
    let tile = (0, block_idx_y() * TILE_N);
    // A tile of at most 64 assignments (an expert with few tokens, or the last tile of one)
    // multiplies only its first 64 rows.
    if count <= TILE_M / 2 {
        unsafe { gemm_phased_tile::<_, 2, false>(x_copy, w, bias, y, (n_in, rows), assignment, tile) };
    } else {
        unsafe { gemm_phased_tile::<_, 4, false>(x_copy, w, bias, y, (n_in, rows), assignment, tile) };
    }
}

// ---- the router and the experts' activation and sum (gpt-oss) -----------------------------------

/// Most experts `moe_top_k` takes: 8 per lane.
pub const MAX_EXPERTS_TOP_K: usize = 8 * WARP_SIZE;

/// The router's choice for each of `n_tokens` tokens: the k largest of logits [t, n_expert]
/// (ties, -0.0 and 0.0 included: the lower expert; NaN counts as -infinity), largest first, into ids [t, k], and the
/// softmax over those k logits only into weights [t, k]. k <= 32 and k <= n_expert <= 256.
/// Launch: a warp per token (any grid of warps).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn moe_top_k(
    logits: *const f32,
    ids: *mut u32,
    weights: *mut f32,
    n_expert: u32,
    k: u32,
    n_tokens: u32,
) {
    let (n_expert, k, lane) = (n_expert as usize, k as usize, lane_idx());
    let warps = grid_size() / WARP_SIZE;
    let mut t = global_idx() / WARP_SIZE;
    while t < n_tokens as usize {
        let row = unsafe { logits.add(t * n_expert) };
        // Lane l holds experts l, l + 32, ...; bit m of `taken`: expert l + 32 m is chosen.
        let mut taken = 0u32;
        let (mut mine, mut my_id) = (f32::NEG_INFINITY, 0u32);
        for j in 0..k {
            let (mut best, mut id) = (f32::NEG_INFINITY, u32::MAX);
            let mut m = 0;
            while lane + 32 * m < n_expert {
                let e = lane + 32 * m;
                let x = unsafe { *row.add(e) };
                let x = if x.is_nan() { f32::NEG_INFINITY } else { x };
                if taken & (1 << m) == 0 && (id == u32::MAX || x > best) {
                    (best, id) = (x, e as u32);
                }
                m += 1;
            }
            // The warp's largest, the lower id on ties (a lane with nothing left offers u32::MAX).
            let mut mask = 16;
            while mask > 0 {
                let other = shuffle_xor(best, mask);
                let other_id = shuffle_xor(f32::from_bits(id), mask).to_bits();
                if other_id != u32::MAX
                    && (id == u32::MAX || other > best || (other == best && other_id < id))
                {
                    (best, id) = (other, other_id);
                }
                mask /= 2;
            }
            if id as usize % 32 == lane {
                taken |= 1 << (id as usize / 32);
            }
            if j == lane {
                (mine, my_id) = (best, id);
            }
        }
        let top = warp_max(mine);
        let e = if lane < k { exp(mine - top) } else { 0.0 };
        let total = warp_sum(e);
        if lane < k {
            unsafe {
                *ids.add(t * k + lane) = my_id;
                *weights.add(t * k + lane) = e / total;
            }
        }
        t += warps;
    }
}

/// gpt-oss's clamped SwiGLU over `slots` rows of gate_up [slots, 2 n] (each row: gate (n), then
/// up (n), as the stacked expert matrix writes them): with g = min(gate, limit) and
/// u = clamp(up, -limit, limit), act = g sigmoid(alpha g) (u + 1), into `out` [slots, n] when not
/// null, and quantized as by `quantize_q8_1` (blocks of 32 over the slots n values) when `q` is
/// not null. n a multiple of 32. Launch: any grid of warps.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "ptx-kernel" fn swiglu_oai_q8_1(
    gate_up: *const f32,
    out: *mut f32,
    q: *mut i8,
    d: *mut f32,
    s: *mut f32,
    n: u32,
    slots: u32,
    alpha: f32,
    limit: f32,
) {
    let n = n as usize;
    let per_slot = n / 32;
    let warps = grid_size() / WARP_SIZE;
    let mut block = global_idx() / WARP_SIZE;
    while block < slots as usize * per_slot {
        let (slot, i) = (block / per_slot, (block % per_slot) * 32 + lane_idx());
        let gate = unsafe { *gate_up.add(2 * n * slot + i) };
        let up = unsafe { *gate_up.add(2 * n * slot + n + i) };
        let g = if gate > limit { limit } else { gate };
        let u = if up > limit {
            limit
        } else if up < -limit {
            -limit
        } else {
            up
        };
        let v = g / (1.0 + exp(-alpha * g)) * (u + 1.0);
        if !out.is_null() {
            unsafe { *out.add(n * slot + i) = v };
        }
        if !q.is_null() {
            unsafe { quantize_block(v, block, q, d, s) };
        }
        block += warps;
    }
}

/// out[t, i] = sum over j < k of weights[t k + j] y[t k + j, i]: each token's experts' outputs
/// [n_tokens k, dim] weighted by the router and summed (j in order). Launch: any grid.
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn moe_weighted_sum(
    y: *const f32,
    weights: *const f32,
    out: *mut f32,
    dim: u32,
    k: u32,
    n_tokens: u32,
) {
    let (dim, k) = (dim as usize, k as usize);
    let mut g = global_idx();
    while g < n_tokens as usize * dim {
        let (t, i) = (g / dim, g % dim);
        let mut sum = 0.0f32;
        for j in 0..k {
            sum += unsafe { *weights.add(t * k + j) * *y.add((t * k + j) * dim + i) };
        }
        unsafe { *out.add(g) = sum };
        g += grid_size();
    }
}
