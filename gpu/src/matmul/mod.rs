//! Matrix kernels. `gemv`: matrix-vector products for decode, one warp per output row.
pub mod gemv;
pub mod quantize;
