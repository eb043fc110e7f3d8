//! Token embeddings and learned position embeddings (`gpu/src/embedding.rs`).

use crate::matmul::{GpuMatrix, Storage, WeightFormat};
use crate::{Gpu, Result, WeightType, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

/// Checks the shapes of a row gather (table [rows, dim], one index per token, out [n_tokens, dim])
/// and returns the table's row count and the launch configuration.
pub fn gather_config(
    kernel: &'static str,
    table_len: usize,
    n_tokens: usize,
    out_len: usize,
    dim: usize,
) -> Result<(u32, LaunchConfig)> {
    if dim == 0 {
        return Err(shape_error(kernel, "dim must be at least 1"));
    }
    if !table_len.is_multiple_of(dim) {
        return Err(shape_error(
            kernel,
            format!("table has {table_len} elements, not a multiple of dim = {dim}"),
        ));
    }
    let rows = to_u32(kernel, "table rows", table_len / dim)?;
    expect_len(kernel, "out", out_len, n_tokens * dim)?;
    Ok((
        rows,
        LaunchConfig {
            grid_dim: (to_u32(kernel, "n_tokens", n_tokens)?, 1, 1),
            block_dim: (if dim >= 1024 { 256 } else { 128 }, 1, 1),
            shared_mem_bytes: 0,
        },
    ))
}

impl Gpu {
    /// out[t, :] = table[ids[t], :] for table [vocab, dim]. An id >= vocab gives a row of NaN
    /// (the kernel never reads outside the table); callers check ids they produce on the host.
    pub fn embedding<W: WeightType>(
        &self,
        table: &impl DevicePtr<W>,
        ids: &impl DevicePtr<u32>,
        out: &mut impl DevicePtrMut<f32>,
        dim: usize,
    ) -> Result<()> {
        const KERNEL: &str = "embedding";
        self.gather(KERNEL, table, ids, out, dim)
    }

    /// x[t, :] += table[positions[t], :] for table [n_positions, dim] (GPT-2's `wpe`).
    pub fn position_add<W: WeightType>(
        &self,
        table: &impl DevicePtr<W>,
        positions: &impl DevicePtr<u32>,
        x: &mut impl DevicePtrMut<f32>,
        dim: usize,
    ) -> Result<()> {
        const KERNEL: &str = "position_add";
        self.gather(KERNEL, table, positions, x, dim)
    }

    /// out[t] = row ids[t] of `w` (a token embedding table [vocab, dim] in its stored precision),
    /// for every id; out is [ids.len(), dim].
    pub fn embed(
        &self,
        w: &GpuMatrix,
        ids: &impl DevicePtr<u32>,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "embed";
        let tokens = ids.len();
        expect_len(KERNEL, "out", out.len(), tokens * w.n_in)?;
        if tokens == 0 {
            return Ok(());
        }
        match w.storage() {
            Storage::F32(table) => self.embedding(table, ids, out, w.n_in),
            Storage::F16(table) => self.embedding(table, ids, out, w.n_in),
            Storage::Bf16(table) => self.embedding(table, ids, out, w.n_in),
            Storage::Blocks { format, quants, scales, mins, sub } => {
                let stream = self.stream();
                let (q, _q) = quants.device_ptr(stream);
                let (s, _s) = scales.device_ptr(stream);
                let mins_guard = mins.as_ref().map(|m| m.device_ptr(stream));
                let m = mins_guard.as_ref().map_or(0u64, |(p, _)| *p);
                let sub_guard = sub.as_ref().map(|s| s.device_ptr(stream));
                let sub = sub_guard.as_ref().map_or(0u64, |(p, _)| *p);
                let (i, _i) = ids.device_ptr(stream);
                let (o, _o) = out.device_ptr_mut(stream);
                let config = LaunchConfig {
                    grid_dim: (to_u32(KERNEL, "ids", tokens)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let dim = w.n_in as u32;
                match format {
                    WeightFormat::Q4K => self.launch("embedding_q4_k", config, &[&q, &s, &i, &o, &dim]),
                    WeightFormat::Q6K => {
                        let high = q + (w.n_out * w.n_in / 2) as u64;
                        self.launch("embedding_q6_k", config, &[&q, &high, &s, &sub, &i, &o, &dim])
                    }
                    _ => {
                        let bits: u32 = if *format == WeightFormat::Q8_0 { 8 } else { 4 };
                        self.launch("embedding_blocks", config, &[&q, &s, &m, &i, &o, &dim, &bits])
                    }
                }
            }
            Storage::Mxfp4 { quants, exponents } => {
                let stream = self.stream();
                let (q, _q) = quants.device_ptr(stream);
                let (e, _e) = exponents.device_ptr(stream);
                let (i, _i) = ids.device_ptr(stream);
                let (o, _o) = out.device_ptr_mut(stream);
                let config = LaunchConfig {
                    grid_dim: (to_u32(KERNEL, "ids", tokens)?, 1, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                let dim = w.n_in as u32;
                self.launch("embedding_mxfp4", config, &[&q, &e, &i, &o, &dim])
            }
        }
    }

    fn gather<W: WeightType>(
        &self,
        kernel: &'static str,
        table: &impl DevicePtr<W>,
        indices: &impl DevicePtr<u32>,
        out: &mut impl DevicePtrMut<f32>,
        dim: usize,
    ) -> Result<()> {
        let n_tokens = indices.len();
        let (rows, config) = gather_config(kernel, table.len(), n_tokens, out.len(), dim)?;
        if n_tokens == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (table, _table) = table.device_ptr(stream);
        let (indices, _indices) = indices.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let dim = to_u32(kernel, "dim", dim)?;
        self.launch(&format!("{kernel}_{}", W::SUFFIX), config, &[&table, &indices, &rows, &out, &dim])
    }
}
