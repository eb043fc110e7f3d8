//! Matrix kernels. `gemv`, `gemv_k`: matrix-vector products for decode, one warp per output row;
//! `gemv_rows`: the integer GEMVs over several activation rows per weight read (batched decode);
//! `mma_rows`: up to 64 activation rows on the integer tensor cores (batched decode), and
//! `mma_experts` the MXFP4 experts' product of such a step, `mma_stream` dense products of 33 to 64
//! rows with the weights streamed once for all of them;
//! `gemm`: matrix products on the tensor cores for prefill, with `dequant` turning blocks of
//! quantized weights into f16; `kquant`: decoding of the 256-value super-block formats.
pub mod dequant;
pub mod gemm;
pub mod gemv;
pub mod gemv_k;
pub mod gemv_mxfp4;
pub mod gemv_rows;
pub mod kquant;
pub mod mma_experts;
pub mod mma_rows;
pub mod mma_stream;
pub mod quantize;

/// What `dequant` uses of the device vocabulary (tests/conformance/gemm.rs give it CPU twins).
mod dequant_ops {
    pub(crate) use crate::device::{f16_to_f32, fma, pack_f16x2};
    pub(crate) use crate::unroll;
}
