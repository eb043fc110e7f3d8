//! Device-side support: the vocabulary kernels are written in (the role `cuda_std` plays for
//! CUDA C++). Thread and block indices, barriers, warp shuffles and reductions, block reductions,
//! dynamic shared memory, f16/bf16 conversions, 16-byte vector loads and stores, and the few
//! special functions the kernels need.

use core::arch::asm;
use core::arch::nvptx;

pub const WARP_SIZE: usize = 32;

/// `unroll!([0, 1, 2, 3], |i| { body })` runs the body once per listed index, written out: arrays
/// indexed by `i` in the body stay in registers even where LLVM would keep a loop (a loop that
/// indexes a register array puts the array in local memory).
#[macro_export]
macro_rules! unroll {
    ([$($k:literal),*], |$i:ident| $body:block) => { $( { let $i: usize = $k; $body } )* };
}

#[inline(always)]
pub fn thread_idx() -> usize {
    unsafe { nvptx::_thread_idx_x() as usize }
}

#[inline(always)]
pub fn block_idx() -> usize {
    unsafe { nvptx::_block_idx_x() as usize }
}

#[inline(always)]
pub fn block_idx_y() -> usize {
    unsafe { nvptx::_block_idx_y() as usize }
}

#[inline(always)]
pub fn block_idx_z() -> usize {
    unsafe { nvptx::_block_idx_z() as usize }
}

#[inline(always)]
pub fn grid_dim_z() -> usize {
    unsafe { nvptx::_grid_dim_z() as usize }
}

#[inline(always)]
pub fn grid_dim_y() -> usize {
    unsafe { nvptx::_grid_dim_y() as usize }
}

#[inline(always)]
pub fn block_dim() -> usize {
    unsafe { nvptx::_block_dim_x() as usize }
}

#[inline(always)]
pub fn grid_dim() -> usize {
    unsafe { nvptx::_grid_dim_x() as usize }
}

/// This thread's index in the whole grid along x.
#[inline(always)]
pub fn global_idx() -> usize {
    block_idx() * block_dim() + thread_idx()
}

/// Threads in the whole grid along x (the stride of a grid-stride loop).
#[inline(always)]
pub fn grid_size() -> usize {
    grid_dim() * block_dim()
}

#[inline(always)]
pub fn lane_idx() -> usize {
    thread_idx() % WARP_SIZE
}

#[inline(always)]
pub fn warp_idx() -> usize {
    thread_idx() / WARP_SIZE
}

/// `__syncthreads()`: a barrier for every thread of the block.
#[inline(always)]
pub fn sync_threads() {
    unsafe { nvptx::_syncthreads() }
}

/// `bar.sync ID, threads`: a barrier for the `threads` threads (whole warps) that name barrier
/// `ID` (1 to 15; 0 is [`sync_threads`]'s), so that groups of warps in a block wait only for each
/// other. The id is a constant so that ptxas reserves only the barriers used.
#[inline(always)]
pub fn sync_named<const ID: u32>(threads: u32) {
    unsafe { asm!("bar.sync {id}, {n};", id = const ID, n = in(reg32) threads, options(nostack)) }
}

/// Launch bounds for the kernel this is inlined into: at most 256 threads a block and at least
/// two blocks an SM, which caps ptxas at 128 registers a thread. Rust has no attribute for
/// them, so this leaves a PTX comment that host/build.rs (host/src/launch_bounds.rs) turns into
/// the entry's `.maxntid 256, 1, 1` and `.minnctapersm 2` directives.
#[inline(always)]
pub fn two_blocks_per_sm() {
    unsafe { asm!("// launch bounds: .maxntid 256, 1, 1 .minnctapersm 2", options(nostack, nomem)) }
}

