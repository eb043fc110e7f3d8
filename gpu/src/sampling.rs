//! Choosing one token per row of logits on the GPU: greedy (`argmax_rows`) and the CPU sampler's
//! top-k, top-p, min-p and temperature draw (`sample_rows`, engine/src/sampler/mod.rs), so that a
//! batched decode step copies back one u32 per row instead of [rows, n_vocab] logits.
//!
//! Math, as the CPU sampler (penalties are the caller's, applied to the logits before): NaN counts
//! as -inf and is never chosen, +inf as f32::MAX. The candidates are ordered most likely first:
//! descending logit (in `total_cmp` order, so 0.0 before -0.0), then ascending id. Every filter
//! keeps a prefix of that order, so the surviving set is always a *cut* (key, id): the tokens
//! ranked at or before one token. With M the largest logit:
//! - greedy (temperature <= 0): the first index of the largest logit (numeric compare, so -0.0 and
//!   0.0 tie); a row with no logit above -inf gives 0, as `engine::generate::argmax` does.
//! - top-k (k > 0): the first k in order.
//! - top-p (p < 1): with w = e^(v - M) over the survivors, the first of them whose running mass,
//!   in order, reaches p sum(w) (at least one token).
//! - min-p (> 0): the survivors with v >= M + ln(min_p) (in f64); min_p > 1 keeps the first only.
//! - the draw: with w = e^((v - M) / T) over the survivors, the first whose running mass, in
//!   order, is strictly above uniform sum(w); none (rounding, or uniform >= 1) gives the first.
//!
//! Finding a cut without sorting: over the order key of each logit (its f32 bits mapped so that
//! unsigned order is `total_cmp` order), a radix descent, 4 bits a level, 8 levels: each level is
//! one pass over the row that sums the quantity (1 for top-k, w for top-p and the draw) of the
//! survivors that match the key prefix found so far into 16 buckets by the next digit; walking the
//! buckets from the top fixes the digit where the running quantity crosses the target. Ties (tokens
//! of the crossing key) are resolved by the count that still fits, and, where that is not all of
//! them, a second descent over the ids. Sums are f32 and in a different order from the CPU's f64
//! walk, so GPU and CPU may choose neighbouring tokens where the running mass lands within about
//! 1e-6 (relative) of a boundary: the top-p cut, or uniform sum(w) in the draw.
//!
//! Layout: logits [rows, n] row-major f32; settings [rows] of [`RowSampling`]; out [rows] u32.
//! Launch: grid = rows, one block per row, 64 to 1024 threads (a multiple of 32; sample_rows at most
//! 512, as it takes 72 registers a thread).
//! Cost: greedy reads the row once. A draw reads it once for the maximum, then 8 passes for each
//! of top-k, top-p and the draw (plus one to three for ties): up to ~27 passes, from L2 where the
//! rows fit (a 201,088-token row is 804 KB). Each pass does a 16-way bucket add per surviving
//! token; tokens outside the cut cost a load and a compare.

use crate::device::{
    WARP_SIZE, block_dim, block_idx, block_max, block_sum, exp, lane_idx, shared_load_f32, shared_load_u32,
    shared_store_f32, shared_store_u32, shuffle_xor, sync_threads, thread_idx, warp_idx, warp_sum,
};
use crate::unroll;

/// One row's settings (the host's `host::sampling::RowSampling`, same layout).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RowSampling {
    /// <= 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// >= 1: off.
    pub top_p: f32,
    /// <= 0: off.
    pub min_p: f32,
    /// The draw, in [0, 1).
    pub uniform: f32,
}

// Per-warp partial buckets (32 warps x 16 words), per-warp non-empty masks (32 words), then the
// block's 16 buckets and mask (17 words).
core::arch::global_asm!(".shared .align 16 .b8 sampling_scratch[2256];");
const PARTIAL_MASKS: u32 = 4 * 32 * 16;
const RESULT: u32 = PARTIAL_MASKS + 4 * 32;

#[inline(always)]
fn scratch() -> u32 {
    let a: u32;
    unsafe {
        core::arch::asm!("mov.u32 {a}, sampling_scratch;", a = out(reg32) a, options(pure, nomem, nostack))
    };
    a
}

/// The order key of -inf; every candidate's key is above it.
const NEG_INFINITY_KEY: u32 = order_key(f32::NEG_INFINITY);

