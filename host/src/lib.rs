//! Safe launch wrappers for the engine's GPU kernels.
//!
//! [`Gpu`] owns a CUDA context, one stream and the kernel module built from `gpu/` (embedded as
//! [`PTX`]). Each kernel has one method here, in a module named like its `gpu/src` twin; every
//! method checks its shapes against the buffers it is given and returns an [`Error`] instead of
//! launching a kernel that would read or write out of bounds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DriverError, LaunchConfig};
pub use cudarc::driver::{
    CudaGraph, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr, sys,
};
pub use half::{bf16, f16};

pub mod activation;
pub mod attention;
pub mod embedding;
#[cfg(test)]
mod launch_bounds;
pub mod matmul;
pub mod moe;
pub mod norm;
#[cfg(test)]
mod pdl;
mod profile;
pub mod rope;
pub mod sampling;
pub mod softmax;

/// The kernels of `gpu/`, compiled to one PTX module by `build.rs`.
pub const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
/// The same module for sm_90 with programmatic dependent launch at every entry point (`pdl.rs`);
/// loaded on Hopper and later unless `ENGINE_PDL=0`.
pub const PTX_SM90: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels_sm90.ptx"));

/// Every entry point the wrappers launch; `Gpu::new` loads each, and a test checks that the PTX
/// defines exactly these.
pub const KERNELS: &[&str] = &[
    "embedding_f32",
    "embedding_f16",
    "embedding_bf16",
    "position_add_f32",
    "position_add_f16",
    "position_add_bf16",
    "rms_norm_f32",
    "rms_norm_f16",
    "rms_norm_bf16",
    "layer_norm_f32",
    "layer_norm_f16",
    "layer_norm_bf16",
    "gelu_erf_f32",
    "gelu_tanh_f32",
    "silu_f32",
    "swiglu_f32",
    "residual_add_f32",
    "softmax_f32",
    "argmax_rows",
    "sample_rows",
    "rope_f32",
    "gemv_f32",
    "gemv_f32_split",
    "gemv_f16",
    "gemv_bf16",
    "gemv_q8_0",
    "gemv_q4_0",
    "gemv_q4_1",
    "quantize_q8_1",
    "rms_norm_q8_1",
    "swiglu_q8_1",
    "layer_norm_q8_1",
    "gelu_tanh_q8_1",
    "gemv_q8_0_q8",
    "gemv_q4_0_q8",
    "gemv_q4_1_q8",
    "gemv_q4_k_q8",
    "gemv_q6_k_q8",
    "gemv_mxfp4_q8",
    "gemv_mxfp4_q8_experts",
    "gemv_rows_q8_0",
    "gemv_rows_q4_k",
    "gemv_rows_q6_k",
    "gemv_rows_mxfp4",
    "gemv_rows_mxfp4_experts",
    "gemv_rows_f32_split",
    "mma_rows_q4_k",
    "mma_rows_q8_0",
    "mma_rows_mxfp4",
    "mma_rows_mxfp4_experts",
    "mma_stream_q4_k",
    "mma_stream_q8_0",
    "moe_route",
    "moe_top_k",
    "swiglu_oai_q8_1",
    "moe_weighted_sum",
    "attention_decode_f32",
    "kv_write_f32",
    "kv_write_paged",
    "attention_prefill_hd64",
    "attention_prefill_hd80",
    "attention_prefill_hd96",
    "attention_prefill_hd128",
    "attention_decode_hd64_h1",
    "attention_decode_hd64_h2",
    "attention_decode_hd64_h4",
    "attention_decode_hd64_h8",
    "attention_decode_hd80_h1",
    "attention_decode_hd80_h2",
    "attention_decode_hd80_h4",
    "attention_decode_hd80_h8",
    "attention_decode_hd96_h1",
    "attention_decode_hd96_h2",
    "attention_decode_hd96_h4",
    "attention_decode_hd96_h8",
    "attention_decode_hd128_h1",
    "attention_decode_hd128_h2",
    "attention_decode_hd128_h4",
    "attention_decode_hd128_h8",
    "attention_decode_combine",
    "embedding_blocks",
    "embedding_mxfp4",
    "embedding_q4_k",
    "embedding_q6_k",
    "convert_f32_to_f16",
    "gemm_sum_splits",
    "convert_f32_to_bf16",
    "gemm_f32",
    "gemm_f16",
    "gemm_bf16",
    "gemm_q8_0",
    "gemm_q4_0",
    "gemm_q4_1",
    "gemm_q4_k",
    "gemm_rows64_q8_0",
    "gemm_rows64_q4_0",
    "gemm_rows64_q4_1",
    "gemm_rows64_q4_k",
    "gemm_rows64_q6_k",
    "gemm_rows64_mxfp4",
    "gemm_q6_k",
    "gemm_mxfp4",
    "gemm_mxfp4_experts",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver found (libcuda could not be loaded): this machine has no NVIDIA GPU or driver")]
    NoDriver,
    #[error("CUDA reports no GPU at index {0}")]
    NoDevice(usize),
    #[error("CUDA error: {0}")]
    Driver(#[from] DriverError),
    #[error("{kernel}: {message}")]
    Shape { kernel: &'static str, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Storage types that weight-reading kernels accept; each selects the kernel `<name>_<SUFFIX>`.
pub trait WeightType: DeviceRepr {
    const SUFFIX: &'static str;
}
impl WeightType for f32 {
    const SUFFIX: &'static str = "f32";
}
impl WeightType for f16 {
    const SUFFIX: &'static str = "f16";
}
impl WeightType for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// A CUDA device with the kernel module loaded and one stream on which every launch is queued.
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    sm_count: usize,
    /// The sm_90 module is loaded: kernels may be launched with programmatic dependent launch.
    dependent_launch_available: bool,
    /// Kernels are launched with programmatic dependent launch now (see `dependent_launch`).
    dependent_launch: std::sync::atomic::AtomicBool,
    /// The f16 (or bf16) copy of X that `gemm` converts its input into.
    gemm_x: Mutex<Option<CudaSlice<u16>>>,
    /// The partial sums of a GEMM split along K in more than two (host/src/matmul/gemm.rs).
    gemm_partials: Mutex<Option<CudaSlice<f32>>>,
    /// Times `gemm_x` or `gemm_partials` has been (re)allocated: a CUDA graph that captured a GEMM holds its address.
    gemm_buffers_generation: std::sync::atomic::AtomicU64,
    /// Kernel timing, with `ENGINE_PROFILE=1` (profile.rs).
    profile: Option<Mutex<profile::KernelProfile>>,
}

impl Gpu {
    /// Opens GPU `ordinal`, loads the kernels and makes a stream. Fails with [`Error::NoDriver`]
    /// where there is no CUDA driver, never panics.
    pub fn new(ordinal: usize) -> Result<Self> {
        // cudarc loads libcuda on first use and panics if it is absent; ask first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        let count = CudaContext::device_count()?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::NoDevice(ordinal));
        }
        let context = CudaContext::new(ordinal)?;
        // One stream does all the work, so cudarc's cross-stream event tracking is not needed, and
        // its events would get in the way of capturing the decode step as a CUDA graph.
        unsafe { context.disable_event_tracking() };
        let major = context.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
        )?;
        let dependent_launch_available = major >= 9 && std::env::var("ENGINE_PDL").map_or(true, |v| v != "0");
        let ptx = if dependent_launch_available { PTX_SM90 } else { PTX };
        let module = context.load_module(cudarc::nvrtc::Ptx::from_src(ptx))?;
        let mut functions = HashMap::new();
        for &name in KERNELS {
            functions.insert(name, module.load_function(name)?);
        }
        // The GEMV kernels keep x in shared memory, the attention, GEMM and mma kernels tiles: allow
        // them more than the default 48 KiB.
        for (name, function) in &functions {
            if ["gemv_", "attention_", "gemm_", "mma_"].iter().any(|prefix| name.starts_with(prefix)) {
                function.set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    matmul::GEMV_SHARED_LIMIT as i32,
                )?;
            }
        }
        let sm_count = context
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            .max(1) as usize;
        let stream = context.new_stream()?;
        Ok(Gpu {
            context,
            stream,
            _module: module,
            functions,
            sm_count,
            dependent_launch_available,
            dependent_launch: false.into(),
            gemm_x: Mutex::new(None),
            gemm_partials: Mutex::new(None),
            gemm_buffers_generation: 0.into(),
            profile: profile::KernelProfile::from_env().map(Mutex::new),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The stream every kernel of this `Gpu` runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> Result<String> {
        Ok(self.context.name()?)
    }

    /// Copies a host slice into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(data)?)
    }

    /// Copies a device buffer back into a vector (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(&self, data: &impl DevicePtr<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(data)?)
    }

    /// A new device buffer of `len` elements; its contents are undefined until written.
    pub fn alloc<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(unsafe { self.stream.alloc::<T>(len) }?)
    }

    /// Waits until every kernel queued so far has finished.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// Streaming multiprocessors on the device.
    /// (free, total) bytes of device memory.
    pub fn memory(&self) -> Result<(usize, usize)> {
        Ok(self.context.mem_get_info()?)
    }

    pub fn sm_count(&self) -> usize {
        self.sm_count
    }

    /// Blocks of kernel `name` (of `threads` threads and `shared` bytes of dynamic shared memory)
    /// that one SM holds at once, at least 1.
    fn resident_blocks(&self, name: &str, threads: u32, shared: usize) -> Result<usize> {
        let blocks =
            self.function(name).occupancy_max_active_blocks_per_multiprocessor(threads, shared, None)?;
        Ok((blocks as usize).max(1))
    }

    fn function(&self, name: &str) -> &CudaFunction {
        // Names come from KERNELS-derived strings; Gpu::new loaded every one of them.
        self.functions.get(name).unwrap_or_else(|| panic!("kernel {name} is not in KERNELS"))
    }

    /// Launches kernels with programmatic dependent launch (each kernel's blocks are scheduled
    /// during the previous kernel and wait there; see `pdl.rs`) for as long as the returned guard
    /// lives, where `on` asks for it and the device has it (sm_90 and later, unless
    /// `ENGINE_PDL=0`); off again when the guard drops, on every path out. Worth it for chains of
    /// short kernels such as the decode step; the prompt pass's large GEMMs ran 4% slower with it.
    pub fn dependent_launch(&self, on: bool) -> DependentLaunch<'_> {
        let on = on && self.dependent_launch_available;
        self.dependent_launch.store(on, std::sync::atomic::Ordering::Relaxed);
        DependentLaunch(self)
    }

    /// With `ENGINE_PROFILE=1`: the launches since the last call, summed by kernel and by kernel
    /// and grid (at most `lines` rows each), as markdown tables, after waiting for the stream;
    /// None when profiling is off. Starts counting afresh.
    pub fn kernel_profile(&self, lines: usize) -> Result<Option<String>> {
        let Some(profile) = &self.profile else { return Ok(None) };
        let mut profile = profile.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(Some(profile.report(lines)?))
    }

    /// With `ENGINE_PROFILE=1`: ends a span of launches (a step), keeping their times for the
    /// next [`Gpu::kernel_profile`] or (`keep` false) dropping them.
    pub fn kernel_profile_span(&self, keep: bool) -> Result<()> {
        if let Some(profile) = &self.profile {
            profile.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).settle(keep)?;
        }
        Ok(())
    }

    /// Launches `name` with the given arguments (device pointers and scalars, in the kernel's order).
    /// With dependent launch on, the kernel's blocks may be scheduled during the previous kernel and
    /// wait in their prologue (`pdl.rs`).
    fn launch(&self, name: &str, config: LaunchConfig, args: &[&dyn Arg]) -> Result<()> {
        use cudarc::driver::sys;
        let function = self.function(name);
        self.context.bind_to_thread()?;
        let mut params: Vec<*mut std::ffi::c_void> = args.iter().map(|arg| arg.param()).collect();
        // SAFETY: a plain C struct; the union member set below is the one the id names.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let launch = sys::CUlaunchConfig {
            gridDimX: config.grid_dim.0,
            gridDimY: config.grid_dim.1,
            gridDimZ: config.grid_dim.2,
            blockDimX: config.block_dim.0,
            blockDimY: config.block_dim.1,
            blockDimZ: config.block_dim.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(self.dependent_launch.load(std::sync::atomic::Ordering::Relaxed)),
        };
        let mut profile =
            self.profile.as_ref().map(|p| p.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let timing = match profile.as_mut() {
            Some(profile) => profile.start(&self.context, &self.stream, name, &config)?,
            None => None,
        };
        // SAFETY: `params` holds one pointer per kernel parameter, each to a live value of the
        // parameter's type (the wrappers pass them in the kernel's order, checked by the
        // conformance tests); the function belongs to this context.
        unsafe {
            sys::cuLaunchKernelEx(&launch, function.cu_function(), params.as_mut_ptr(), std::ptr::null_mut())
        }
        .result()?;
        if let (Some(profile), Some(timing)) = (profile.as_mut(), timing) {
            profile.finish(&self.context, &self.stream, timing)?;
        }
        Ok(())
    }
}

