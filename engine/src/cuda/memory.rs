//! Device memory: what a model will hold, by category, checked against free memory before the
//! first allocation, so that a model that does not fit fails at once with the shortfall and the
//! largest context that would fit, instead of part way through the upload.

use super::CudaError;
use host::Gpu;

/// Memory the CUDA context, kernel module and graph take beyond our allocations (measured on the
/// H100: about 0.5 GiB is used before the first allocation; this is the margin kept free).
const CONTEXT_MARGIN: usize = 256 << 20;

/// Device memory a loaded model holds, by category.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VramLedger {
    /// Weight matrices and vectors, as stored in the GGUF.
    pub weights: usize,
    /// Keys and values of every layer for the whole context.
    pub kv_cache: usize,
    /// Activations of one step.
    pub activations: usize,
    /// Quantized activations, positions and other scratch.
    pub workspace: usize,
}

impl VramLedger {
    pub fn total(&self) -> usize {
        self.weights + self.kv_cache + self.activations + self.workspace
    }

    /// Fails unless the ledger fits in the GPU's free memory with the context's margin; the error
    /// says by how much it misses, and the largest context (`kv_per_position` bytes a position)
    /// that would fit.
    pub fn check_fits(&self, gpu: &Gpu, capacity: usize, kv_per_position: usize) -> Result<(), CudaError> {
        let (free, _) = gpu.memory()?;
        if self.total() + CONTEXT_MARGIN <= free {
            return Ok(());
        }
        let rest = self.total() - self.kv_cache + CONTEXT_MARGIN;
        let advice = if rest < free {
            format!(
                "lower --ctx-size from {capacity} to at most {} (KV cache {} per position)",
                (free - rest) / kv_per_position,
                gib(kv_per_position)
            )
        } else {
            "the weights alone do not fit: use a smaller or more quantized model".to_string()
        };
        Err(CudaError::OutOfMemory { ledger: *self, free, advice })
    }
}

impl std::fmt::Display for VramLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "weights {}, KV cache {}, activations {}, workspace {}",
            gib(self.weights),
            gib(self.kv_cache),
            gib(self.activations),
            gib(self.workspace)
        )
    }
}

/// Bytes of every tensor of `file` as stored (what the upload takes).
pub fn weight_bytes(file: &crate::gguf::GgufFile) -> usize {
    file.tensors().iter().map(|t| file.tensor_data(t).len()).sum()
}

/// Bytes in GiB, or in MiB below one GiB.
pub fn gib(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
