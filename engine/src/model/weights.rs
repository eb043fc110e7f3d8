//! Reading named tensors out of a GGUF file as f32, with their shapes checked.

use super::Numerics;
use crate::cpu::quantized::Matrix;
use crate::gguf::{GgmlType, GgufError, GgufFile};

#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("tensor {0} is missing from the model file")]
    Missing(String),
    #[error("tensor {name} has shape {actual:?}, expected {expected:?} (ggml order, fastest first)")]
    Shape { name: String, actual: Vec<u64>, expected: Vec<u64> },
    #[error("tensor {name}: {source}")]
    Gguf { name: String, source: GgufError },
}

/// The tensor `name` dequantized to f32; `shape` is in ggml order (fastest dimension first), so a
/// weight applied as out = W x with W [n_out, n_in] row-major has shape [n_in, n_out].
pub fn load(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Vec<f32>, WeightError> {
    let info = file.tensor(name).ok_or_else(|| WeightError::Missing(name.to_string()))?;
    let expected: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    if info.dims != expected {
        return Err(WeightError::Shape { name: name.to_string(), actual: info.dims.clone(), expected });
    }
    file.tensor_f32(info).map_err(|source| WeightError::Gguf { name: name.to_string(), source })
}

/// Like [`load`], but a missing tensor is `None`.
pub fn load_optional(file: &GgufFile, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>, WeightError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => load(file, name, shape).map(Some),
    }
}

/// A weight matrix of shape [n_in, n_out] (ggml order) kept in its stored format when that is a
/// block format (quantized), or as f32 when it is F32, F16 or BF16.
pub fn load_matrix(
    file: &GgufFile,
    name: &str,
    n_in: usize,
    n_out: usize,
    numerics: Numerics,
) -> Result<Matrix, WeightError> {
    let info = file.tensor(name).ok_or_else(|| WeightError::Missing(name.to_string()))?;
    let expected = vec![n_in as u64, n_out as u64];
    if info.dims != expected {
        return Err(WeightError::Shape { name: name.to_string(), actual: info.dims.clone(), expected });
    }
    let matrix = match info.ty {
        _ if numerics == Numerics::Exact => Matrix::F32(
            file.tensor_f32(info).map_err(|source| WeightError::Gguf { name: name.to_string(), source })?,
        ),
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => Matrix::F32(
            file.tensor_f32(info).map_err(|source| WeightError::Gguf { name: name.to_string(), source })?,
        ),
        ty => Matrix::from_blocks(ty, file.tensor_data(info), n_in),
    };
    file.release_tensor_pages(info);
    Ok(matrix)
}

/// Like [`load_matrix`], but a missing tensor is `None`.
pub fn load_matrix_optional(
    file: &GgufFile,
    name: &str,
    n_in: usize,
    n_out: usize,
    numerics: Numerics,
) -> Result<Option<Matrix>, WeightError> {
    match file.tensor(name) {
        None => Ok(None),
        Some(_) => load_matrix(file, name, n_in, n_out, numerics).map(Some),
    }
}

/// The experts of a mixture-of-experts layer, stored as one 3-D tensor of shape [n_in, n_out,
/// n_expert] (ggml order, so each expert's [n_out, n_in] matrix is contiguous): one [`Matrix`] per
/// expert, kept in its block format or as f32 as [`load_matrix`] does.
pub fn load_experts(
    file: &GgufFile,
    name: &str,
    n_in: usize,
    n_out: usize,
    n_expert: usize,
    numerics: Numerics,
) -> Result<Vec<Matrix>, WeightError> {
    let info = file.tensor(name).ok_or_else(|| WeightError::Missing(name.to_string()))?;
    let expected = vec![n_in as u64, n_out as u64, n_expert as u64];
    if info.dims != expected {
        return Err(WeightError::Shape { name: name.to_string(), actual: info.dims.clone(), expected });
    }
    let as_f32 =
        numerics == Numerics::Exact || matches!(info.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);
    let experts = if as_f32 {
        let values =
            file.tensor_f32(info).map_err(|source| WeightError::Gguf { name: name.to_string(), source })?;
        values.chunks_exact(n_in * n_out).map(|m| Matrix::F32(m.to_vec())).collect()
    } else {
        let bytes = file.tensor_data(info);
        bytes.chunks_exact(bytes.len() / n_expert).map(|m| Matrix::from_blocks(info.ty, m, n_in)).collect()
    };
    file.release_tensor_pages(info);
    Ok(experts)
}
