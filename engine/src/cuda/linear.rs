//! A linear layer, y = W x (+ b), that hides how its weights are stored: in which format, as one
//! matrix or as several (q, k and v stacked when they share a format, else one each), and whether
//! the product reads f32 activations or their 8-bit copy (the integer GEMVs of llama.cpp's
//! numerics; K-quants have only that form). Decode multiplies one token's activations (GEMV);
//! the prompt pass many tokens' (GEMM on the tensor cores), one logical part at a time.

use super::weights::Weights;
use super::{Context, CudaError};
use host::matmul::gemv_rows::gemv_rows_limit;
use host::matmul::mma_rows::takes_mma_rows;
use host::matmul::{GpuMatrix, Q8Activations, WeightFormat};
use host::{CudaSlice, DevicePtr, DevicePtrMut, Gpu};

/// One vector of activations and its 8-bit copy (the fused norm and activation kernels write
/// both; a linear layer reads the one its weights take).
pub struct Activations {
    pub values: CudaSlice<f32>,
    pub q8: Q8Activations,
}

impl Activations {
    /// n values (a multiple of 32, the quantization block).
    pub fn new(gpu: &Gpu, n: usize) -> Result<Self, host::Error> {
        Ok(Activations { values: gpu.upload(&vec![0.0f32; n])?, q8: gpu.q8_activations(n)? })
    }

    /// Device bytes of n values and their 8-bit copy.
    pub fn bytes(n: usize) -> usize {
        4 * n + n * 9 / 8
    }
}

pub struct Linear {
    matrices: Vec<GpuMatrix>,
    /// Rows of each logical part (q, k, v; gate, up; one part for a plain matrix), in order.
    parts: Vec<usize>,
    /// One bias per matrix (a stacked matrix's bias covers all its parts), or none.
    biases: Vec<CudaSlice<f32>>,
}

impl Linear {
    /// A plain matrix [n_out, n_in] named `name`, with the bias `bias` when given and present.
    pub fn load(
        weights: Weights,
        name: &str,
        bias: Option<&str>,
        n_in: usize,
        n_out: usize,
    ) -> Result<Self, CudaError> {
        let bias = match bias {
            Some(bias) => weights.optional_vector(bias, n_out)?,
            None => None,
        };
        Ok(Linear {
            matrices: vec![weights.matrix(name, n_in, n_out)?],
            parts: vec![n_out],
            biases: bias.into_iter().collect(),
        })
    }

    /// Tensors (name, n_out) that read the same n_in inputs and hold the logical parts of `parts`
    /// rows each (one tensor per part, or one tensor of all of them), with their biases (name per
    /// tensor) when `biases` is given and the file has them.
    pub fn stacked(
        weights: Weights,
        tensors: &[(String, usize)],
        biases: Option<&[String]>,
        parts: &[usize],
        n_in: usize,
    ) -> Result<Self, CudaError> {
        let matrices = weights.stacked(tensors, n_in)?;
        let biases = match biases {
            Some(names) if weights.has(&names[0]) => {
                let each = names
                    .iter()
                    .zip(tensors)
                    .map(|(name, (_, n_out))| weights.host_vector(name, &[*n_out]))
                    .collect::<Result<Vec<_>, _>>()?;
                if matrices.len() == 1 {
                    vec![weights.gpu.upload(&each.concat())?]
                } else {
                    each.iter().map(|b| weights.gpu.upload(b)).collect::<Result<_, _>>()?
                }
            }
            _ => Vec::new(),
        };
        Ok(Linear { matrices, parts: parts.to_vec(), biases })
    }

    /// The one matrix of a plain linear layer (a token embedding table read as an output matrix).
    pub fn matrix(&self) -> &GpuMatrix {
        &self.matrices[0]
    }

    /// Whether the decode product reads the 8-bit copy of its input.
    pub fn reads_q8(&self, integer_activations: bool) -> bool {
        self.matrices.iter().any(|w| uses_q8(w, integer_activations))
    }

    /// Whether the prompt pass can multiply it as a GEMM (every format but BF16 has that form).
    pub fn has_gemm(&self) -> bool {
        self.matrices.iter().all(|m| m.format() != WeightFormat::Bf16)
    }

    /// y = W x (+ b) for one token: y has [`Linear::n_out`] values, every part in order.
    pub fn decode(
        &self,
        context: Context,
        x: &Activations,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), host::Error> {
        let mut start = 0;
        for (k, w) in self.matrices.iter().enumerate() {
            let mut y = y.slice_mut(start..start + w.n_out);
            let bias = self.biases.get(k);
            if uses_q8(w, context.integer_activations) {
                context.gpu.gemv_q8(w, &x.q8, bias, &mut y)?;
            } else {
                context.gpu.gemv(w, &x.values, bias, &mut y)?;
            }
            start += w.n_out;
        }
        Ok(())
    }