/// NaN as -inf, +inf as f32::MAX (the CPU sampler's `clean`).
#[inline(always)]
fn clean(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else if v == f32::INFINITY {
        f32::MAX
    } else {
        v
    }
}

/// The f32's bits mapped so that unsigned order is `f32::total_cmp` order.
#[inline(always)]
const fn order_key(v: f32) -> u32 {
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 { !bits } else { bits | 0x8000_0000 }
}

/// The f32 of an order key.
#[inline(always)]
fn key_value(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 { f32::from_bits(key & 0x7fff_ffff) } else { f32::from_bits(!key) }
}

/// The tokens ranked at or before (key, id): key above, or key equal and id at most.
#[derive(Clone, Copy)]
struct Cut {
    key: u32,
    id: u32,
}

impl Cut {
    /// Every token above -inf.
    const ALL: Cut = Cut { key: NEG_INFINITY_KEY + 1, id: u32::MAX };

    #[inline(always)]
    fn contains(self, key: u32, id: u32) -> bool {
        key > self.key || (key == self.key && id <= self.id)
    }

    /// Larger is earlier in the order: the shorter of two cuts has the larger rank.
    #[inline(always)]
    fn rank(self) -> u64 {
        ((self.key as u64) << 32) | !self.id as u64
    }
}

#[inline(always)]
fn shuffle_xor_u32(value: u32, mask: u32) -> u32 {
    shuffle_xor(f32::from_bits(value), mask).to_bits()
}

/// The largest of one u64 per thread, to every thread. Every thread must call it.
#[inline(always)]
fn block_max_u64(mut value: u64) -> u64 {
    let mut mask = 16;
    while mask > 0 {
        let high = shuffle_xor_u32((value >> 32) as u32, mask);
        let low = shuffle_xor_u32(value as u32, mask);
        value = value.max(((high as u64) << 32) | low as u64);
        mask /= 2;
    }
    let base = scratch();
    sync_threads();
    if lane_idx() == 0 {
        unsafe {
            shared_store_u32(base + 8 * warp_idx() as u32, (value >> 32) as u32);
            shared_store_u32(base + 8 * warp_idx() as u32 + 4, value as u32);
        }
    }
    sync_threads();
    let mut best = 0u64;
    for w in 0..block_dim() / WARP_SIZE {
        let (high, low) =
            unsafe { (shared_load_u32(base + 8 * w as u32), shared_load_u32(base + 8 * w as u32 + 4)) };
        best = best.max(((high as u64) << 32) | low as u64);
    }
    best
}

/// Sums 16 buckets and ORs a mask across the block; the buckets are left at `RESULT` (words 0 to
/// 15) and the mask returned. Every thread must call it.
#[inline(always)]
fn block_buckets(local: [f32; 16], mut mask: u32) -> u32 {
    let base = scratch();
    let mut partial = [0.0f32; 16];
    unroll!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], |b| {
        partial[b] = warp_sum(local[b]);
    });
    let mut m = 16;
    while m > 0 {
        mask |= shuffle_xor_u32(mask, m);
        m /= 2;
    }
    sync_threads();
    if lane_idx() == 0 {
        let warp = warp_idx() as u32;
        unroll!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], |b| {
            unsafe { shared_store_f32(base + 4 * (16 * warp + b as u32), partial[b]) };
        });
        unsafe { shared_store_u32(base + PARTIAL_MASKS + 4 * warp, mask) };
    }
    sync_threads();
    let (t, warps) = (thread_idx() as u32, (block_dim() / WARP_SIZE) as u32);
    if t < 16 {
        let mut sum = 0.0f32;
        for w in 0..warps {
            sum += unsafe { shared_load_f32(base + 4 * (16 * w + t)) };
        }
        unsafe { shared_store_f32(base + RESULT + 4 * t, sum) };
    } else if t == 16 {
        let mut all = 0u32;
        for w in 0..warps {
            all |= unsafe { shared_load_u32(base + PARTIAL_MASKS + 4 * w) };
        }
        unsafe { shared_store_u32(base + RESULT + 64, all) };
    }
    sync_threads();
    unsafe { shared_load_u32(base + RESULT + 64) }
}

