//! Weights from the GGUF to the GPU: each tensor checked to be there with the shape the model
//! expects, then uploaded in its stored precision (F32/F16/BF16 rows, Q8_0/Q4_0/Q4_1/Q4_K/Q6_K/MXFP4
//! blocks). Vectors (norms, biases) go up as f32. Tensors that read the same input and write
//! consecutive outputs (q, k, v; gate, up) are stacked into one matrix when they share a format,
//! so that a single GEMV computes them all.

use super::CudaError;
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::model::ModelError;
use crate::model::weights::{WeightError, load};
use host::matmul::{GpuMatrix, WeightFormat};
use host::{CudaSlice, Gpu};

/// The GPU format of a tensor type, or the error naming the tensor.
pub fn format_of(name: &str, ty: GgmlType) -> Result<WeightFormat, CudaError> {
    Ok(match ty {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::Bf16 => WeightFormat::Bf16,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q4K => WeightFormat::Q4K,
        GgmlType::Q6K => WeightFormat::Q6K,
        GgmlType::Mxfp4 => WeightFormat::Mxfp4,
        ty => return Err(CudaError::UnsupportedType { name: name.to_string(), ty }),
    })
}

/// A GGUF file's tensors, read onto one GPU.
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    pub gpu: &'a Gpu,
    pub file: &'a GgufFile,
}

impl<'a> Weights<'a> {
    pub fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    /// Tensor `name`, checked to have dimensions `dims` (GGUF order: the row length first).
    pub fn tensor(&self, name: &str, dims: &[usize]) -> Result<&'a TensorInfo, CudaError> {
        let info =
            self.file.tensor(name).ok_or_else(|| ModelError::Weight(WeightError::Missing(name.into())))?;
        let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != expected {
            let error = WeightError::Shape { name: name.into(), actual: info.dims.clone(), expected };
            return Err(ModelError::Weight(error).into());
        }
        Ok(info)
    }

    /// Matrix `name` [n_out, n_in] uploaded as stored.
    pub fn matrix(&self, name: &str, n_in: usize, n_out: usize) -> Result<GpuMatrix, CudaError> {
        let info = self.tensor(name, &[n_in, n_out])?;
        Ok(self.gpu.upload_matrix(format_of(name, info.ty)?, self.file.tensor_data(info), n_in, n_out)?)
    }

    /// Matrices (name, n_out) that read the same n_in inputs: one matrix of their rows in order
    /// when they share a format (their bytes concatenated), else one matrix each.
    pub fn stacked(&self, tensors: &[(String, usize)], n_in: usize) -> Result<Vec<GpuMatrix>, CudaError> {
        let infos = tensors
            .iter()
            .map(|(name, n_out)| self.tensor(name, &[n_in, *n_out]))
            .collect::<Result<Vec<_>, _>>()?;
        if !infos.iter().all(|i| i.ty == infos[0].ty) {
            return tensors.iter().map(|(name, n_out)| self.matrix(name, n_in, *n_out)).collect();
        }
        let bytes: std::borrow::Cow<[u8]> = match infos.as_slice() {
            [one] => self.file.tensor_data(one).into(),
            several => {
                several.iter().map(|info| self.file.tensor_data(info)).collect::<Vec<_>>().concat().into()
            }
        };
        let rows = tensors.iter().map(|(_, n_out)| n_out).sum();
        Ok(vec![self.gpu.upload_matrix(format_of(&tensors[0].0, infos[0].ty)?, &bytes, n_in, rows)?])
    }

    /// Tensor `name` of shape `dims` as f32 values on the host (dequantized where stored in blocks).
    pub fn host_vector(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>, CudaError> {
        load(self.file, name, dims).map_err(|e| ModelError::from(e).into())
    }

    /// Vector `name` of n values, as f32 on the GPU.
    pub fn vector(&self, name: &str, n: usize) -> Result<CudaSlice<f32>, CudaError> {
        Ok(self.gpu.upload(&self.host_vector(name, &[n])?)?)
    }

    /// [`Weights::vector`] when the file has the tensor.
    pub fn optional_vector(&self, name: &str, n: usize) -> Result<Option<CudaSlice<f32>>, CudaError> {
        if self.has(name) { Ok(Some(self.vector(name, n)?)) } else { Ok(None) }
    }

    /// The bytes of an expert tensor [n_expert, rows, n_in], checked to have that shape and to be
    /// MXFP4 (the only expert format the GPU takes).
    pub fn experts(
        &self,
        name: &str,
        n_in: usize,
        rows: usize,
        n_expert: usize,
    ) -> Result<&'a [u8], CudaError> {
        let info = self.tensor(name, &[n_in, rows, n_expert])?;
        if info.ty != GgmlType::Mxfp4 {
            return Err(CudaError::UnsupportedType { name: name.into(), ty: info.ty });
        }
        Ok(self.file.tensor_data(info))
    }
}
