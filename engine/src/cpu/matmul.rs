//! Matrix products of activations with weights, as GGUF lays weights out: W is [n_out, n_in]
//! row-major (ggml's ne0 = n_in is the fastest dimension), and out[t, o] = sum_i x[t, i] W[o, i].

use super::threads::{self, SharedOutput};

/// out[t, :] = W x[t, :] (+ bias) for x [n_tokens, n_in], W [n_out, n_in], out [n_tokens, n_out].
/// Rows of W are split evenly over the pool's threads, each row read once per call and kept in
/// cache for every token. Each value is [`dot`]'s, so the result does not depend on the threads.
pub fn matmul(x: &[f32], weight: &[f32], bias: Option<&[f32]>, out: &mut [f32], n_in: usize, n_out: usize) {
    assert_eq!(weight.len(), n_in * n_out, "weight is not [{n_out}, {n_in}]");
    assert_eq!(x.len() % n_in, 0);
    let n_tokens = x.len() / n_in;
    assert_eq!(out.len(), n_tokens * n_out);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n_out);
    }
    let output = SharedOutput(out.as_mut_ptr());
    threads::pool().run(&|part, parts| {
        for o in threads::split(n_out, part, parts) {
            let row = &weight[o * n_in..(o + 1) * n_in];
            let b = bias.map_or(0.0, |b| b[o]);
            for t in 0..n_tokens {
                let value = dot(row, &x[t * n_in..(t + 1) * n_in]) + b;
                // SAFETY: row o belongs to this part only; t * n_out + o < out.len().
                unsafe { output.write(t * n_out + o, value) };
            }
        }
    });
}

/// Dot product with eight independent accumulators (rounds less than one chain), then their sum
/// in order and the tail's. With AVX the eight lanes are one register, mul then add as in the
/// scalar form, so both give the same bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") {
        // SAFETY: AVX is present.
        return unsafe { dot_avx(a, b) };
    }
    dot_scalar(a, b)
}

/// The reference form of [`dot`].
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
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

/// [`dot`] on AVX (callers have checked for it); inlined into other AVX code.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx")]
pub(crate) unsafe fn dot_avx(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let whole = a.len() / 8 * 8;
    let mut accumulator = _mm256_setzero_ps();
    for i in (0..whole).step_by(8) {
        // SAFETY: i + 8 <= whole <= a.len() == b.len().
        let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i))) };
        accumulator = _mm256_add_ps(accumulator, _mm256_mul_ps(x, y));
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: lanes holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), accumulator) };
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
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

    proptest::proptest! {
        #[test]
        fn dot_is_bit_identical_to_the_scalar_form(
            pairs in proptest::collection::vec((-10.0f32..10.0, -10.0f32..10.0), 0..300)
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            proptest::prop_assert_eq!(dot(&a, &b).to_bits(), dot_scalar(&a, &b).to_bits());
        }
    }
}
