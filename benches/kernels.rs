//! Kernel benchmark: time, achieved bandwidth and its fraction of the measured copy bandwidth,
//! per kernel and size, on GPU 0. Run with `cargo bench --bench kernels` (or the packed binary
//! `.gpu/bin/kernels-*` on the GPU machine); `kernels attention` runs only the attention rows.
//!
//! Method: inputs are random (never zeros), every size moves at least 128 MiB so that L2 (50 MiB
//! on the H100) does not serve repeats; 5 warm-up launches, then 30 timed ones, each between two
//! events; the median is reported. Bytes are the fewest the kernel must move (each input read
//! once, each output written once). The copy bandwidth is a 1 GiB device-to-device copy, counting
//! bytes read plus bytes written. GEMV rows marked "(batched)" time 20 launches back to back
//! between two events (launch latency then overlaps the kernel before, as in the captured decode
//! step), cycling through copies of the matrix so that weights come from DRAM.
//! GEMM rows (`KERNELS=gemm` runs only these): TFLOP/s of Y = X W^T at T = 512 tokens and
//! Llama-3.1-8B's shapes, 2 T n_in n_out FLOPs, timed with the conversion of X to f16 that
//! `Gpu::gemm` launches first; cuBLAS's f16 GEMM (f16 X and W, f32 Y, f32 sums) at the same shapes
//! is the yardstick, when libcublas can be loaded.
//! Rows of a batched decode step (`KERNELS=rows` runs only these): the multi-row GEMV
//! (`Gpu::gemv_rows`, with the quantization of X), the integer tensor-core rows (`Gpu::mma_rows`,
//! and from 16 rows its streamed kernel, `Gpu::mma_rows_streamed`) and the GEMM at
//! T = 1 to 128 rows, Llama-3.1-8B's Q4_K shapes and gpt-oss-20b's Q8_0 q and o; bytes are the weights once (what a step must read), so "of copy" says how near
//! the product comes to reading its weights at the copy rate.

use cudarc::driver::sys::CUevent_flags;
use host::activation::Activation;
use host::attention::{AttentionOptions, DecodeWorkspace, PAGE_SIZE, PagedKvCache, PagedKvShape};
use host::matmul::WeightFormat;
use host::rope::{Rope, RopeLayout, Yarn};
use host::{Gpu, Result, bf16, f16};

const WARMUP: usize = 5;
const REPEATS: usize = 30;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Stored bytes of a matrix: random quants, with every block's f16 scale fields made finite.
fn random_blocks(format: WeightFormat, len: usize, blocks: usize) -> Vec<u8> {
    let noise = random(len / 4 + 1, 11);
    let mut bytes: Vec<u8> = noise.iter().flat_map(|v| v.to_le_bytes()).take(len).collect();
    let (_, block_bytes) = format.block();
    if block_bytes > 4 {
        let scale = f16::from_f32(0.01).to_le_bytes();
        for b in 0..blocks {
            let at = b * block_bytes + if format == WeightFormat::Q6K { 208 } else { 0 };
            bytes[at..at + 2].copy_from_slice(&scale);
            if matches!(format, WeightFormat::Q4_1 | WeightFormat::Q4K) {
                bytes[at + 2..at + 4].copy_from_slice(&scale);
            }
            if format == WeightFormat::Mxfp4 {
                bytes[at] = 120; // 2^-7
            }
        }
    } else if format != WeightFormat::F32 {
        // 16-bit floats: keep the exponent bits sane.
        for pair in bytes.chunks_exact_mut(2) {
            pair[1] &= 0x3f;
        }
    }
    bytes
}

/// Median milliseconds of `f` over REPEATS event-timed launches.
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..WARMUP {
        f()?;
    }
    let stream = gpu.stream();
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        f()?;
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        end.synchronize()?;
        times.push(start.elapsed_ms(&end)? as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[REPEATS / 2])
}

/// Milliseconds per call of `f` when BATCH calls run back to back between two events (median of
/// REPEATS batches): launch latency overlaps the previous kernel, as in a captured decode step.
fn time_batched(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    const BATCH: usize = 20;
    for _ in 0..WARMUP {
        f()?;
    }
    let stream = gpu.stream();
    let mut times = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let start = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        for _ in 0..BATCH {
            f()?;
        }
        let end = stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
        end.synchronize()?;
        times.push(start.elapsed_ms(&end)? as f64 / BATCH as f64);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[REPEATS / 2])
}

struct Table {
    copy_gbps: f64,
}

