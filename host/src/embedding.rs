//! Token embeddings and learned position embeddings (`gpu/src/embedding.rs`).

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
