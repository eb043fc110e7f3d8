//! Attention kernels.
//!
//! - `contiguous`: decode over an f32 cache laid out [capacity, n_head_kv, head_dim] per layer, one
//!   sequence (the engine's present path).
//! - `paged`: the f16 KV cache in fixed-size pages with a block table per sequence, and the kernel
//!   that writes new tokens into it.
//! - `prefill`: causal attention of a run of new tokens of one sequence over the paged cache, in
//!   the flash-attention style (tiles through shared memory, online softmax).
//! - `decode`: one new token for each of a batch of sequences over the paged cache, split along
//!   the sequence (flash-decoding), and the kernel that combines the splits.
//!
//! The paged kernels share these options: an explicit `scale` for the scores; `window` (0 = full
//! context), under which position p attends to j with p - window < j <= p; and `sinks` (null =
//! none), one learned logit per query head that joins the softmax's denominator only:
//! w_j = exp(s_j - m) / (exp(sink - m) + sum_k exp(s_k - m)), with m the maximum of the sink and
//! the scores.

pub mod contiguous;
pub mod decode;
pub mod paged;
pub mod prefill;
