//! Mixture-of-experts products (`gpu/src/moe.rs`): expert-indexed MXFP4 matrices, one launch for
//! all the experts of a step.
//!
//! An expert tensor [n_expert, rows, n_in] (gpt-oss's `ffn_{gate,up,down}_exps`) is uploaded as
//! it is stored, one [`GpuMatrix`] of n_expert * rows rows (`Gpu::upload_matrix` with
//! n_out = n_expert * rows); its biases [n_expert, rows] as one f32 buffer. Expert ids are u32 in
//! device memory, as the router writes them: [k] for a decoded token, [T, k] for a prompt
//! (assignment a = t k + j is token t's j-th expert). Outputs are per assignment, [k, rows] or
//! [T k, rows]; weighting them by the router's probabilities and summing is the caller's.

use crate::matmul::gemm::GEMM_SHARED_BYTES;
use crate::matmul::{GpuMatrix, Q8Activations, Storage};
use crate::{Gpu, Result, elementwise_config, expect_len, shape_error, to_u32};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};

/// Tokens per GEMM tile and outputs per GEMM block (gpu/src/matmul/gemm.rs).
const TILE_M: usize = 128;
const TILE_N: usize = 128;

/// Assignments grouped by expert (made by [`Gpu::route_experts`]): expert e's assignments are
/// `order[offsets[e]..offsets[e + 1]]`, in no fixed order within an expert.
pub struct ExpertRouting {
    offsets: CudaSlice<u32>,
    order: CudaSlice<u32>,
    pub n_expert: usize,
    /// Assignments routed by the last [`Gpu::route_experts`] (T k), and its k.
    pub assignments: usize,
    pub k: usize,
}

impl ExpertRouting {
    /// [n_expert + 1] u32.
    pub fn offsets(&self) -> &CudaSlice<u32> {
        &self.offsets
    }

    /// [capacity] u32; the first `assignments` hold the grouped assignments.
    pub fn order(&self) -> &CudaSlice<u32> {
        &self.order
    }
}

/// Expert tensors of the same experts, stacked per expert: for each expert e, its rows of
/// `parts[0]`, then of `parts[1]`, ... (each part [n_expert, rows_p, ...] as stored: GGUF bytes
/// of a 3-D expert tensor, or f32 biases as bytes). Stacking gpt-oss's gate and up tensors this
/// way makes one expert matrix of 2 n_ff rows per expert, so that one launch computes both for
/// the selected experts (the output [k, 2 n_ff] then holds gate, up per expert).
pub fn stack_experts(parts: &[&[u8]], n_expert: usize) -> Vec<u8> {
    assert!(
        n_expert > 0 && parts.iter().all(|p| p.len().is_multiple_of(n_expert)),
        "parts of n_expert experts"
    );
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for e in 0..n_expert {
        for part in parts {
            let size = part.len() / n_expert;
            out.extend_from_slice(&part[e * size..(e + 1) * size]);
        }
    }
    out
}

/// rows per expert of an expert matrix, after checking that it is MXFP4 and n_expert divides it.
pub(crate) fn expert_rows(kernel: &'static str, w: &GpuMatrix, n_expert: usize) -> Result<usize> {
    if !matches!(w.storage(), Storage::Mxfp4 { .. }) {
        return Err(shape_error(
            kernel,
            format!("{:?} expert matrices are not supported (MXFP4 only)", w.format()),
        ));
    }
    if n_expert == 0 || !w.n_out.is_multiple_of(n_expert) {
        return Err(shape_error(kernel, format!("{} rows are not n_expert = {n_expert} experts", w.n_out)));
    }
    to_u32(kernel, "n_expert", n_expert)?;
    Ok(w.n_out / n_expert)
}

impl Gpu {
    /// Space to route up to `capacity` assignments among `n_expert` experts.
    pub fn expert_routing(&self, n_expert: usize, capacity: usize) -> Result<ExpertRouting> {
        if n_expert == 0 || n_expert > 4096 {
            return Err(shape_error("moe_route", format!("n_expert = {n_expert} is not in 1..=4096")));
        }
        to_u32("moe_route", "capacity", capacity)?;
        Ok(ExpertRouting {
            offsets: self.alloc(n_expert + 1)?,
            order: self.alloc(capacity.max(1))?,
            n_expert,
            assignments: 0,
            k: 1,
        })
    }