/// Programmatic dependent launch: the point where this kernel starts to need what the previous
/// kernel wrote (and may start to write what it read). In the sm_80 module this is a PTX comment;
/// the host's sm_90 variant (host/src/pdl.rs) puts `griddepcontrol.wait` and the trigger for the
/// next kernel there instead of at the kernel's top. Every thread must pass it before such
/// accesses; code before it may only read memory that no kernel of the step writes (weights).
#[inline(always)]
pub fn dependent_launch_wait() {
    // No `nomem`: the compiler must not move memory accesses across it.
    unsafe { asm!("// dependent launch: wait", options(nostack)) }
}

/// Asks L2 for the 128-byte lines of `bytes` bytes from `start`, spread over the warp's lanes;
/// no registers are written and nothing waits for them.
#[inline(always)]
pub unsafe fn prefetch_l2(start: *const u8, bytes: usize) {
    let mut offset = 128 * lane_idx();
    while offset < bytes {
        unsafe {
            asm!("prefetch.global.L2 [{a}];", a = in(reg64) start.add(offset), options(nostack, readonly))
        };
        offset += 128 * WARP_SIZE;
    }
}

/// `__syncwarp()`: a barrier for the lanes of this warp, which also orders their memory accesses.
#[inline(always)]
pub fn sync_warp() {
    unsafe { asm!("bar.warp.sync 0xffffffff;") }
}

/// Butterfly shuffle: the value held by lane `lane ^ mask`. Every lane of the warp must call it.
#[inline(always)]
pub fn shuffle_xor(value: f32, mask: u32) -> f32 {
    let out: f32;
    unsafe {
        asm!(
            "shfl.sync.bfly.b32 {out}, {v}, {m}, 0x1f, 0xffffffff;",
            out = out(reg32) out,
            v = in(reg32) value,
            m = in(reg32) mask,
        );
    }
    out
}

#[inline(always)]
pub fn warp_sum(mut value: f32) -> f32 {
    let mut mask = 16;
    while mask > 0 {
        value += shuffle_xor(value, mask);
        mask /= 2;
    }
    value
}

#[inline(always)]
pub fn warp_max(mut value: f32) -> f32 {
    let mut mask = 16;
    while mask > 0 {
        value = max(value, shuffle_xor(value, mask));
        mask /= 2;
    }
    value
}

// One word per warp for block reductions, shared by every kernel of the module (each block gets its
// own copy). Dynamic shared memory starts after it.
core::arch::global_asm!(
    ".shared .align 16 .b8 block_reduce_scratch[128];",
    ".extern .shared .align 16 .b8 dynamic_shared[];"
);

#[inline(always)]
fn reduce_scratch() -> *mut f32 {
    let p: u64;
    unsafe { asm!("cvta.shared.u64 {p}, block_reduce_scratch;", p = out(reg64) p) };
    p as *mut f32
}

/// The block's dynamic shared memory (its size is set at launch), 16-byte aligned.
#[inline(always)]
pub fn dynamic_shared<T>() -> *mut T {
    let p: u64;
    unsafe { asm!("cvta.shared.u64 {p}, dynamic_shared;", p = out(reg64) p) };
    p as *mut T
}

/// Combines one value per thread across the block with `warp_combine`; every thread gets the
/// result. Every thread of the block must call it (it holds two barriers), with at most 1024
/// threads. Safe to call several times in a row: the first barrier keeps a second call from
/// overwriting partials that a first is still reading.
#[inline(always)]
fn block_reduce(value: f32, identity: f32, warp_combine: fn(f32) -> f32) -> f32 {
    let scratch = reduce_scratch();
    let partial = warp_combine(value);
    sync_threads();
    if lane_idx() == 0 {
        unsafe { *scratch.add(warp_idx()) = partial };
    }
    sync_threads();
    let warps = block_dim().div_ceil(WARP_SIZE);
    let mine = if lane_idx() < warps { unsafe { *scratch.add(lane_idx()) } } else { identity };
    warp_combine(mine)
}

#[inline(always)]
pub fn block_sum(value: f32) -> f32 {
    block_reduce(value, 0.0, warp_sum)
}

