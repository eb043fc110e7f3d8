//! Choosing each row's token on the GPU (`gpu/src/sampling.rs`): greedy, or the CPU sampler's
//! top-k, top-p, min-p and temperature draw with a uniform number the host supplies, so that a
//! batched decode step copies back `rows` token ids instead of its logits.

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig};

/// One row's settings, uploaded as a [rows] array (the layout of `gpu::sampling::RowSampling`).
/// Penalties are applied to the logits before; the settings should pass
/// `engine::sampler::SamplerConfig::validate` (no NaN).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RowSampling {
    /// <= 0: greedy (argmax, first index of the max; NaN never wins).
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// >= 1: off.
    pub top_p: f32,
    /// <= 0: off.
    pub min_p: f32,
    /// The draw in [0, 1), made on the host from the request's seeded RNG. Make it in f32 (e.g.
    /// the top 24 bits of a word over 2^24): an f64 below 1 may round to 1.0, which draws the
    /// most likely token.
    pub uniform: f32,
}

// SAFETY: a #[repr(C)] struct of five 4-byte plain values, no padding, valid for any bits.
unsafe impl DeviceRepr for RowSampling {}

/// Largest row: ids and counts are carried in f32 in the kernel, exact below 2^24.
pub const MAX_SAMPLING_N: usize = 1 << 24;

/// Checks the shapes of a sampling launch over logits [rows, n] (`settings_len` None for
/// `argmax_rows`) and picks the launch configuration: one block per row.
pub fn sampling_config(
    kernel: &'static str,
    rows: usize,
    n: usize,
    logits_len: usize,
    settings_len: Option<usize>,
    out_len: usize,
) -> Result<LaunchConfig> {
    if n == 0 {
        return Err(shape_error(kernel, "rows must have at least one logit"));
    }
    if n > MAX_SAMPLING_N {
        return Err(shape_error(kernel, format!("n = {n} is above the largest row, {MAX_SAMPLING_N}")));
    }
    let total = rows
        .checked_mul(n)
        .ok_or_else(|| shape_error(kernel, format!("rows * n = {rows} * {n} overflows")))?;
    expect_len(kernel, "logits", logits_len, total)?;
    if let Some(settings_len) = settings_len {
        expect_len(kernel, "settings", settings_len, rows)?;
    }
    expect_len(kernel, "out", out_len, rows)?;
    // sample_rows takes 72 registers a thread (ptxas, sm_90): 1024 threads would need more than
    // an SM's 64k registers.
    let widest = if settings_len.is_some() { 512 } else { 1024 };
    let threads = if n >= 4096 {
        widest
    } else if n >= 512 {
        256
    } else {
        64
    };
    Ok(LaunchConfig {
        grid_dim: (to_u32(kernel, "rows", rows)?, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

impl Gpu {
    /// out[r] = the first index of the largest logit of row r of logits [rows, n] (NaN never wins,
    /// +inf counts as f32::MAX; a row with nothing above -inf gives 0).
    pub fn argmax_rows(
        &self,
        logits: &impl DevicePtr<f32>,
        rows: usize,
        n: usize,
        out: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        const KERNEL: &str = "argmax_rows";
        let config = sampling_config(KERNEL, rows, n, logits.len(), None, out.len())?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (logits, _logits) = logits.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let n = n as u32;
        self.launch(KERNEL, config, &[&logits, &out, &n])
    }

    /// out[r] = the token the CPU sampler (`engine::sampler`, penalties left out) would draw from
    /// row r of logits [rows, n] with settings[r] and its uniform, up to f32 summation order where
    /// a running probability lands within ~1e-6 of a boundary (`gpu/src/sampling.rs`).
    pub fn sample_rows(
        &self,
        logits: &impl DevicePtr<f32>,
        rows: usize,
        n: usize,
        settings: &impl DevicePtr<RowSampling>,
        out: &mut impl DevicePtrMut<u32>,
    ) -> Result<()> {
        const KERNEL: &str = "sample_rows";
        let config = sampling_config(KERNEL, rows, n, logits.len(), Some(settings.len()), out.len())?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (logits, _logits) = logits.device_ptr(stream);
        let (settings, _settings) = settings.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        let n = n as u32;
        self.launch(KERNEL, config, &[&logits, &settings, &out, &n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn layout_is_five_words() {
        assert_eq!(std::mem::size_of::<RowSampling>(), 20);
        assert_eq!(std::mem::align_of::<RowSampling>(), 4);
    }

    #[test]
    fn shapes_are_checked() {
        let shape = |r: Result<LaunchConfig>| matches!(r, Err(Error::Shape { .. }));
        let kernel = "sample_rows";
        assert!(shape(sampling_config(kernel, 2, 0, 0, Some(2), 2)));
        assert!(shape(sampling_config(kernel, 1, MAX_SAMPLING_N + 1, MAX_SAMPLING_N + 1, Some(1), 1)));
        assert!(shape(sampling_config(kernel, usize::MAX, 2, 0, Some(0), 0)));
        assert!(shape(sampling_config(kernel, 2, 10, 19, Some(2), 2)));
        assert!(shape(sampling_config(kernel, 2, 10, 20, Some(1), 2)));
        assert!(shape(sampling_config(kernel, 2, 10, 20, Some(2), 3)));
        assert!(shape(sampling_config("argmax_rows", 1 << 33, 1, 1 << 33, None, 1 << 33)));
        let config = sampling_config(kernel, 3, 201_088, 3 * 201_088, Some(3), 3).unwrap();
        assert_eq!((config.grid_dim, config.block_dim), ((3, 1, 1), (512, 1, 1)));
        let config = sampling_config("argmax_rows", 3, 201_088, 3 * 201_088, None, 3).unwrap();
        assert_eq!(config.block_dim, (1024, 1, 1));
        let config = sampling_config("argmax_rows", 5, 50, 250, None, 5).unwrap();
        assert_eq!((config.grid_dim, config.block_dim), ((5, 1, 1), (64, 1, 1)));
        assert!(sampling_config(kernel, 0, 7, 0, Some(0), 0).is_ok());
    }
}
