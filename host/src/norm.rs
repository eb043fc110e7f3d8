//! RMSNorm and LayerNorm over rows (`gpu/src/norm.rs`).

use crate::{Gpu, Result, WeightType, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

/// Rows are staged in shared memory; the default 48 KiB limit allows this many f32.
pub const MAX_NORM_DIM: usize = 12 * 1024;

/// Checks the shapes of a norm launch and picks its configuration. `lengths` are those of x,
/// weight, bias (dim where there is none) and out.
pub fn norm_config(
    kernel: &'static str,
    rows: usize,
    dim: usize,
    lengths: [usize; 4],
) -> Result<LaunchConfig> {
    if dim == 0 || dim > MAX_NORM_DIM {
        return Err(shape_error(kernel, format!("dim = {dim} must be in 1..={MAX_NORM_DIM}")));
    }
    let [x, weight, bias, out] = lengths;
    expect_len(kernel, "x", x, rows * dim)?;
    expect_len(kernel, "weight", weight, dim)?;
    expect_len(kernel, "bias", bias, dim)?;
    expect_len(kernel, "out", out, rows * dim)?;
    let threads = if dim >= 2048 { 256 } else { 128 };
    Ok(LaunchConfig {
        grid_dim: (to_u32(kernel, "rows", rows)?.max(1), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: (dim * 4) as u32,
    })
}

impl Gpu {
    /// out[r, i] = x[r, i] / sqrt(mean(x[r]^2) + eps) * weight[i], for x and out [rows, dim].
    pub fn rms_norm<W: WeightType>(
        &self,
        x: &impl DevicePtr<f32>,
        weight: &impl DevicePtr<W>,
        out: &mut impl DevicePtrMut<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        const KERNEL: &str = "rms_norm";
        let config = norm_config(KERNEL, rows, dim, [x.len(), weight.len(), dim, out.len()])?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (weight, _weight) = weight.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let dim = dim as u32;
        self.launch(&format!("{KERNEL}_{}", W::SUFFIX), config, &[&x, &weight, &out, &dim, &eps])
    }

    /// out[r, i] = (x[r, i] - mean) / sqrt(var + eps) * weight[i] + bias[i], for [rows, dim].
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm<W: WeightType>(
        &self,
        x: &impl DevicePtr<f32>,
        weight: &impl DevicePtr<W>,
        bias: &impl DevicePtr<W>,
        out: &mut impl DevicePtrMut<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        const KERNEL: &str = "layer_norm";
        let config = norm_config(KERNEL, rows, dim, [x.len(), weight.len(), bias.len(), out.len()])?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (weight, _weight) = weight.device_ptr(stream);
        let (bias, _bias) = bias.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let dim = dim as u32;
        self.launch(&format!("{KERNEL}_{}", W::SUFFIX), config, &[&x, &weight, &bias, &out, &dim, &eps])
    }
}
