//! The engine's GPU kernels, compiled by rustc's NVPTX back end into one PTX module.
//!
//! Every entry point is `#[unsafe(no_mangle)] extern "ptx-kernel"`; its name is what `host/`
//! loads. Kernels that read weights come in one entry point per storage type, suffixed `_f32`,
//! `_f16` and `_bf16`. Each kernel family opens with its math, memory layout, launch shape and cost.
#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch, stmt_expr_attributes)]
#![allow(clippy::missing_safety_doc)]

pub mod activation;
pub mod attention;
pub mod device;
pub mod element;
pub mod embedding;
pub mod matmul;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod sampling;
pub mod softmax;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Kernels are written not to panic (no slice indexing, no unwrap); if one ever does, trap so
    // that the launch fails with an error instead of hanging.
    unsafe { core::arch::asm!("trap;") };
    loop {}
}