impl Table {
    fn row(&self, kernel: &str, size: &str, bytes: usize, ms: f64) {
        let gbps = bytes as f64 / ms / 1e6;
        println!(
            "| {kernel:<22} | {size:<26} | {ms:>9.4} | {gbps:>8.1} | {:>5.1}% |",
            100.0 * gbps / self.copy_gbps
        );
    }

    /// A compute-bound row: TFLOP/s in place of GB/s, no fraction of copy.
    fn row_flops(&self, kernel: &str, size: &str, flops: f64, ms: f64) {
        let tflops = flops / ms / 1e9;
        println!("| {kernel:<22} | {size:<26} | {ms:>9.4} | {tflops:>6.2}TF |       - |");
    }
}

fn main() -> Result<()> {
    let gpu = Gpu::new(0)?;
    println!("device: {}", gpu.name()?);

    let n = 256 << 20; // 1 GiB of f32
    let source = gpu.upload(&random(n, 1))?;
    let mut destination = gpu.alloc::<f32>(n)?;
    let copy_ms = time(&gpu, || Ok(gpu.stream().memcpy_dtod(&source, &mut destination)?))?;
    let copy_gbps = (2 * 4 * n) as f64 / copy_ms / 1e6;
    println!("device-to-device copy of 1 GiB: {copy_ms:.3} ms, {copy_gbps:.0} GB/s (read + write)\n");
    drop((source, destination));
    let table = Table { copy_gbps };
    println!("| kernel                 | size                       |   time ms |     GB/s | of copy |");
    println!("|------------------------|----------------------------|-----------|----------|---------|");
    // KERNELS=gemv, gemm or attention runs that section alone.
    match std::env::var("KERNELS").as_deref() {
        Ok("gemv") => return gemv(&gpu, &table),
        Ok("gemm") => return gemm(&gpu, &table),
        Ok("attention") => return attention(&gpu, &table),
        Ok("rows") => return rows(&gpu, &table),
        _ => {}
    }
    if std::env::args().skip(1).any(|a| a == "attention") {
        return attention(&gpu, &table);
    }

    // Element-wise: 64 Mi elements (256 MiB per array).
    let n = 64 << 20;
    let x = gpu.upload(&random(n, 2))?;
    let y = gpu.upload(&random(n, 3))?;
    let mut out = gpu.alloc::<f32>(n)?;
    for (name, function) in
        [("gelu_erf", Activation::GeluErf), ("gelu_tanh", Activation::GeluTanh), ("silu", Activation::Silu)]
    {
        let ms = time(&gpu, || gpu.activation(function, &x, &mut out))?;
        table.row(name, "64Mi f32", 8 * n, ms);
    }
    let ms = time(&gpu, || gpu.swiglu(&x, &y, &mut out))?;
    table.row("swiglu", "64Mi f32", 12 * n, ms);
    let ms = time(&gpu, || gpu.residual_add(&mut out, &y))?;
    table.row("residual_add", "64Mi f32", 12 * n, ms);
    drop((x, y, out));

    // Norms: rows of the hidden sizes of the target models, 128+ MiB of activations.
    for dim in [576usize, 2880, 4096, 8192] {
        let rows = (64 << 20) / dim;
        let x = gpu.upload(&random(rows * dim, 4))?;
        let mut out = gpu.alloc::<f32>(rows * dim)?;
        let weight = gpu.upload(&random(dim, 5))?;
        let weight_bf16: Vec<bf16> = random(dim, 5).iter().map(|&v| bf16::from_f32(v)).collect();
        let weight_bf16 = gpu.upload(&weight_bf16)?;
        let bias = gpu.upload(&random(dim, 6))?;
        let bytes = 8 * rows * dim;
        let size = format!("{rows}x{dim}");
        let ms = time(&gpu, || gpu.rms_norm(&x, &weight, &mut out, rows, dim, 1e-5))?;
        table.row("rms_norm f32", &size, bytes, ms);
        let ms = time(&gpu, || gpu.rms_norm(&x, &weight_bf16, &mut out, rows, dim, 1e-5))?;
        table.row("rms_norm bf16", &size, bytes, ms);
        let ms = time(&gpu, || gpu.layer_norm(&x, &weight, &bias, &mut out, rows, dim, 1e-5))?;
        table.row("layer_norm f32", &size, bytes, ms);
    }

    // Softmax: long rows (vocabulary-sized) and attention-sized rows.
    for (rows, len) in [(256usize, 201_088usize), (65536, 1024), (8192, 8192)] {
        let x = gpu.upload(&random(rows * len, 7))?;
        let mut out = gpu.alloc::<f32>(rows * len)?;
        let ms = time(&gpu, || gpu.softmax(&x, &mut out, rows, len))?;
        table.row("softmax", &format!("{rows}x{len}"), 8 * rows * len, ms);
    }

    // Embedding: 16k tokens gathered from a 128k x 4096 f16 table (the rows read once each).
    let (vocab, dim, tokens) = (128 * 1024usize, 4096usize, 16 * 1024usize);
    let table_f16: Vec<f16> = random(vocab * dim, 8).iter().map(|&v| f16::from_f32(v)).collect();
    let table_f16 = gpu.upload(&table_f16)?;
    let ids: Vec<u32> = (0..tokens as u32).map(|t| (t * 7919) % vocab as u32).collect();
    let ids = gpu.upload(&ids)?;
    let mut out = gpu.alloc::<f32>(tokens * dim)?;
    let ms = time(&gpu, || gpu.embedding(&table_f16, &ids, &mut out, dim))?;
    table.row("embedding f16", &format!("{tokens} tok x {dim}"), tokens * dim * (2 + 4), ms);
    drop((table_f16, out));

    // RoPE over q of 8k tokens, 32 heads of 128 (256 MiB... 128 MiB), plain and YaRN.
    let (tokens, heads, head_dim) = (8192usize, 32usize, 128usize);
    let mut q = gpu.upload(&random(tokens * heads * head_dim, 9))?;
    let positions = gpu.upload(&(0..tokens as u32).collect::<Vec<_>>())?;
    let plain =
        Rope { head_dim, rope_dim: head_dim, base: 500000.0, layout: RopeLayout::Interleaved, yarn: None };
    let yarn = Rope {
        layout: RopeLayout::Neox,
        yarn: Some(Yarn {
            factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
            truncate: true,
        }),
        ..plain
    };
    let bytes = 8 * tokens * heads * head_dim;
    let ms = time(&gpu, || gpu.rope(&mut q, &positions, heads, &plain))?;
    table.row("rope", &format!("{tokens}x{heads}x{head_dim}"), bytes, ms);
    let ms = time(&gpu, || gpu.rope(&mut q, &positions, heads, &yarn))?;
    table.row("rope yarn neox", &format!("{tokens}x{heads}x{head_dim}"), bytes, ms);
    drop(q);

    gemv(&gpu, &table)?;
    gemm(&gpu, &table)?;
    attention(&gpu, &table)
}

