//! Storage types of weights: f32, f16 and bf16, read as f32.

use crate::device::{bf16_to_f32, f16_to_f32, load_f32x4, load_u16x8};

/// An IEEE half, as its bits.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct F16(pub u16);

/// A bfloat16, as its bits.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Bf16(pub u16);

pub trait Weight: Copy {
    /// Element `i` of the array at `ptr`, as f32.
    unsafe fn load(ptr: *const Self, i: usize) -> f32;
    /// Elements `i..i + 8`, as f32, with 16-byte loads. `ptr + i` must be 16-byte aligned.
    unsafe fn load8(ptr: *const Self, i: usize) -> [f32; 8];
}

impl Weight for f32 {
    #[inline(always)]
    unsafe fn load(ptr: *const Self, i: usize) -> f32 {
        unsafe { *ptr.add(i) }
    }
    #[inline(always)]
    unsafe fn load8(ptr: *const Self, i: usize) -> [f32; 8] {
        let ([a, b, c, d], [e, f, g, h]) = unsafe { (load_f32x4(ptr.add(i)), load_f32x4(ptr.add(i + 4))) };
        [a, b, c, d, e, f, g, h]
    }
}

impl Weight for F16 {
    #[inline(always)]
    unsafe fn load(ptr: *const Self, i: usize) -> f32 {
        f16_to_f32(unsafe { (*ptr.add(i)).0 })
    }
    #[inline(always)]
    unsafe fn load8(ptr: *const Self, i: usize) -> [f32; 8] {
        let [a, b, c, d] = unsafe { load_u16x8(ptr.add(i) as *const u16) };
        halves_to_f32([a, b, c, d], f16_to_f32)
    }
}

impl Weight for Bf16 {
    #[inline(always)]
    unsafe fn load(ptr: *const Self, i: usize) -> f32 {
        bf16_to_f32(unsafe { (*ptr.add(i)).0 })
    }
    #[inline(always)]
    unsafe fn load8(ptr: *const Self, i: usize) -> [f32; 8] {
        let [a, b, c, d] = unsafe { load_u16x8(ptr.add(i) as *const u16) };
        halves_to_f32([a, b, c, d], bf16_to_f32)
    }
}

/// Eight 16-bit values packed in four words (low half first), converted with `convert`.
#[inline(always)]
fn halves_to_f32(words: [u32; 4], convert: fn(u16) -> f32) -> [f32; 8] {
    let [a, b, c, d] = words;
    let half = |w: u32, high: bool| convert(if high { (w >> 16) as u16 } else { w as u16 });
    [
        half(a, false),
        half(a, true),
        half(b, false),
        half(b, true),
        half(c, false),
        half(c, true),
        half(d, false),
        half(d, true),
    ]
}

/// f32 activations, eight at a time: two 16-byte loads.
#[inline(always)]
pub unsafe fn load8_f32(ptr: *const f32, i: usize) -> [f32; 8] {
    unsafe { <f32 as Weight>::load8(ptr, i) }
}

#[inline(always)]
pub unsafe fn store8_f32(ptr: *mut f32, i: usize, v: [f32; 8]) {
    unsafe {
        let [a, b, c, d, e, f, g, h] = v;
        crate::device::store_f32x4(ptr.add(i), [a, b, c, d]);
        crate::device::store_f32x4(ptr.add(i + 4), [e, f, g, h]);
    }
}

/// Emits one `ptx-kernel` entry point per weight storage type, named `<name>_f32`, `<name>_f16`
/// and `<name>_bf16`, each calling the generic body with that type. The argument list names the
/// weight type `W`; each entry point lives in a module where `W` is that type.
#[macro_export]
macro_rules! kernel_per_weight_type {
    ($body:ident ( $($arg:ident : $ty:ty),* $(,)? ) => $f32:ident, $f16:ident, $bf16:ident) => {
        $crate::kernel_per_weight_type!(@one $body, $f32, f32, $($arg: $ty),*);
        $crate::kernel_per_weight_type!(@one $body, $f16, $crate::element::F16, $($arg: $ty),*);
        $crate::kernel_per_weight_type!(@one $body, $bf16, $crate::element::Bf16, $($arg: $ty),*);
    };
    (@one $body:ident, $name:ident, $w:ty, $($arg:ident : $ty:ty),*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            type W = $w;
            #[unsafe(no_mangle)]
            pub unsafe extern "ptx-kernel" fn $name($($arg: $ty),*) {
                unsafe { super::$body::<W>($($arg),*) }
            }
        }
    };
}

/// `[f(a[k], b[k], c[k]) for k in 0..8]`, written out so that the arrays stay in registers
/// (array iterators and run-time indices put them in local memory).
#[inline(always)]
pub fn map8(a: [f32; 8], b: [f32; 8], c: [f32; 8], f: impl Fn(f32, f32, f32) -> f32) -> [f32; 8] {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
    let [b0, b1, b2, b3, b4, b5, b6, b7] = b;
    let [c0, c1, c2, c3, c4, c5, c6, c7] = c;
    [
        f(a0, b0, c0),
        f(a1, b1, c1),
        f(a2, b2, c2),
        f(a3, b3, c3),
        f(a4, b4, c4),
        f(a5, b5, c5),
        f(a6, b6, c6),
        f(a7, b7, c7),
    ]
}

/// `sum(f(a[k]) for k in 0..8)`, in registers.
#[inline(always)]
pub fn sum8(a: [f32; 8], f: impl Fn(f32) -> f32) -> f32 {
    let [a0, a1, a2, a3, a4, a5, a6, a7] = a;
    ((f(a0) + f(a1)) + (f(a2) + f(a3))) + ((f(a4) + f(a5)) + (f(a6) + f(a7)))
}
