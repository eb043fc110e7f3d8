//! Matrix products of activations with weights, as GGUF lays weights out: W is [n_out, n_in]
//! row-major (ggml's ne0 = n_in is the fastest dimension), and out[t, o] = sum_i x[t, i] W[o, i].

use rayon::prelude::*;

/// out[t, :] = W x[t, :] (+ bias) for x [n_tokens, n_in], W [n_out, n_in], out [n_tokens, n_out].
/// Rows of W are spread over threads; each dot product runs over eight lanes then sums them.
pub fn matmul(x: &[f32], weight: &[f32], bias: Option<&[f32]>, out: &mut [f32], n_in: usize, n_out: usize) {
    assert_eq!(weight.len(), n_in * n_out, "weight is not [{n_out}, {n_in}]");
    assert_eq!(x.len() % n_in, 0);
    let n_tokens = x.len() / n_in;
    assert_eq!(out.len(), n_tokens * n_out);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n_out);
    }
    // Parallel over output rows for every token at once: each weight row is read once per call and
    // stays in cache for all tokens.
    let mut transposed = vec![0.0f32; n_out * n_tokens];
    transposed.par_chunks_mut(n_tokens).with_min_len(64).enumerate().for_each(|(o, column)| {
        let row = &weight[o * n_in..(o + 1) * n_in];
        let b = bias.map_or(0.0, |b| b[o]);
        for (t, value) in column.iter_mut().enumerate() {
            *value = dot(row, &x[t * n_in..(t + 1) * n_in]) + b;
        }
    });
    for (o, column) in transposed.chunks(n_tokens).enumerate() {
        for (t, &value) in column.iter().enumerate() {
            out[t * n_out + o] = value;
        }
    }
}

/// Dot product with eight independent accumulators (vectorises, and rounds less than one chain).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_product_by_hand() {
        // W = [[1, 2], [3, 4], [5, 6]], x = [[1, 1], [2, -1]]
        let w = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0; 6];
        matmul(&[1.0, 1.0, 2.0, -1.0], &w, Some(&[0.5, 0.0, -0.5]), &mut out, 2, 3);
        assert_eq!(out, [3.5, 7.0, 10.5, 0.5, 2.0, 3.5]);
    }

    #[test]
    fn dot_matches_a_plain_sum_on_odd_lengths() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        assert!((dot(&a, &b) as f64 - plain).abs() < 1e-3);
    }
}