/// A kernel argument: scalars by value, device pointers as raw addresses.
trait Arg {
    /// A pointer to the value, as cuLaunchKernel's parameter array takes it.
    fn param(&self) -> *mut std::ffi::c_void;
}
macro_rules! scalar_arg {
    ($($t:ty),*) => {$(
        impl Arg for $t {
            fn param(&self) -> *mut std::ffi::c_void {
                self as *const $t as *mut std::ffi::c_void
            }
        }
    )*};
}
// Device pointers are pushed as their u64 addresses (`device_ptr`), so u64 covers them too.
scalar_arg!(u32, u64, f32, f64);

/// Fails with a shape error unless `actual == expected`.
fn expect_len(kernel: &'static str, what: &str, actual: usize, expected: usize) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Shape { kernel, message: format!("{what} has {actual} elements, expected {expected}") })
    }
}

fn shape_error(kernel: &'static str, message: impl Into<String>) -> Error {
    Error::Shape { kernel, message: message.into() }
}

/// `value` as u32, or a shape error naming it.
fn to_u32(kernel: &'static str, what: &str, value: usize) -> Result<u32> {
    u32::try_from(value).map_err(|_| shape_error(kernel, format!("{what} = {value} does not fit in 32 bits")))
}

/// Grid for a grid-stride element-wise kernel: enough blocks of `threads` to cover `n` once, capped
/// at a few waves of a large GPU (the loop covers the rest).
fn elementwise_config(n: usize) -> LaunchConfig {
    const THREADS: u32 = 256;
    let blocks = n.div_ceil(8 * THREADS as usize).clamp(1, 132 * 16) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

/// Dependent launch on while this lives (`Gpu::dependent_launch`).
#[must_use = "dependent launch goes off again as soon as the guard drops"]
pub struct DependentLaunch<'a>(&'a Gpu);

impl Drop for DependentLaunch<'_> {
    fn drop(&mut self) {
        self.0.dependent_launch.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