/// GEMV at Llama-3.1-8B's FFN shapes. Several copies of each matrix, used in turn, so that the
/// weights (as small as 33 MB in Q4_0) come from DRAM, not from the 50 MB L2.
fn gemv(gpu: &Gpu, table: &Table) -> Result<()> {
    for (n_in, n_out) in [(4096usize, 14336usize), (14336, 4096)] {
        let x = gpu.upload(&random(n_in, 10))?;
        let mut y = gpu.alloc::<f32>(n_out)?;
        for format in [
            WeightFormat::F16,
            WeightFormat::Bf16,
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
            WeightFormat::Mxfp4,
        ] {
            let (block, block_bytes) = format.block();
            let bytes = random_blocks(format, n_in / block * n_out * block_bytes, n_in * n_out / block);
            let copies = (256usize << 20).div_ceil(bytes.len()).max(2);
            let matrices: Vec<_> =
                (0..copies).map(|_| gpu.upload_matrix(format, &bytes, n_in, n_out)).collect::<Result<_>>()?;
            let mut next = 0;
            let moved = matrices[0].size() + 4 * (n_in + n_out);
            let shape = format!("{n_out}x{n_in}");
            if !format.integer_only() {
                let ms = time(gpu, || {
                    next = (next + 1) % copies;
                    gpu.gemv(&matrices[next], &x, None, &mut y)
                })?;
                table.row(&format!("gemv {format:?}"), &shape, moved, ms);
                let ms = time_batched(gpu, || {
                    next = (next + 1) % copies;
                    gpu.gemv(&matrices[next], &x, None, &mut y)
                })?;
                table.row(&format!("gemv {format:?} (batched)"), &shape, moved, ms);
            }
            if matches!(format, WeightFormat::F16 | WeightFormat::Bf16) {
                continue;
            }
            // The integer form: timed with the quantization of x it needs (two launches), and
            // alone back to back (in a decode step one quantization serves several matrices).
            let mut activations = gpu.q8_activations(n_in)?;
            let ms = time(gpu, || {
                next = (next + 1) % copies;
                gpu.quantize_q8(&x, &mut activations)?;
                gpu.gemv_q8(&matrices[next], &activations, None, &mut y)
            })?;
            table.row(&format!("quantize+gemv_q8 {format:?}"), &shape, moved, ms);
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.gemv_q8(&matrices[next], &activations, None, &mut y)
            })?;
            table.row(&format!("gemv_q8 {format:?} (batched)"), &shape, moved, ms);
        }
    }
    gemv_gpt_oss(gpu, table)
}

