//! Element-wise activations and the residual add.
//!
//! Math: gelu_erf(x) = x/2 * (1 + erf(x/sqrt(2)));
//!       gelu_tanh(x) = x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)));
//!       silu(x) = x / (1 + exp(-x));  swiglu(gate, up) = silu(gate) * up;
//!       residual_add: x += y.
//! Layout: flat f32 arrays of n elements; out may alias an input.
//! Launch: any grid (grid-stride loop); 256 threads and enough blocks to fill the GPU (about 4 per
//! SM per 256 threads) is right for large n. Eight elements per thread per step with 16-byte
//! accesses when every pointer is 16-byte aligned, one at a time otherwise.
//! Cost: 8 bytes per element (unary) or 12 (binary); memory-bound on any GPU.

use crate::device::{erf, exp, global_idx, grid_size, is_aligned_16, tanh};
use crate::element::{load8_f32, map8, store8_f32};

/// out[i] = f(a[i], b[i]) for i < n. `b` may be null for a unary function (it then reads zeros).
#[inline(always)]
unsafe fn elementwise(a: *const f32, b: *const f32, out: *mut f32, n: usize, f: impl Fn(f32, f32) -> f32) {
    let unary = b.is_null();
    let aligned = is_aligned_16(a) && is_aligned_16(out) && (unary || is_aligned_16(b));
    let mut start = 0;
    if aligned {
        let groups = n / 8;
        let mut g = global_idx();
        while g < groups {
            let i = g * 8;
            let x = unsafe { load8_f32(a, i) };
            let y = if unary { [0.0; 8] } else { unsafe { load8_f32(b, i) } };
            unsafe { store8_f32(out, i, map8(x, y, [0.0; 8], |x, y, _| f(x, y))) };
            g += grid_size();
        }
        start = groups * 8;
    }
    let mut i = start + global_idx();
    while i < n {
        let y = if unary { 0.0 } else { unsafe { *b.add(i) } };
        unsafe { *out.add(i) = f(*a.add(i), y) };
        i += grid_size();
    }
}

#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * core::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + tanh(SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gelu_erf_f32(x: *const f32, out: *mut f32, n: u64) {
    unsafe { elementwise(x, core::ptr::null(), out, n as usize, |x, _| gelu_erf(x)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn gelu_tanh_f32(x: *const f32, out: *mut f32, n: u64) {
    unsafe { elementwise(x, core::ptr::null(), out, n as usize, |x, _| gelu_tanh(x)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn silu_f32(x: *const f32, out: *mut f32, n: u64) {
    unsafe { elementwise(x, core::ptr::null(), out, n as usize, |x, _| silu(x)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn swiglu_f32(gate: *const f32, up: *const f32, out: *mut f32, n: u64) {
    unsafe { elementwise(gate, up, out, n as usize, |g, u| silu(g) * u) }
}

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn residual_add_f32(x: *mut f32, y: *const f32, n: u64) {
    unsafe { elementwise(x, y, x, n as usize, |x, y| x + y) }
}