    /// Part `part`'s matrix, its rows in that matrix and its bias.
    fn part(&self, part: usize) -> (&GpuMatrix, std::ops::Range<usize>, Option<&CudaSlice<f32>>) {
        if let [one] = self.matrices.as_slice() {
            let start = self.parts[..part].iter().sum();
            (one, start..start + self.parts[part], self.biases.first())
        } else {
            let m = &self.matrices[part];
            (m, 0..m.n_out, self.biases.get(part))
        }
    }

    /// How part `part` multiplies n rows of 8-bit activations, if it does. A decode step of
    /// several sequences, where the decode step reads 8-bit activations: a few rows through the
    /// multi-row GEMV (each row the sums a decode step gives it), some more on the integer
    /// tensor cores (each weight read once for the batch; the row ranges in
    /// host/src/matmul/mma_rows.rs). Many rows (a prompt) go through the GEMM instead (None).
    fn q8_rows(&self, context: Context, part: usize, n: usize) -> Option<RowProduct> {
        let (matrix, _, _) = self.part(part);
        let q8 = uses_q8(matrix, context.integer_activations);
        if q8 && takes_mma_rows(matrix, n) {
            Some(RowProduct::TensorCores)
        } else if q8 && n <= gemv_rows_limit() && matrix.has_gemv_rows() {
            Some(RowProduct::Gemv)
        } else {
            None
        }
    }

    /// Part `part` of n rows of 8-bit activations `x8`, by `how`.
    fn q8_part(
        &self,
        context: Context,
        part: usize,
        how: RowProduct,
        x8: &Q8Activations,
        n: usize,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), host::Error> {
        let (matrix, rows, bias) = self.part(part);
        match how {
            RowProduct::TensorCores => context.gpu.mma_rows(matrix, rows, x8, n, bias, y),
            RowProduct::Gemv => context.gpu.gemv_rows(matrix, rows, x8, n, bias, y),
        }
    }

    /// [`Linear::prefill_part`] of every part, part k into ys[k] (N the number of parts). Where
    /// every part takes the 8-bit row products, X is quantized once for all of them rather than
    /// once a part (same values, so the same sums).
    pub fn prefill_parts<const N: usize>(
        &self,
        context: Context,
        x: &impl DevicePtr<f32>,
        n: usize,
        ys: [&mut CudaSlice<f32>; N],
    ) -> Result<(), host::Error> {
        assert_eq!(N, self.parts.len(), "one output per part");
        let routes: Vec<Option<RowProduct>> = (0..N).map(|k| self.q8_rows(context, k, n)).collect();
        if routes.iter().all(Option::is_some) {
            let mut x8 = context.gpu.q8_activations(n * self.part(0).0.n_in)?;
            context.gpu.quantize_q8(x, &mut x8)?;
            for (k, y) in ys.into_iter().enumerate() {
                self.q8_part(context, k, routes[k].expect("checked above"), &x8, n, y)?;
            }
            return Ok(());
        }
        for (k, y) in ys.into_iter().enumerate() {
            self.prefill_part(context, k, x, n, y)?;
        }
        Ok(())
    }

    /// Y = X W_part^T (+ b_part) for the n tokens of X [n, n_in]: Y [n, rows of part `part`].
    pub fn prefill_part(
        &self,
        context: Context,
        part: usize,
        x: &impl DevicePtr<f32>,
        n: usize,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), host::Error> {
        if let Some(how) = self.q8_rows(context, part, n) {
            let mut x8 = context.gpu.q8_activations(n * self.part(part).0.n_in)?;
            context.gpu.quantize_q8(x, &mut x8)?;
            return self.q8_part(context, part, how, &x8, n, y);
        }
        let (matrix, rows, bias) = self.part(part);
        // An f32 router (gpt-oss: 32 rows): a block per weight row over groups of 8 rows of X,
        // in f32 as the decode step computes it (the GEMM would round X to f16, and a flipped
        // expert choice moves the logits by far more than rounding).
        if n <= ROUTER_ROWS && context.gpu.gemv_splits_rows(matrix) && rows == (0..matrix.n_out) {
            return context.gpu.gemv_rows_f32(matrix, x, n, bias, y);
        }
        context.gpu.gemm(matrix, rows, x, n, bias, y)
    }

    /// [`Linear::prefill_part`] of a linear layer of one part.
    pub fn prefill(
        &self,
        context: Context,
        x: &impl DevicePtr<f32>,
        n: usize,
        y: &mut impl DevicePtrMut<f32>,
    ) -> Result<(), host::Error> {
        self.prefill_part(context, 0, x, n, y)
    }
}

/// The 8-bit row products of a batched step ([`Linear::q8_rows`]).
#[derive(Clone, Copy)]
enum RowProduct {
    TensorCores,
    Gemv,
}

/// Most rows of X for which an f32 router takes the exact f32 product (a batched step's).
const ROUTER_ROWS: usize = 64;

/// Whether a matrix meets 8-bit activations: K-quants always (they have only the integer form),
/// other block formats when `integer_activations` is on.
fn uses_q8(w: &GpuMatrix, integer_activations: bool) -> bool {
    w.format().integer_only() || (integer_activations && w.is_blocks())
}