/// Bucket `digit` of the last [`block_buckets`].
#[inline(always)]
fn bucket(digit: u32) -> f32 {
    unsafe { shared_load_f32(scratch() + RESULT + 4 * digit) }
}

/// Radix descent over the elements 0..n for which `element` gives (sort key, value), in descending
/// key order (keys distinct or not): the key of the first element whose running `quantity`
/// crosses the target (`target(total)`; above it when `strict`, at least it otherwise), with the
/// quantity of the elements of larger keys and the target; None when the total does not cross.
#[inline(always)]
fn radix_select(
    n: usize,
    element: impl Fn(usize) -> Option<(u32, f32)>,
    quantity: impl Fn(f32) -> f32,
    target: impl Fn(f32) -> f32,
    strict: bool,
) -> Option<(u32, f32, f32)> {
    let (mut prefix, mut above, mut goal) = (0u32, 0.0f32, 0.0f32);
    let mut shift = 28u32;
    loop {
        let high = if shift == 28 { 0 } else { !0u32 << (shift + 4) };
        let mut local = [0.0f32; 16];
        let mut mask = 0u32;
        let mut i = thread_idx();
        while i < n {
            if let Some((key, value)) = element(i)
                && key & high == prefix
            {
                let digit = (key >> shift) & 15;
                let q = quantity(value);
                mask |= 1 << digit;
                unroll!([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], |b| {
                    if digit == b as u32 {
                        local[b] += q;
                    }
                });
            }
            i += block_dim();
        }
        let nonempty = block_buckets(local, mask);
        if nonempty == 0 {
            return None; // no element at all (deeper levels always hold the chosen one)
        }
        if shift == 28 {
            let mut total = 0.0f32;
            for d in 0..16 {
                total += bucket(d);
            }
            goal = target(total);
        }
        let crosses = |mass: f32| if strict { mass > goal } else { mass >= goal };
        let mut chosen = 16u32;
        let mut d = 16u32;
        while d > 0 {
            d -= 1;
            if nonempty & (1 << d) != 0 {
                let mass = bucket(d);
                if crosses(above + mass) {
                    chosen = d;
                    break;
                }
                above += mass;
            }
        }
        if chosen == 16 {
            if shift == 28 {
                return None;
            }
            // This level's sums fell short of the last level's by rounding: the crossing element is
            // the last of the chosen bucket.
            chosen = nonempty.trailing_zeros();
            above -= bucket(chosen);
        }
        prefix |= chosen << shift;
        if shift == 0 {
            return Some((prefix, above, goal));
        }
        shift -= 4;
    }
}

/// The cut at the first token of `cut` (in order) whose running `quantity` crosses the target
/// (see [`radix_select`]), ties resolved by id; None when the total does not cross.
#[inline(always)]
fn select_cut(
    row: *const f32,
    n: usize,
    cut: Cut,
    quantity: impl Fn(f32) -> f32 + Copy,
    target: impl Fn(f32) -> f32,
    strict: bool,
) -> Option<Cut> {
    let element = |i: usize| {
        let v = clean(unsafe { *row.add(i) });
        let key = order_key(v);
        if cut.contains(key, i as u32) { Some((key, v)) } else { None }
    };
    let (key, above, goal) = radix_select(n, element, quantity, target, strict)?;
    // The tokens of the crossing key: how many, the largest id, and how many of them, in id
    // order, it takes to cross.
    let (mut count, mut last) = (0.0f32, 0.0f32);
    let mut i = thread_idx();
    while i < n {
        if let Some((k, _)) = element(i)
            && k == key
        {
            count += 1.0;
            last = i as f32; // ids below 2^24 are exact in f32
        }
        i += block_dim();
    }
    let (count, last) = (block_sum(count), block_max(last));
    let weight = quantity(key_value(key));
    let needed = (goal - above) / weight;
    let floor = needed as u32; // saturating: negative and NaN give 0
    let exact = !strict && (floor as f32) >= needed;
    let needed = if exact { floor } else { floor.saturating_add(1) };
    let needed = needed.max(1);
    if needed as f32 >= count {
        return Some(Cut { key, id: last as u32 });
    }
    // The needed-th lowest id among the ties: a descent over !id, descending.
    let tie = |i: usize| match element(i) {
        Some((k, v)) if k == key => Some((!(i as u32), v)),
        _ => None,
    };
    let (inverted, _, _) = radix_select(n, tie, |_| 1.0, |_| needed as f32, false)?;
    Some(Cut { key, id: !inverted })
}