#[inline(always)]
pub fn block_max(value: f32) -> f32 {
    block_reduce(value, f32::NEG_INFINITY, warp_max)
}

/// max that ignores a NaN operand only when the other is -inf (the identity), like fmaxf.
#[inline(always)]
pub fn max(a: f32, b: f32) -> f32 {
    let out: f32;
    unsafe { asm!("max.f32 {o}, {a}, {b};", o = out(reg32) out, a = in(reg32) a, b = in(reg32) b) };
    out
}

// ---- shared memory by address --------------------------------------------------------------
// Addresses in the shared window (32 bits), used with `ld.shared`/`st.shared`, which skip the
// generic-to-shared check that loads through a generic pointer pay, and with `cp.async`.

/// The shared-window address of the block's dynamic shared memory (16-byte aligned).
#[inline(always)]
pub fn dynamic_shared_address() -> u32 {
    let a: u32;
    unsafe { asm!("mov.u32 {a}, dynamic_shared;", a = out(reg32) a, options(pure, nomem, nostack)) };
    a
}

#[inline(always)]
pub unsafe fn shared_load_f32(address: u32) -> f32 {
    let v: f32;
    unsafe {
        asm!("ld.shared.f32 {v}, [{a}];", v = out(reg32) v, a = in(reg32) address, options(pure, readonly, nostack))
    };
    v
}

/// Two f32 at an 8-byte aligned shared address.
#[inline(always)]
pub unsafe fn shared_load_f32x2(address: u32) -> [f32; 2] {
    let (a, b): (f32, f32);
    unsafe {
        asm!(
            "ld.shared.v2.f32 {{{a}, {b}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, p = in(reg32) address,
            options(pure, readonly, nostack),
        );
    }
    [a, b]
}

/// Four f32 at a 16-byte aligned shared address.
#[inline(always)]
pub unsafe fn shared_load_f32x4(address: u32) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    unsafe {
        asm!(
            "ld.shared.v4.f32 {{{a}, {b}, {c}, {d}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            p = in(reg32) address,
            options(pure, readonly, nostack),
        );
    }
    [a, b, c, d]
}

/// One 32-bit word at a 4-byte aligned shared address.
/// One byte at a shared address, zero-extended.
#[inline(always)]
pub unsafe fn shared_load_u8(address: u32) -> u32 {
    let v: u32;
    unsafe {
        asm!("ld.shared.u8 {v}, [{a}];", v = out(reg32) v, a = in(reg32) address, options(pure, readonly, nostack))
    };
    v
}

#[inline(always)]
pub unsafe fn shared_load_u32(address: u32) -> u32 {
    let v: u32;
    unsafe {
        asm!("ld.shared.b32 {v}, [{a}];", v = out(reg32) v, a = in(reg32) address, options(pure, readonly, nostack))
    };
    v
}

/// Four 32-bit words at a 16-byte aligned shared address.
#[inline(always)]
pub unsafe fn shared_load_u32x4(address: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ld.shared.v4.b32 {{{a}, {b}, {c}, {d}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            p = in(reg32) address,
            options(pure, readonly, nostack),
        );
    }
    [a, b, c, d]
}

/// Four 32-bit words to a 16-byte aligned shared address.
#[inline(always)]
pub unsafe fn shared_store_u32x4(address: u32, v: [u32; 4]) {
    unsafe {
        asm!(
            "st.shared.v4.b32 [{p}], {{{a}, {b}, {c}, {d}}};",
            p = in(reg32) address,
            a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
            options(nostack),
        );
    }
}

#[inline(always)]
pub unsafe fn shared_store_f32(address: u32, v: f32) {
    unsafe { asm!("st.shared.f32 [{a}], {v};", a = in(reg32) address, v = in(reg32) v, options(nostack)) };
}

/// Four f32 to a 16-byte aligned shared address.
#[inline(always)]
pub unsafe fn shared_store_f32x4(address: u32, v: [f32; 4]) {
    unsafe {
        asm!(
            "st.shared.v4.f32 [{p}], {{{a}, {b}, {c}, {d}}};",
            p = in(reg32) address,
            a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
            options(nostack),
        );
    }
}

