#![no_std]
#![feature(abi_ptx, stdarch_nvptx, asm_experimental_arch)]
use core::arch::asm;
use core::arch::nvptx::*;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[inline(always)]
unsafe fn shared_scratch() -> *mut f32 {
    let p: u64;
    unsafe {
        asm!(".shared .align 16 .b8 scratch_x[128];", "cvta.shared.u64 {p}, scratch_x;", p = out(reg64) p);
    }
    p as *mut f32
}

#[inline(always)]
unsafe fn dyn_shared() -> *mut f32 {
    let p: u64;
    unsafe {
        asm!("cvta.shared.u64 {p}, dyn_smem;", p = out(reg64) p);
    }
    p as *mut f32
}
core::arch::global_asm!(".extern .shared .align 16 .b8 dyn_smem[];");

#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn add_one(x: *mut f32, n: u32) {
    unsafe {
        let i = _block_idx_x() * _block_dim_x() + _thread_idx_x();
        let s = shared_scratch();
        let d = dyn_shared();
        *s.add(_thread_idx_x() as usize % 32) = 1.0;
        *d.add(_thread_idx_x() as usize) = 2.0;
        _syncthreads();
        if (i as u32) < n {
            *x.add(i as usize) += *s + *d;
        }
    }
}
#[unsafe(no_mangle)]
pub unsafe extern "ptx-kernel" fn add_two(x: *mut f32, n: u32) {
    unsafe {
        let i = _block_idx_x() * _block_dim_x() + _thread_idx_x();
        let s = shared_scratch();
        *s.add(_thread_idx_x() as usize % 32) = 1.0;
        _syncthreads();
        if (i as u32) < n {
            *x.add(i as usize) += *s;
        }
    }
}
