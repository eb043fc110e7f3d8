//! 8-bit quantization of activations, for integer dot products with quantized weights.
//!
//! Math, per block of 32 values: amax = max |x|, d = amax / 127, q = round-half-even(x * 127 / amax)
//! (0 when amax = 0), s = d * sum(q); d and s are rounded to f16 and stored as f32 (the Q8_1 format
//! as llama.cpp's x86 CPU path computes it, so that GPU and CPU see the same integers).
//! Layout: x [n] f32 -> q [n] i8, d [n / 32] f32, s [n / 32] f32. n a multiple of 32.
//! Launch: any grid of warps: warp w of the grid quantizes blocks w, w + warps, ...; 256 threads.
//! Cost: reads 4 n bytes, writes 1.25 n: negligible beside a matrix.

use crate::device::{
    WARP_SIZE, f16_to_f32, f32_to_f16, global_idx, grid_size, lane_idx, round_to_i32, warp_max, warp_sum,
};

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn quantize_q8_1(x: *const f32, q: *mut i8, d: *mut f32, s: *mut f32, n: u32) {
    let blocks = n as usize / 32;
    let warps = grid_size() / WARP_SIZE;
    let mut block = global_idx() / WARP_SIZE;
    while block < blocks {
        let i = 32 * block + lane_idx();
        let v = unsafe { *x.add(i) };
        let amax = warp_max(v.abs());
        let scale = amax / 127.0;
        let inverse = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let qi = round_to_i32(v * inverse);
        let sum = warp_sum(qi as f32);
        unsafe { *q.add(i) = qi as i8 };
        if lane_idx() == 0 {
            unsafe {
                *d.add(block) = f16_to_f32(f32_to_f16(scale));
                *s.add(block) = f16_to_f32(f32_to_f16(scale * sum));
            }
        }
        block += warps;
    }
}
