//! Row softmax (`gpu/src/softmax.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

const KERNEL: &str = "softmax_f32";

/// Checks the shapes of a softmax over [rows, n] and picks the launch configuration.
pub fn softmax_config(rows: usize, n: usize, x_len: usize, out_len: usize) -> Result<LaunchConfig> {
    if n == 0 {
        return Err(shape_error(KERNEL, "rows must have at least one element"));
    }
    to_u32(KERNEL, "n", n)?;
    expect_len(KERNEL, "x", x_len, rows * n)?;
    expect_len(KERNEL, "out", out_len, rows * n)?;
    let threads = if n >= 4096 {
        1024
    } else if n >= 512 {
        256
    } else {
        64
    };
    Ok(LaunchConfig {
        grid_dim: (to_u32(KERNEL, "rows", rows)?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Gpu {
    /// out[r, :] = softmax(x[r, :]) for x and out [rows, n]; a row that is all -inf gives zeros.
    pub fn softmax(
        &self,
        x: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
        rows: usize,
        n: usize,
    ) -> Result<()> {
        let config = softmax_config(rows, n, x.len(), out.len())?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let n = n as u32;
        self.launch(KERNEL, config, &[&x, &out, &n])
    }
}