/// MXFP4 at gpt-oss-20b's shapes (hidden 2880, 32 experts of 2880 x 2880, 4 per token): one
/// expert-sized matrix, gate and up stacked (5760 x 2880), and the expert GEMV for 4 experts of
/// 32 over the stacked gate/up tensor (one x) and the down tensor (x per expert). Expert ids cycle
/// through 8 disjoint sets of 4, so that the 32 experts' 282 MB (gate/up) come from DRAM.
fn gemv_gpt_oss(gpu: &Gpu, table: &Table) -> Result<()> {
    let format = WeightFormat::Mxfp4;
    let n_in = 2880usize;
    for n_out in [2880usize, 5760] {
        let bytes = random_blocks(format, n_in / 32 * n_out * 17, n_in * n_out / 32);
        let copies = (256usize << 20).div_ceil(bytes.len()).max(2);
        let matrices: Vec<_> =
            (0..copies).map(|_| gpu.upload_matrix(format, &bytes, n_in, n_out)).collect::<Result<_>>()?;
        let x = gpu.upload(&random(n_in, 10))?;
        let mut y = gpu.alloc::<f32>(n_out)?;
        let mut activations = gpu.q8_activations(n_in)?;
        gpu.quantize_q8(&x, &mut activations)?;
        let mut next = 0;
        let moved = matrices[0].size() + 4 * (n_in + n_out);
        let ms = time_batched(gpu, || {
            next = (next + 1) % copies;
            gpu.gemv_q8(&matrices[next], &activations, None, &mut y)
        })?;
        table.row("gemv_q8 Mxfp4 (batched)", &format!("{n_out}x{n_in}"), moved, ms);
    }
    let (n_expert, k) = (32usize, 4usize);
    for (rows, per_expert_x) in [(5760usize, false), (2880, true)] {
        let bytes = random_blocks(format, n_in / 32 * n_expert * rows * 17, n_in * n_expert * rows / 32);
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_expert * rows)?;
        let bias = gpu.upload(&random(n_expert * rows, 12))?;
        let sets: Vec<_> = (0..8u32)
            .map(|s| gpu.upload(&[s, s + 8, s + 16, s + 24]))
            .collect::<std::result::Result<_, _>>()?;
        let n_x = if per_expert_x { k * n_in } else { n_in };
        let mut activations = gpu.q8_activations(n_x)?;
        gpu.quantize_q8(&gpu.upload(&random(n_x, 13))?, &mut activations)?;
        let mut y = gpu.alloc::<f32>(k * rows)?;
        let mut next = 0;
        let moved = k * rows * n_in / 32 * 17 + 4 * (n_in + 2 * k * rows);
        let ms = time_batched(gpu, || {
            next = (next + 1) % sets.len();
            gpu.gemv_q8_experts(&matrix, n_expert, &sets[next], &activations, Some(&bias), &mut y)
        })?;
        let name = if per_expert_x { "gemv_q8_experts down" } else { "gemv_q8_experts gate+up" };
        table.row(&format!("{name} (batched)"), &format!("4 of 32 x {rows}x{n_in}"), moved, ms);
    }
    Ok(())
}

/// The prefill GEMM at T = 512 and Llama-3.1-8B's shapes (n_out x n_in), every weight format, then
/// cuBLAS.
fn gemm(gpu: &Gpu, table: &Table) -> Result<()> {
    const T: usize = 512;
    let shapes = [(4096usize, 4096usize), (14336, 4096), (4096, 14336)];
    for (n_out, n_in) in shapes {
        let x = gpu.upload(&random(T * n_in, 16))?;
        let mut y = gpu.alloc::<f32>(T * n_out)?;
        let flops = 2.0 * (T * n_in * n_out) as f64;
        for format in [
            WeightFormat::F16,
            WeightFormat::Bf16,
            WeightFormat::Q8_0,
            WeightFormat::Q4_0,
            WeightFormat::Q4_1,
            WeightFormat::Q4K,
            WeightFormat::Q6K,
            WeightFormat::Mxfp4,
        ] {
            let (block, block_bytes) = format.block();
            let bytes = random_blocks(format, n_in / block * n_out * block_bytes, n_in * n_out / block);
            let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out)?;
            let ms = time(gpu, || gpu.gemm(&matrix, 0..n_out, &x, T, None, &mut y))?;
            table.row_flops(&format!("gemm {format:?}"), &format!("T={T} {n_out}x{n_in}"), flops, ms);
        }
    }
    if let Err(e) = cublas(gpu, table, T, &shapes) {
        println!("cuBLAS yardstick not run: {e}");
    }
    gemm_gpt_oss(gpu, table)
}

