//! Decode attention over a KV cache (`gpu/src/attention.rs`).

use crate::{Gpu, Result, expect_len, shape_error, to_u32};
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

/// Scores are kept in shared memory: at most this many cached positions per launch.
pub const MAX_DECODE_LEN: usize = 12 * 1024;

impl Gpu {
    /// out = attention of q [n_head, head_dim] over the first `len` positions of keys and values
    /// [capacity, n_head_kv, head_dim].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        q: &impl DevicePtr<f32>,
        keys: &impl DevicePtr<f32>,
        values: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
        len: usize,
        n_head: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<()> {
        const KERNEL: &str = "attention_decode_f32";
        if len == 0 || len > MAX_DECODE_LEN {
            return Err(shape_error(KERNEL, format!("len = {len} must be in 1..={MAX_DECODE_LEN}")));
        }
        if n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) {
            return Err(shape_error(KERNEL, format!("{n_head_kv} KV heads do not divide {n_head} heads")));
        }
        expect_len(KERNEL, "q", q.len(), n_head * head_dim)?;
        expect_len(KERNEL, "out", out.len(), n_head * head_dim)?;
        if keys.len() < len * n_head_kv * head_dim || values.len() != keys.len() {
            return Err(shape_error(KERNEL, format!("the cache holds fewer than {len} positions")));
        }
        let stream = self.stream();
        let (q, _q) = q.device_ptr(stream);
        let (k, _k) = keys.device_ptr(stream);
        let (v, _v) = values.device_ptr(stream);
        let (o, _o) = out.device_ptr_mut(stream);
        let config = LaunchConfig {
            grid_dim: (to_u32(KERNEL, "n_head", n_head)?, 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (4 * len) as u32,
        };
        let (len, n_head, n_head_kv, head_dim) =
            (len as u32, n_head as u32, n_head_kv as u32, head_dim as u32);
        self.launch(KERNEL, config, &[&q, &k, &v, &o, &len, &n_head, &n_head_kv, &head_dim])
    }
}