/// The row's first token in order (largest total_cmp key, lowest id) and its greedy choice
/// (largest numeric value, lowest id), as ranks ((key << 32) | !id). Every thread must call it.
#[inline(always)]
fn row_best(row: *const f32, n: usize) -> (u64, u64) {
    let (mut best, mut greedy) = (0u64, 0u64);
    let mut i = thread_idx();
    while i < n {
        let v = clean(unsafe { *row.add(i) });
        let id = !(i as u32) as u64;
        best = best.max(((order_key(v) as u64) << 32) | id);
        // v + 0.0 turns -0.0 into 0.0, so that the two zeros tie.
        greedy = greedy.max(((order_key(v + 0.0) as u64) << 32) | id);
        i += block_dim();
    }
    (block_max_u64(best), block_max_u64(greedy))
}

/// The id of a rank.
#[inline(always)]
fn rank_id(rank: u64) -> u32 {
    !(rank as u32)
}

/// out[r] = the first index of the largest logit of row r (NaN never wins, +inf as f32::MAX;
/// 0 for a row with nothing above -inf).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn argmax_rows(logits: *const f32, out: *mut u32, n: u32) {
    let n = n as usize;
    let row = unsafe { logits.add(block_idx() * n) };
    let (_, greedy) = row_best(row, n);
    if thread_idx() == 0 {
        unsafe { *out.add(block_idx()) = rank_id(greedy) };
    }
}

/// out[r] = the token drawn from row r with settings[r] (see the module notes).
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn sample_rows(
    logits: *const f32,
    settings: *const RowSampling,
    out: *mut u32,
    n: u32,
) {
    let n = n as usize;
    let row = unsafe { logits.add(block_idx() * n) };
    let s = unsafe { *settings.add(block_idx()) };
    let (best_rank, greedy) = row_best(row, n);
    let best = Cut { key: (best_rank >> 32) as u32, id: rank_id(best_rank) };
    let token = if s.temperature <= 0.0 || best.key <= NEG_INFINITY_KEY {
        rank_id(greedy)
    } else {
        draw(row, n, s, best)
    };
    if thread_idx() == 0 {
        unsafe { *out.add(block_idx()) = token };
    }
}

/// Top-k, top-p, min-p, then the draw, on a row whose first token in order is `best`.
#[inline(always)]
fn draw(row: *const f32, n: usize, s: RowSampling, best: Cut) -> u32 {
    let max = key_value(best.key);
    let mut cut = Cut::ALL;
    if s.top_k > 0 {
        let k = s.top_k as f32;
        if let Some(c) = select_cut(row, n, cut, |_| 1.0, |_| k, false) {
            cut = c;
        }
    }
    if s.top_p < 1.0 {
        let p = s.top_p;
        // At least the smallest positive target: p <= 0 keeps the first token.
        let target = |total: f32| {
            let t = p * total;
            if t > f32::MIN_POSITIVE { t } else { f32::MIN_POSITIVE }
        };
        if let Some(c) = select_cut(row, n, cut, |v| exp(v - max), target, false) {
            cut = c;
        }
    }
    if s.min_p > 0.0 {
        let floor = max as f64 + libm::log(s.min_p as f64);
        let min_p_cut = if floor > max as f64 {
            best
        } else {
            // The smallest f32 at or above the floor (both zeros, where that is 0).
            let f = floor as f32;
            let key = if (f as f64) < floor {
                order_key(f) + 1
            } else if f == 0.0 {
                order_key(-0.0)
            } else {
                order_key(f)
            };
            Cut { key, id: u32::MAX }
        };
        if min_p_cut.rank() > cut.rank() {
            cut = min_p_cut;
        }
    }
    let inverse_temperature = 1.0 / s.temperature;
    let uniform = s.uniform;
    // The largest logit weighs 1 even where 1 / T overflows.
    let weight = move |v: f32| {
        let below = v - max;
        if below == 0.0 { 1.0 } else { exp(below * inverse_temperature) }
    };
    match select_cut(row, n, cut, weight, |total| uniform * total, true) {
        Some(c) => c.id,
        None => best.id,
    }
}