#[inline(always)]
pub unsafe fn shared_store_u32(address: u32, v: u32) {
    unsafe { asm!("st.shared.b32 [{a}], {v};", a = in(reg32) address, v = in(reg32) v, options(nostack)) };
}

/// Adds `v` to the word at a 4-byte aligned shared address atomically; returns the old value.
#[inline(always)]
pub unsafe fn shared_atomic_add_u32(address: u32, v: u32) -> u32 {
    let old: u32;
    unsafe {
        asm!("atom.shared.add.u32 {o}, [{a}], {v};", o = out(reg32) old, a = in(reg32) address, v = in(reg32) v, options(nostack))
    };
    old
}

/// Starts an asynchronous copy of 16 bytes from global memory to shared memory (`cp.async`,
/// sm_80 and later), bypassing L1 and registers. With `valid` false nothing is read and the 16
/// bytes are zero-filled. Both addresses 16-byte aligned. The copy is complete (for this thread)
/// after [`copy_async_wait`]; other threads see it after a barrier that follows that wait.
#[inline(always)]
pub unsafe fn copy_async_16(shared: u32, global: *const u8, valid: bool) {
    let bytes: u32 = if valid { 16 } else { 0 };
    unsafe {
        asm!(
            "cp.async.cg.shared.global [{s}], [{g}], 16, {n};",
            s = in(reg32) shared, g = in(reg64) global, n = in(reg32) bytes,
            options(nostack),
        );
    }
}

/// [`copy_async_16`] for 4 bytes (`cp.async.ca`, through L1), both addresses 4-byte aligned.
#[inline(always)]
pub unsafe fn copy_async_4(shared: u32, global: *const u8, valid: bool) {
    unsafe { copy_async_4_prefix(shared, global, if valid { 4 } else { 0 }) }
}

/// [`copy_async_4`] of the first `bytes` (0 to 4) bytes of an aligned word, the rest of the
/// 4 zero-filled: nothing past them is read (an unaligned run of bytes copied word by word).
#[inline(always)]
pub unsafe fn copy_async_4_prefix(shared: u32, global: *const u8, bytes: u32) {
    unsafe {
        asm!(
            "cp.async.ca.shared.global [{s}], [{g}], 4, {n};",
            s = in(reg32) shared, g = in(reg64) global, n = in(reg32) bytes,
            options(nostack),
        );
    }
}

/// Closes the group of asynchronous copies started since the last commit.
#[inline(always)]
pub fn copy_async_commit() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// Waits until at most `PENDING` of this thread's committed copy groups are still in flight.
#[inline(always)]
pub fn copy_async_wait<const PENDING: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const PENDING, options(nostack)) };
}

// ---- 16-bit floats ---------------------------------------------------------------------------

#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    let out: f32;
    unsafe {
        asm!("cvt.f32.f16 {o}, {h};", o = out(reg32) out, h = in(reg16) bits, options(pure, nomem, nostack))
    };
    out
}

/// The two f16 of a little-endian word (low half first) as f32.
#[inline(always)]
pub fn f16x2_to_f32(word: u32) -> [f32; 2] {
    let (low, high): (f32, f32);
    unsafe {
        asm!(
            "{{ .reg .b16 lo, hi; mov.b32 {{lo, hi}}, {w}; cvt.f32.f16 {a}, lo; cvt.f32.f16 {b}, hi; }}",
            w = in(reg32) word, a = out(reg32) low, b = out(reg32) high,
            options(pure, nomem, nostack),
        );
    }
    [low, high]
}

/// Eight f16 held as four little-endian words (as [`load_u16x8`] returns them) as f32.
#[inline(always)]
pub fn f16x8_to_f32(words: [u32; 4]) -> [f32; 8] {
    let ([a, b], [c, d], [e, f], [g, h]) =
        (f16x2_to_f32(words[0]), f16x2_to_f32(words[1]), f16x2_to_f32(words[2]), f16x2_to_f32(words[3]));
    [a, b, c, d, e, f, g, h]
}