/// MXFP4 products at gpt-oss-20b's shapes, T = 512: one expert-sized matrix (2880 x 2880, and
/// gate and up stacked, 5760 x 2880), then the expert GEMM as prefill runs it: T = 512 and 2048
/// tokens routed to 4 of 32 experts each (ids cycling over the experts: 64 and 256 assignments
/// per expert), gate and up stacked (x per token) and down (x per assignment), timed with its
/// conversion of X; FLOPs 2 T k n_in rows.
fn gemm_gpt_oss(gpu: &Gpu, table: &Table) -> Result<()> {
    const T: usize = 512;
    let format = WeightFormat::Mxfp4;
    let n_in = 2880usize;
    for n_out in [2880usize, 5760] {
        let bytes = random_blocks(format, n_in / 32 * n_out * 17, n_in * n_out / 32);
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_out)?;
        let x = gpu.upload(&random(T * n_in, 16))?;
        let mut y = gpu.alloc::<f32>(T * n_out)?;
        let flops = 2.0 * (T * n_in * n_out) as f64;
        let ms = time(gpu, || gpu.gemm(&matrix, 0..n_out, &x, T, None, &mut y))?;
        table.row_flops("gemm Mxfp4", &format!("T={T} {n_out}x{n_in}"), flops, ms);
    }
    let (n_expert, k) = (32usize, 4usize);
    for (rows, per_assignment) in [(5760usize, false), (2880, true)] {
        let bytes = random_blocks(format, n_in / 32 * n_expert * rows * 17, n_in * n_expert * rows / 32);
        let matrix = gpu.upload_matrix(format, &bytes, n_in, n_expert * rows)?;
        for t in [T, 4 * T] {
            let ids: Vec<u32> =
                (0..t * k).map(|a| ((a / k) * 7 + (a % k) * 8) as u32 % n_expert as u32).collect();
            let mut routing = gpu.expert_routing(n_expert, t * k)?;
            let ids = gpu.upload(&ids)?;
            let ms = time(gpu, || gpu.route_experts(&ids, k, &mut routing))?;
            if !per_assignment {
                table.row("moe_route", &format!("T={t} k={k} of {n_expert}"), 4 * t * k * 2, ms);
            }
            let x_rows = if per_assignment { t * k } else { t };
            let x = gpu.upload(&random(x_rows * n_in, 16))?;
            let mut y = gpu.alloc::<f32>(t * k * rows)?;
            let flops = 2.0 * (t * k * n_in * rows) as f64;
            let ms = time(gpu, || gpu.gemm_experts(&matrix, &routing, &x, per_assignment, None, &mut y))?;
            let name = if per_assignment { "gemm_experts down" } else { "gemm_experts gate+up" };
            table.row_flops(name, &format!("T={t} 4/32 x {rows}x{n_in}"), flops, ms);
        }
    }
    Ok(())
}

