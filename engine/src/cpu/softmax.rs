//! Softmax over the rows of a [rows, n] matrix.

/// out[r, :] = softmax(x[r, :]), subtracting the row maximum first; an all -inf row gives zeros.
pub fn softmax(x: &[f32], out: &mut [f32], n: usize) {
    assert_eq!(x.len(), out.len());
    for (row, out_row) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            out_row.fill(0.0);
            continue;
        }
        let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
        for (o, &v) in out_row.iter_mut().zip(row) {
            *o = (((v - max) as f64).exp() / sum) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_rows() {
        let mut out = [0.0; 6];
        softmax(&[0.0, 0.0, 1000.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY], &mut out, 3);
        assert_eq!(out, [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
        let mut out = [0.0; 2];
        softmax(&[1.0, 2.0], &mut out, 2);
        let e = std::f32::consts::E;
        assert!((out[0] - 1.0 / (1.0 + e)).abs() < 1e-7);
    }
}