#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Round to nearest even, as `half::f16::from_f32` does.
#[inline(always)]
pub fn f32_to_f16(value: f32) -> u16 {
    let out: u16;
    unsafe { asm!("cvt.rn.f16.f32 {h}, {v};", h = out(reg16) out, v = in(reg32) value) };
    out
}

/// Two f32 rounded to nearest-even f16 and packed into one word, `low` in the low half (the
/// order mma operands and memory use). `cvt.rn.f16x2.f32 d, a, b` puts a in the high half.
#[inline(always)]
pub fn pack_f16x2(low: f32, high: f32) -> u32 {
    let out: u32;
    unsafe {
        asm!(
            "cvt.rn.f16x2.f32 {o}, {h}, {l};",
            o = out(reg32) out, h = in(reg32) high, l = in(reg32) low,
            options(pure, nomem, nostack),
        )
    };
    out
}

/// As [`pack_f16x2`], to bf16 (round to nearest even).
#[inline(always)]
pub fn pack_bf16x2(low: f32, high: f32) -> u32 {
    let out: u32;
    unsafe {
        asm!(
            "cvt.rn.bf16x2.f32 {o}, {h}, {l};",
            o = out(reg32) out, h = in(reg32) high, l = in(reg32) low,
            options(pure, nomem, nostack),
        )
    };
    out
}

// ---- tensor cores (sm_80 and later) ----------------------------------------------------------

/// `ldmatrix .x4`: four 8x8 matrices of 16-bit values from shared memory. Lanes 8i..8i + 7 give
/// the addresses of the 8 rows (16 bytes each, 16-byte aligned) of matrix i; every lane receives,
/// in word i, the two values at row lane / 4, columns 2 (lane % 4) and 2 (lane % 4) + 1 of matrix
/// i (the lower column in the low half). Every lane of the warp must execute it.
#[inline(always)]
pub unsafe fn load_matrix_x4(address: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            p = in(reg32) address,
            options(readonly, nostack),
        );
    }
    [a, b, c, d]
}

/// D = A B + D on the tensor cores for one 16 x 8 x 16 step (`mma.sync` m16n8k16, f32
/// accumulators), A 16 x 16 row-major and B 16 x 8 column-major, in 16-bit pairs (low half the
/// lower column of A / row of B). With g = lane / 4 and t = lane % 4: a[0] holds A[g][2t..2t + 2],
/// a[1] A[g + 8][2t..], a[2] A[g][2t + 8..], a[3] A[g + 8][2t + 8..]; b[0] holds B[2t..2t + 2][g],
/// b[1] B[2t + 8..][g]; d[0], d[1] hold D[g][2t], D[g][2t + 1] and d[2], d[3] row g + 8.
/// `BF16` picks bf16 operands, else f16. Every lane of the warp must execute it.
#[inline(always)]
pub fn mma_16x8x16<const BF16: bool>(d: &mut [f32; 4], a: [u32; 4], b: [u32; 2]) {
    unsafe {
        if BF16 {
            asm!(
                "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
                d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                options(pure, nomem, nostack),
            );
        } else {
            asm!(
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
                d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                options(pure, nomem, nostack),
            );
        }
    }
}

