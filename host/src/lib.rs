//! Safe launch wrappers for the engine's GPU kernels.
/// The kernels of `gpu/`, compiled to one PTX module by `build.rs`.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