/// cuBLAS's GEMM on f16 X [T, n_in] and W [n_out, n_in], f32 Y and sums (column-major: Y^T = W X^T).
fn cublas(
    gpu: &Gpu,
    table: &Table,
    t: usize,
    shapes: &[(usize, usize)],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    use cudarc::cublas::{CudaBlas, result::gemm_ex, sys};
    use cudarc::driver::{DevicePtr, DevicePtrMut};
    if !unsafe { sys::is_culib_present() } {
        return Err("libcublas not found".into());
    }
    let blas = CudaBlas::new(gpu.stream().clone())?;
    for &(n_out, n_in) in shapes {
        let x: Vec<f16> = random(t * n_in, 17).iter().map(|&v| f16::from_f32(v)).collect();
        let w: Vec<f16> = random(n_out * n_in, 18).iter().map(|&v| f16::from_f32(v)).collect();
        let (x, w) = (gpu.upload(&x)?, gpu.upload(&w)?);
        let mut y = gpu.alloc::<f32>(t * n_out)?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let ms = time(gpu, || {
            let stream = gpu.stream();
            let (w, _w) = w.device_ptr(stream);
            let (x, _x) = x.device_ptr(stream);
            let (y, _y) = y.device_ptr_mut(stream);
            unsafe {
                gemm_ex(
                    *blas.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_T,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    n_out as i32,
                    t as i32,
                    n_in as i32,
                    (&alpha) as *const f32 as *const _,
                    w as *const _,
                    sys::cudaDataType_t::CUDA_R_16F,
                    n_in as i32,
                    x as *const _,
                    sys::cudaDataType_t::CUDA_R_16F,
                    n_in as i32,
                    (&beta) as *const f32 as *const _,
                    y as *mut _,
                    sys::cudaDataType_t::CUDA_R_32F,
                    n_out as i32,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| host::Error::Shape { kernel: "cublas", message: e.to_string() })
        })?;
        let flops = 2.0 * (t * n_in * n_out) as f64;
        table.row_flops("cuBLAS f16", &format!("T={t} {n_out}x{n_in}"), flops, ms);
    }
    Ok(())
}

/// Paged attention at Llama-3.1-8B's shape (32 heads over 8 KV heads of 128). Decode: one
/// sequence at a long context (and a batch), timed over 4 or more layers' caches back to back
/// (at least 256 MiB, so that the KV cache comes from DRAM), per layer; bytes = the K and V the
/// step must read. Prefill: FLOP/s, with
/// 4 T (start + (T + 1) / 2) head_dim FLOPs per head (QK and PV, causal).
fn attention(gpu: &Gpu, table: &Table) -> Result<()> {
    let (n_head, n_head_kv, head_dim) = (32usize, 8usize, 128usize);
    let options = AttentionOptions::new(n_head, head_dim);
    let page = |n_pages| PagedKvShape { n_pages, n_head_kv, head_dim };
    let fill = |cache: &mut PagedKvCache, seed: u64| -> Result<()> {
        let values: Vec<f16> =
            random(cache.shape().pool_len(), seed).iter().map(|&v| f16::from_f32(v)).collect();
        for layer in 0..cache.n_layer() {
            let (keys, vals) = cache.pools_mut(layer).expect("layer in range");
            gpu.stream().memcpy_htod(&values, keys)?;
            gpu.stream().memcpy_htod(&values, vals)?;
        }
        Ok(())
    };
    for (n_seq, context) in [(1usize, 4096usize), (1, 32768), (16, 4096)] {
        let pages = context / PAGE_SIZE;
        let layer_bytes = n_seq * context * n_head_kv * head_dim * 2 * 2;
        let layers = (256usize << 20).div_ceil(layer_bytes).max(4);
        let mut cache = PagedKvCache::new(gpu, layers, page(n_seq * pages), n_seq, pages)?;
        fill(&mut cache, 12)?;
        for seq in 0..n_seq {
            cache.reserve(gpu, seq, context)?;
        }
        let q = gpu.upload(&random(n_seq * n_head * head_dim, 13))?;
        let lens = gpu.upload(&vec![context as u32; n_seq])?;
        let mut out = gpu.alloc::<f32>(n_seq * n_head * head_dim)?;
        let mut workspace = DecodeWorkspace::for_cache(gpu, &cache, n_seq, n_head)?;
        // Every layer in turn, as in a decode step (launches queue up; their cost overlaps).
        let ms = time(gpu, || {
            for layer in 0..layers {
                gpu.attention_decode_paged(
                    &cache,
                    layer,
                    &q,
                    &lens,
                    None,
                    &options,
                    &mut workspace,
                    &mut out,
                )?;
            }
            Ok(())
        })? / layers as f64;
        let size = format!("{n_seq}x{context} ({} splits)", workspace.splits_for(n_seq));
        table.row("attention decode paged", &size, layer_bytes, ms);
    }
    for (n_tokens, start) in [(512usize, 0usize), (512, 3584), (2048, 0)] {
        let context = start + n_tokens;
        let mut cache = PagedKvCache::new(gpu, 1, page(context / PAGE_SIZE), 1, context / PAGE_SIZE)?;
        fill(&mut cache, 14)?;
        cache.reserve(gpu, 0, context)?;
        let q = gpu.upload(&random(n_tokens * n_head * head_dim, 15))?;
        let start_gpu = gpu.upload(&[start as u32])?;
        let mut out = gpu.alloc::<f32>(n_tokens * n_head * head_dim)?;
        let ms = time(gpu, || gpu.attention_prefill(&cache, 0, 0, &q, &start_gpu, None, &options, &mut out))?;
        let flops =
            4.0 * (n_tokens * head_dim * n_head) as f64 * (start as f64 + (n_tokens as f64 + 1.0) / 2.0);
        table.row_flops("attention prefill", &format!("T={n_tokens} start={start}"), flops, ms);
    }
    attention_gpt_oss(gpu, table)
}

/// gpt-oss-20b's attention (64 query heads over 8 KV heads of 64, a sink per head) on its two
/// kinds of layer: full context, and a 128-position window, which decode must cost the same at
/// any length (the pages before the window are never read) and prefill about 128 keys per query.
/// Decode bytes: the K and V the step must read (the window's, on windowed layers).
fn attention_gpt_oss(gpu: &Gpu, table: &Table) -> Result<()> {
    let (n_head, n_head_kv, head_dim) = (64usize, 8usize, 64usize);
    let sinks = gpu.upload(&random(n_head, 16))?;
    let page = |n_pages| PagedKvShape { n_pages, n_head_kv, head_dim };
    for window in [0usize, 128] {
        let options = AttentionOptions { window, ..AttentionOptions::new(n_head, head_dim) };
        for context in [4096usize, 32768] {
            let pages = context / PAGE_SIZE;
            let read = if window > 0 { window.min(context) } else { context };
            let layer_bytes = read * n_head_kv * head_dim * 2 * 2;
            let layers = (256usize << 20).div_ceil(context * n_head_kv * head_dim * 4).max(4);
            let mut cache = PagedKvCache::new(gpu, layers, page(pages), 1, pages)?;
            let values: Vec<f16> =
                random(cache.shape().pool_len(), 17).iter().map(|&v| f16::from_f32(v)).collect();
            for layer in 0..layers {
                let (keys, vals) = cache.pools_mut(layer).expect("layer in range");
                gpu.stream().memcpy_htod(&values, keys)?;
                gpu.stream().memcpy_htod(&values, vals)?;
            }
            cache.reserve(gpu, 0, context)?;
            let q = gpu.upload(&random(n_head * head_dim, 18))?;
            let lens = gpu.upload(&[context as u32])?;
            let mut out = gpu.alloc::<f32>(n_head * head_dim)?;
            let mut workspace = DecodeWorkspace::for_cache(gpu, &cache, 1, n_head)?;
            let ms = time(gpu, || {
                for layer in 0..layers {
                    gpu.attention_decode_paged(
                        &cache,
                        layer,
                        &q,
                        &lens,
                        Some(&sinks),
                        &options,
                        &mut workspace,
                        &mut out,
                    )?;
                }
                Ok(())
            })? / layers as f64;
            let splits = host::attention::window_splits(workspace.n_splits(), window);
            let size = format!("gpt-oss 1x{context} window={window} ({splits} splits)");
            table.row("attention decode paged", &size, layer_bytes, ms);
        }
        let n_tokens = 2048usize;
        let mut cache = PagedKvCache::new(gpu, 1, page(n_tokens / PAGE_SIZE), 1, n_tokens / PAGE_SIZE)?;
        cache.reserve(gpu, 0, n_tokens)?;
        let q = gpu.upload(&random(n_tokens * n_head * head_dim, 19))?;
        let start = gpu.upload(&[0u32])?;
        let mut out = gpu.alloc::<f32>(n_tokens * n_head * head_dim)?;
        let ms =
            time(gpu, || gpu.attention_prefill(&cache, 0, 0, &q, &start, Some(&sinks), &options, &mut out))?;
        // Keys each query sees: t + 1, or at most the window.
        let keys: usize = (0..n_tokens).map(|t| if window > 0 { (t + 1).min(window) } else { t + 1 }).sum();
        let flops = 4.0 * (keys * head_dim * n_head) as f64;
        table.row_flops("attention prefill", &format!("gpt-oss T={n_tokens} window={window}"), flops, ms);
    }
    Ok(())
}

/// The multi-row GEMV against the GEMM for the few rows of a batched decode step.
fn rows(gpu: &Gpu, table: &Table) -> Result<()> {
    // Llama-3.1-8B's Q4_K shapes, then gpt-oss-20b's Q8_0 attention (q and o).
    let shapes = [
        (WeightFormat::Q4K, 4096usize, 4096usize),
        (WeightFormat::Q4K, 4096, 14336),
        (WeightFormat::Q4K, 14336, 4096),
        (WeightFormat::Q8_0, 2880, 4096),
        (WeightFormat::Q8_0, 4096, 2880),
    ];
    for (format, n_in, n_out) in shapes {
        let (block, block_bytes) = format.block();
        let bytes = random_blocks(format, n_in / block * n_out * block_bytes, n_in * n_out / block);
        let copies = (256usize << 20).div_ceil(bytes.len()).max(2);
        let matrices: Vec<_> =
            (0..copies).map(|_| gpu.upload_matrix(format, &bytes, n_in, n_out)).collect::<Result<_>>()?;
        let mut next = 0;
        let moved = matrices[0].size();
        for t in [1usize, 2, 4, 8, 16, 32, 48, 64, 128] {
            let x = gpu.upload(&random(t * n_in, 11))?;
            let mut y = gpu.alloc::<f32>(t * n_out)?;
            let mut q8 = gpu.q8_activations(t * n_in)?;
            let shape = format!("{n_out}x{n_in}, {t} rows");
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.quantize_q8(&x, &mut q8)?;
                gpu.gemv_rows(&matrices[next], 0..n_out, &q8, t, None, &mut y)
            })?;
            table.row(&format!("quantize+gemv_rows {format:?}"), &shape, moved, ms);
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.quantize_q8(&x, &mut q8)?;
                gpu.mma_rows(&matrices[next], 0..n_out, &q8, t, None, &mut y)
            })?;
            table.row(&format!("quantize+mma_rows {format:?}"), &shape, moved, ms);
            if t >= 16 && matrices[0].has_mma_stream() {
                let ms = time_batched(gpu, || {
                    next = (next + 1) % copies;
                    gpu.quantize_q8(&x, &mut q8)?;
                    gpu.mma_rows_streamed(&matrices[next], 0..n_out, &q8, t, None, &mut y)
                })?;
                table.row(&format!("quantize+mma_stream {format:?}"), &shape, moved, ms);
            }
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.gemm(&matrices[next], 0..n_out, &x, t, None, &mut y)
            })?;
            table.row(&format!("gemm {format:?}"), &shape, moved, ms);
        }
    }
    // gpt-oss-20b's experts for a decode step of T sequences: 4 of 32 experts per token (drawn
    // at random), gate and up stacked (x per token), then down (x per assignment); bytes: the
    // experts chosen at least once.
    let (format, n_in, n_expert, k) = (WeightFormat::Mxfp4, 2880usize, 32usize, 4usize);
    for (rows, per_assignment) in [(5760usize, false), (2880, true)] {
        let bytes = random_blocks(format, n_in / 32 * n_expert * rows * 17, n_in * n_expert * rows / 32);
        let copies = 4;
        let matrices: Vec<_> = (0..copies)
            .map(|_| gpu.upload_matrix(format, &bytes, n_in, n_expert * rows))
            .collect::<Result<_>>()?;
        let mut next = 0;
        for t in [1usize, 2, 4, 8, 16, 32, 64] {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ t as u64;
            let mut ids = Vec::with_capacity(t * k);
            for _ in 0..t {
                let mut chosen: Vec<u32> = Vec::new();
                while chosen.len() < k {
                    state =
                        state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    let e = (state >> 33) as u32 % n_expert as u32;
                    if !chosen.contains(&e) {
                        chosen.push(e);
                    }
                }
                ids.extend(chosen);
            }
            let used = {
                let mut seen = ids.clone();
                seen.sort_unstable();
                seen.dedup();
                seen.len()
            };
            let moved = used * rows * n_in / 32 * 17;
            let mut routing = gpu.expert_routing(n_expert, t * k)?;
            gpu.route_experts(&gpu.upload(&ids)?, k, &mut routing)?;
            let x_rows = if per_assignment { t * k } else { t };
            let x = gpu.upload(&random(x_rows * n_in, 16))?;
            let mut q8 = gpu.q8_activations(x_rows * n_in)?;
            let mut y = gpu.alloc::<f32>(t * k * rows)?;
            let shape = format!("T={t} {used}/32 x {rows}x{n_in}");
            let which = if per_assignment { "down" } else { "gate+up" };
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.quantize_q8(&x, &mut q8)?;
                gpu.gemv_rows_experts(&matrices[next], &routing, &q8, per_assignment, None, &mut y)
            })?;
            table.row(&format!("gemv_rows experts {which}"), &shape, moved, ms);
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.quantize_q8(&x, &mut q8)?;
                gpu.mma_rows_experts(&matrices[next], &routing, &q8, per_assignment, None, &mut y)
            })?;
            table.row(&format!("mma_rows experts {which}"), &shape, moved, ms);
            let ms = time_batched(gpu, || {
                next = (next + 1) % copies;
                gpu.gemm_experts(&matrices[next], &routing, &x, per_assignment, None, &mut y)
            })?;
            table.row(&format!("gemm_experts {which}"), &shape, moved, ms);
        }
    }
    Ok(())
}