/// D = A B for 8-bit integers on the tensor cores (`mma.sync` m16n8k32, s32 sums, C = 0): A 16 x 32
/// (row-major fragment: a[0] A[g][4t..4t+4], a[1] row g + 8, a[2] A[g][16 + 4t..], a[3] row
/// g + 8), B 32 x 8 (b[0] B[4t..4t+4][g], b[1] B[16 + 4t..][g]), D as `mma_16x8x16`'s (d[0],
/// d[1] D[g][2t], D[g][2t + 1]; d[2], d[3] row g + 8); g = lane / 4, t = lane % 4. A's bytes are
/// unsigned with `UNSIGNED_A`, else signed; B's are signed. Every lane of the warp must execute it.
#[inline(always)]
pub fn mma_16x8x32_i8<const UNSIGNED_A: bool>(a: [u32; 4], b: [u32; 2]) -> [i32; 4] {
    let mut d = [0i32; 4];
    unsafe {
        if UNSIGNED_A {
            asm!(
                "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
                d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                options(pure, nomem, nostack),
            );
        } else {
            asm!(
                "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{d0}, {d1}, {d2}, {d3}}};",
                d0 = inout(reg32) d[0], d1 = inout(reg32) d[1], d2 = inout(reg32) d[2], d3 = inout(reg32) d[3],
                a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
                b0 = in(reg32) b[0], b1 = in(reg32) b[1],
                options(pure, nomem, nostack),
            );
        }
    }
    d
}

// ---- vector memory access --------------------------------------------------------------------

/// Four consecutive f32 as one 16-byte load. `ptr` must be 16-byte aligned.
#[inline(always)]
pub unsafe fn load_f32x4(ptr: *const f32) -> [f32; 4] {
    let (a, b, c, d): (f32, f32, f32, f32);
    unsafe {
        asm!(
            "ld.global.v4.f32 {{{a}, {b}, {c}, {d}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            p = in(reg64) ptr,
        );
    }
    [a, b, c, d]
}

/// Four consecutive f32 as one 16-byte store. `ptr` must be 16-byte aligned.
#[inline(always)]
pub unsafe fn store_f32x4(ptr: *mut f32, v: [f32; 4]) {
    unsafe {
        asm!(
            "st.global.v4.f32 [{p}], {{{a}, {b}, {c}, {d}}};",
            p = in(reg64) ptr,
            a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
        );
    }
}

/// Four 32-bit words as one 16-byte store. `ptr` must be 16-byte aligned.
#[inline(always)]
pub unsafe fn store_u32x4(ptr: *mut u32, v: [u32; 4]) {
    unsafe {
        asm!(
            "st.global.v4.b32 [{p}], {{{a}, {b}, {c}, {d}}};",
            p = in(reg64) ptr,
            a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
        );
    }
}

/// 16 bytes (eight 16-bit values) as one load, as four little-endian pairs. `ptr` must be
/// 16-byte aligned.
#[inline(always)]
pub unsafe fn load_u16x8(ptr: *const u16) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "ld.global.v4.b32 {{{a}, {b}, {c}, {d}}}, [{p}];",
            a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
            p = in(reg64) ptr,
        );
    }
    [a, b, c, d]
}

/// Eight f32 of shared (or any generic) memory as two 16-byte accesses; `ptr` 16-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(16))]
struct Aligned4([f32; 4]);

#[inline(always)]
pub unsafe fn load8_generic(ptr: *const f32) -> [f32; 8] {
    let (lo, hi) = unsafe { (*(ptr as *const Aligned4), *(ptr.add(4) as *const Aligned4)) };
    let ([a, b, c, d], [e, f, g, h]) = (lo.0, hi.0);
    [a, b, c, d, e, f, g, h]
}

#[inline(always)]
pub unsafe fn store8_generic(ptr: *mut f32, v: [f32; 8]) {
    let [a, b, c, d, e, f, g, h] = v;
    unsafe {
        *(ptr as *mut Aligned4) = Aligned4([a, b, c, d]);
        *(ptr.add(4) as *mut Aligned4) = Aligned4([e, f, g, h]);
    }
}

#[inline(always)]
pub fn is_aligned_16<T>(ptr: *const T) -> bool {
    (ptr as usize) % 16 == 0
}

// ---- special functions -------------------------------------------------------------------------
// `core` has no transcendental functions; `libm` supplies correctly range-reduced ones in plain
// Rust. RoPE uses the f64 forms so that large positions keep their angle exact.

