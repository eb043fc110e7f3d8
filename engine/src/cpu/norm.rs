//! RMSNorm and LayerNorm over the rows of a [rows, dim] matrix.

/// out[r, i] = x[r, i] / sqrt(mean(x[r]^2) + eps) * weight[i]
pub fn rms_norm(x: &[f32], weight: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    assert_eq!(weight.len(), dim);
    assert_eq!(x.len(), out.len());
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_square = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let scale = 1.0 / (mean_square + eps as f64).sqrt();
        for ((o, &v), &w) in out_row.iter_mut().zip(row).zip(weight) {
            *o = (v as f64 * scale * w as f64) as f32;
        }
    }
}

/// out[r, i] = (x[r, i] - mean) / sqrt(var + eps) * weight[i] + bias[i] (biased variance).
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], out: &mut [f32], dim: usize, eps: f32) {
    assert_eq!(weight.len(), dim);
    assert_eq!(bias.len(), dim);
    assert_eq!(x.len(), out.len());
    for (row, out_row) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let variance = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let scale = 1.0 / (variance + eps as f64).sqrt();
        for (i, (o, &v)) in out_row.iter_mut().zip(row).enumerate() {
            *o = ((v as f64 - mean) * scale * weight[i] as f64 + bias[i] as f64) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_of_known_row() {
        // mean square of [1, 2, 3, 4] is 7.5
        let mut out = [0.0; 4];
        rms_norm(&[1.0, 2.0, 3.0, 4.0], &[1.0, 1.0, 2.0, 0.5], &mut out, 4, 0.0);
        let s = 1.0 / 7.5f32.sqrt();
        let expected = [s, 2.0 * s, 6.0 * s, 2.0 * s];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }

    #[test]
    fn layer_norm_of_known_row() {
        // [1, 2, 3, 4]: mean 2.5, variance 1.25
        let mut out = [0.0; 4];
        layer_norm(&[1.0, 2.0, 3.0, 4.0], &[1.0; 4], &[0.0, 0.0, 0.0, 1.0], &mut out, 4, 0.0);
        let s = 1.0 / 1.25f32.sqrt();
        let expected = [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s + 1.0];
        for (o, e) in out.iter().zip(expected) {
            assert!((o - e).abs() < 1e-6, "{out:?} vs {expected:?}");
        }
    }
}
