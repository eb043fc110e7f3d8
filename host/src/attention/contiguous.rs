//! Decode attention over an f32 KV cache (`gpu/src/attention/contiguous.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

/// Scores are kept in shared memory (4 bytes per cached position, up to the limit `Gpu::new` sets).
pub const MAX_DECODE_LEN: usize = crate::matmul::GEMV_SHARED_LIMIT / 4;

impl Gpu {
    /// out = attention of q [n_head, head_dim] over positions 0..=position[0] of keys and values
    /// [capacity, n_head_kv, head_dim]; the position is read on the device (graph replays).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        q: &impl DevicePtr<f32>,
        keys: &impl DevicePtr<f32>,
        values: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
        position: &impl DevicePtr<u32>,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<()> {
        const KERNEL: &str = "attention_decode_f32";
        let row = n_head_kv * head_dim;
        let capacity = keys.len().checked_div(row).unwrap_or(0);
        if capacity == 0 || capacity > MAX_DECODE_LEN {
            return Err(shape_error(
                KERNEL,
                format!("a cache of {capacity} positions (1..={MAX_DECODE_LEN})"),
            ));
        }
        if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(shape_error(KERNEL, format!("{n_head_kv} KV heads do not divide {n_head} heads")));
        }
        expect_len(KERNEL, "q", q.len(), n_head * head_dim)?;
        expect_len(KERNEL, "out", out.len(), n_head * head_dim)?;
        expect_len(KERNEL, "position", position.len(), 1)?;
        if keys.len() != capacity * row || values.len() != keys.len() {
            return Err(shape_error(KERNEL, "keys and values must both be [capacity, n_head_kv, head_dim]"));
        }
        let stream = self.stream();
        let (q, _q) = q.device_ptr(stream);
        let (k, _k) = keys.device_ptr(stream);
        let (v, _v) = values.device_ptr(stream);
        let (o, _o) = out.device_ptr_mut(stream);
        let (p, _p) = position.device_ptr(stream);
        let config = LaunchConfig {
            grid_dim: (to_u32(KERNEL, "n_head", n_head)?, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (4 * capacity) as u32,
        };
        let (n_head, n_head_kv, head_dim) = (n_head as u32, n_head_kv as u32, head_dim as u32);
        self.launch(KERNEL, config, &[&q, &k, &v, &o, &p, &n_head, &n_head_kv, &head_dim])
    }

    /// cache[position[0] * x.len() ..][..x.len()] = x: a token's keys or values into the cache.
    pub fn kv_write(
        &self,
        x: &impl DevicePtr<f32>,
        cache: &mut impl DevicePtrMut<f32>,
        position: &impl DevicePtr<u32>,
    ) -> Result<()> {
        const KERNEL: &str = "kv_write_f32";
        let row = x.len();
        if row == 0 || !cache.len().is_multiple_of(row) {
            return Err(shape_error(
                KERNEL,
                format!("the cache ({}) is not a whole number of rows of {row}", cache.len()),
            ));
        }
        expect_len(KERNEL, "position", position.len(), 1)?;
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (c, _c) = cache.device_ptr_mut(stream);
        let (p, _p) = position.device_ptr(stream);
        let config = LaunchConfig {
            grid_dim: (row.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let row = to_u32(KERNEL, "row", row)?;
        self.launch(KERNEL, config, &[&x, &c, &p, &row])
    }
}