/// e^x to within a few ulp: the hardware's 2^x (`ex2.approx`) on x log2(e), with the rounding
/// error of that product (up to |x| 2^-24 relative, large near |x| = 88) recovered by an FMA and
/// applied as a first-order correction. About 8 instructions against libm's 30-odd.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LOG2E_LOW: f32 = 1.925_963e-8; // log2(e) - LOG2E
    let high = x * LOG2E;
    if !high.is_finite() {
        return if high > 0.0 {
            f32::INFINITY
        } else if high < 0.0 {
            0.0
        } else {
            f32::NAN
        };
    }
    let low = fma(x, LOG2E, -high) + x * LOG2E_LOW;
    let power: f32;
    unsafe { asm!("ex2.approx.f32 {o}, {x};", o = out(reg32) power, x = in(reg32) high) };
    fma(power, low * core::f32::consts::LN_2, power)
}

/// a * b + c with one rounding. Rust never contracts `a * b + c` into an FMA on its own (that would
/// change results), so kernels whose inner loops multiply and add call this: half the instructions.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let out: f32;
    unsafe {
        asm!(
            "fma.rn.f32 {o}, {a}, {b}, {c};",
            o = out(reg32) out, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c,
            options(pure, nomem, nostack),
        )
    };
    out
}

/// tanh(x) = 1 - 2 / (e^(2x) + 1), with tanh(x) ~ x near zero where that form cancels.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    if x.abs() < 0.0625 {
        let x2 = x * x;
        // Taylor series to x^7: error below 2^-30 relative for |x| < 1/16.
        return x * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))));
    }
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

#[inline(always)]
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

#[inline(always)]
pub fn sqrt(x: f32) -> f32 {
    let out: f32;
    unsafe { asm!("sqrt.rn.f32 {o}, {x};", o = out(reg32) out, x = in(reg32) x) };
    out
}

// ---- integer dot products ----------------------------------------------------------------------

/// c + the sum of the four products of the signed bytes of a and b (`dp4a`, sm_61 and later).
#[inline(always)]
pub fn dp4a_signed(a: u32, b: u32, c: i32) -> i32 {
    let out: i32;
    unsafe {
        asm!("dp4a.s32.s32 {o}, {a}, {b}, {c};", o = out(reg32) out, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c)
    };
    out
}

/// c + the sum of the products of the unsigned bytes of a with the signed bytes of b.
#[inline(always)]
pub fn dp4a_unsigned_signed(a: u32, b: u32, c: i32) -> i32 {
    let out: i32;
    unsafe {
        asm!("dp4a.u32.s32 {o}, {a}, {b}, {c};", o = out(reg32) out, a = in(reg32) a, b = in(reg32) b, c = in(reg32) c)
    };
    out
}

/// Bytes of {b, a} (a bytes 0..4, b bytes 4..8) chosen by the four low nibbles of `selector`
/// (`prmt.b32`, default mode): result byte i is byte s & 7 of the pair, s nibble i of the
/// selector, or, where bit 3 of s is set, that byte's sign bit copied into all 8 bits.
#[inline(always)]
pub fn byte_permute(a: u32, b: u32, selector: u32) -> u32 {
    let out: u32;
    unsafe {
        asm!("prmt.b32 {o}, {a}, {b}, {c};", o = out(reg32) out, a = in(reg32) a, b = in(reg32) b, c = in(reg32) selector)
    };
    out
}

/// Round to the nearest integer, ties to even (`cvt.rni`).
#[inline(always)]
pub fn round_to_i32(x: f32) -> i32 {
    let out: i32;
    unsafe { asm!("cvt.rni.s32.f32 {o}, {x};", o = out(reg32) out, x = in(reg32) x) };
    out
}

/// *address += value in global memory, atomically (no result returned: `red`, not `atom`).
#[inline(always)]
pub unsafe fn atomic_add_f32(address: *mut f32, value: f32) {
    unsafe {
        asm!("red.global.add.f32 [{a}], {v};", a = in(reg64) address, v = in(reg32) value, options(nostack))
    };
}