    /// Groups the assignments of `ids` [T, k] by expert into `routing`. Ids must be below
    /// n_expert (an id out of range is left out of every group, and its outputs are not written).
    pub fn route_experts(
        &self,
        ids: &impl DevicePtr<u32>,
        k: usize,
        routing: &mut ExpertRouting,
    ) -> Result<()> {
        const KERNEL: &str = "moe_route";
        let assignments = ids.len();
        if k == 0 || !assignments.is_multiple_of(k) {
            return Err(shape_error(KERNEL, format!("{assignments} ids are not T rows of k = {k}")));
        }
        if assignments > routing.order.len() {
            return Err(shape_error(
                KERNEL,
                format!("{assignments} assignments exceed the routing's capacity {}", routing.order.len()),
            ));
        }
        let stream = self.stream();
        let (i, _i) = ids.device_ptr(stream);
        let (o, _o) = routing.offsets.device_ptr_mut(stream);
        let (r, _r) = routing.order.device_ptr_mut(stream);
        let config = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 8 * routing.n_expert as u32,
        };
        let (a, n) = (assignments as u32, routing.n_expert as u32);
        self.launch(KERNEL, config, &[&i, &a, &n, &o, &r])?;
        routing.assignments = assignments;
        routing.k = k;
        Ok(())
    }

    /// y[j, :] = W[ids[j]] x_j (+ bias[ids[j]]) for the k = ids.len() selected experts of one
    /// token: W an MXFP4 expert matrix of n_expert experts, x 8-bit activations of n_in values
    /// (one x for every j) or k n_in (x_j = row j), bias [n_expert rows], y [k, rows].
    pub fn gemv_q8_experts(
        &self,
        w: &GpuMatrix,
        n_expert: usize,
        ids: &impl DevicePtr<u32>,
        x: &Q8Activations,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemv_mxfp4_q8_experts";
        let rows = expert_rows(KERNEL, w, n_expert)?;
        let k = ids.len();
        let per_slot = if x.n == w.n_in {
            false
        } else if x.n == k * w.n_in && k > 0 {
            true
        } else {
            return Err(shape_error(
                KERNEL,
                format!("x has {} values, expected {} (shared) or k n_in = {}", x.n, w.n_in, k * w.n_in),
            ));
        };
        expect_len(KERNEL, "y", y.len(), k * rows)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if k == 0 {
            return Ok(());
        }
        let Storage::Mxfp4 { quants, exponents } = w.storage() else {
            unreachable!("checked by expert_rows")
        };
        let stream = self.stream();
        let (q, _q) = quants.device_ptr(stream);
        let (e, _e) = exponents.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (i, _i) = ids.device_ptr(stream);
        let (xq, _xq) = x.q.device_ptr(stream);
        let (xd, _xd) = x.d.device_ptr(stream);
        let (y, _y) = y.device_ptr_mut(stream);
        let warps = 8;
        let config = LaunchConfig {
            grid_dim: (to_u32(KERNEL, "k rows", (k * rows).div_ceil(warps))?, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n_in, rows, slots, n) = (w.n_in as u32, rows as u32, k as u32, n_expert as u32);
        let per_slot = per_slot as u32;
        self.launch(KERNEL, config, &[&q, &e, &bias, &i, &xq, &xd, &y, &n_in, &rows, &slots, &n, &per_slot])
    }

    /// Y[a, :] = W[e] X[row of a, :] (+ bias[e]) for every assignment a of every expert e, as
    /// routed by [`Gpu::route_experts`]: X [T, n_in] (one row per token: gate and up) or, with
    /// `x_per_assignment`, [T k, n_in] (down); Y [T k, rows]. One launch; every expert's weights
    /// are read once per column tile. X is rounded to f16, products summed in f32, as
    /// [`Gpu::gemm`]. The first call of a size must not be inside a graph capture (see `gemm`).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_experts(
        &self,
        w: &GpuMatrix,
        routing: &ExpertRouting,
        x: &impl DevicePtr<f32>,
        x_per_assignment: bool,
        bias: Option<&CudaSlice<f32>>,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "gemm_mxfp4_experts";
        let rows = expert_rows(KERNEL, w, routing.n_expert)?;
        let (assignments, k, n_in) = (routing.assignments, routing.k, w.n_in);
        let x_rows = if x_per_assignment { assignments } else { assignments / k };
        expect_len(KERNEL, "x", x.len(), x_rows * n_in)?;
        expect_len(KERNEL, "y", y.len(), assignments * rows)?;
        if let Some(b) = bias {
            expect_len(KERNEL, "bias", b.len(), w.n_out)?;
        }
        if assignments == 0 {
            return Ok(());
        }
        to_u32(KERNEL, "x", x.len())?;
        to_u32(KERNEL, "y", y.len())?;
        let column_tiles = rows.div_ceil(TILE_N);
        if column_tiles > 65535 {
            return Err(shape_error(KERNEL, format!("{rows} rows per expert exceed the grid")));
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        if x % 16 != 0 {
            return Err(shape_error(KERNEL, "x must start on a 16-byte boundary"));
        }
        let mut buffer = self.convert_x(x, x_rows * n_in, false, elementwise_config(x_rows * n_in))?;
        let x16 = buffer.as_mut().expect("allocated by convert_x");
        let (x16, _x16) = x16.device_ptr_mut(stream);
        let Storage::Mxfp4 { quants, exponents } = w.storage() else {
            unreachable!("checked by expert_rows")
        };
        let (q, _q) = quants.device_ptr(stream);
        let (e, _e) = exponents.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        let bias = bias_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (offsets, _offsets) = routing.offsets.device_ptr(stream);
        let (order, _order) = routing.order.device_ptr(stream);
        let (y, _y) = y.device_ptr_mut(stream);
        // At most one partial tile per expert beyond the full ones; blocks past the last exit.
        let tiles = (assignments.div_ceil(TILE_M) + routing.n_expert).min(assignments);
        let config = LaunchConfig {
            grid_dim: (tiles as u32, column_tiles as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: GEMM_SHARED_BYTES as u32,
        };
        let (n_in, rows, n) = (n_in as u32, rows as u32, routing.n_expert as u32);
        let x_div = if x_per_assignment { 1u32 } else { k as u32 };
        self.launch(KERNEL, config, &[&x16, &q, &e, &bias, &offsets, &order, &y, &n_in, &rows, &n, &x_div])
    }
}

/// Most experts [`Gpu::top_k_experts`] chooses among, and most it chooses.
pub const MAX_EXPERTS: usize = 256;
pub const MAX_EXPERTS_USED: usize = 32;

impl Gpu {
    /// The router's choice for T tokens: of logits [T, n_expert], each token's k largest (ties:
    /// the lower expert), largest first, into ids [T, k], with the softmax over those k into
    /// weights [T, k]. k <= 32, k <= n_expert <= 256.
    pub fn top_k_experts(
        &self,
        logits: &impl DevicePtr<f32>,
        n_expert: usize,
        k: usize,
        ids: &mut impl DevicePtrMut<u32>,
        weights: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "moe_top_k";
        if n_expert == 0 || n_expert > MAX_EXPERTS || k == 0 || k > n_expert || k > MAX_EXPERTS_USED {
            return Err(shape_error(
                KERNEL,
                format!(
                    "{k} of {n_expert} experts; the kernel takes 1..={MAX_EXPERTS_USED} of at most {MAX_EXPERTS}"
                ),
            ));
        }
        if !logits.len().is_multiple_of(n_expert) {
            return Err(shape_error(KERNEL, format!("{} logits are not rows of {n_expert}", logits.len())));
        }
        let n_tokens = logits.len() / n_expert;
        expect_len(KERNEL, "ids", ids.len(), n_tokens * k)?;
        expect_len(KERNEL, "weights", weights.len(), n_tokens * k)?;
        if n_tokens == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (l, _l) = logits.device_ptr(stream);
        let (i, _i) = ids.device_ptr_mut(stream);
        let (w, _w) = weights.device_ptr_mut(stream);
        let blocks = n_tokens.div_ceil(8).min(4 * self.sm_count()) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (n_expert, k, n_tokens) = (n_expert as u32, k as u32, to_u32(KERNEL, "tokens", n_tokens)?);
        self.launch(KERNEL, config, &[&l, &i, &w, &n_expert, &k, &n_tokens])
    }

    /// gpt-oss's clamped SwiGLU over rows of gate_up [slots, 2 n] (gate (n), then up (n) per
    /// row): act = g sigmoid(alpha g) (u + 1) with g = min(gate, limit), u = clamp(up, -limit,
    /// limit), into `out` [slots, n] and/or quantized into `q8` (slots n values). n a multiple of 32.
    pub fn swiglu_oai(
        &self,
        gate_up: &impl DevicePtr<f32>,
        n: usize,
        alpha: f32,
        limit: f32,
        out: Option<&mut CudaSlice<f32>>,
        q8: Option<&mut Q8Activations>,
    ) -> Result<()> {
        const KERNEL: &str = "swiglu_oai_q8_1";
        if n == 0 || !n.is_multiple_of(32) || !gate_up.len().is_multiple_of(2 * n) {
            return Err(shape_error(
                KERNEL,
                format!(
                    "gate_up has {} values: not rows of 2 n with n = {n} a multiple of 32",
                    gate_up.len()
                ),
            ));
        }
        let slots = gate_up.len() / (2 * n);
        if let Some(o) = &out {
            expect_len(KERNEL, "out", o.len(), slots * n)?;
        }
        if let Some(q8) = &q8 {
            expect_len(KERNEL, "q8", q8.n, slots * n)?;
        }
        if slots == 0 || (out.is_none() && q8.is_none()) {
            return Ok(());
        }
        let stream = self.stream();
        let (g, _g) = gate_up.device_ptr(stream);
        let out_guard = out.map(|o| o.device_ptr_mut(stream));
        let out = out_guard.as_ref().map_or(0u64, |(p, _)| *p);
        let (q8, _q8) = match q8 {
            Some(q8) => {
                let (pointers, guards) = q8.pointers_mut(stream);
                (pointers, Some(guards))
            }
            None => ([0; 3], None),
        };
        let blocks = (slots * n / 32).div_ceil(8).min(4 * self.sm_count()) as u32;
        let config = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let (n, slots) = (n as u32, to_u32(KERNEL, "slots", slots)?);
        self.launch(KERNEL, config, &[&g, &out, &q8[0], &q8[1], &q8[2], &n, &slots, &alpha, &limit])
    }

    /// out [T, dim] = for each token, its k experts' rows of y [T k, dim] weighted by
    /// weights [T k] and summed.
    pub fn moe_weighted_sum(
        &self,
        y: &impl DevicePtr<f32>,
        weights: &impl DevicePtr<f32>,
        k: usize,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "moe_weighted_sum";
        let n_tokens = match weights.len().checked_div(k) {
            Some(n) if n * k == weights.len() => n,
            _ => {
                return Err(shape_error(
                    KERNEL,
                    format!("{} weights are not T rows of k = {k}", weights.len()),
                ));
            }
        };
        if n_tokens == 0 || !out.len().is_multiple_of(n_tokens) {
            return Err(shape_error(KERNEL, format!("out has {} values for {n_tokens} tokens", out.len())));
        }
        let dim = out.len() / n_tokens;
        expect_len(KERNEL, "y", y.len(), n_tokens * k * dim)?;
        let stream = self.stream();
        let (y, _y) = y.device_ptr(stream);
        let (w, _w) = weights.device_ptr(stream);
        let (o, _o) = out.device_ptr_mut(stream);
        let (dim, k, n_tokens) = (to_u32(KERNEL, "dim", dim)?, k as u32, to_u32(KERNEL, "tokens", n_tokens)?);
        // A thread per output: each sums k products, so a grid-stride loop would only lengthen
        // the chain (at batch 1 there are a few thousand outputs).
        let n = n_tokens as usize * dim as usize;
        let config = LaunchConfig {
            grid_dim: (to_u32(KERNEL, "blocks", n.div_ceil(256))?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(KERNEL, config, &[&y, &w, &o, &dim, &k, &n_tokens])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn experts_are_stacked_expert_by_expert() {
        let (gate, up) = ([1u8, 2, 3, 4, 5, 6], [7u8, 8, 9, 10]);
        assert_eq!(super::stack_experts(&[&gate, &up], 2), [1, 2, 3, 7, 8, 4, 5, 6, 9, 10]);
    }
}
