//! Matrix kernels. `gemv`, `gemv_k`: matrix-vector products for decode, one warp per output row;
//! `kquant`: decoding of the 256-value super-block formats.
pub mod gemm;
pub mod gemv;
pub mod gemv_k;
pub mod kquant;
pub mod quantize;
