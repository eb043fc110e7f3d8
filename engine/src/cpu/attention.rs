//! Causal self-attention over a KV cache, with grouped-query heads.
//!
//! For query head h at absolute position p: scores over cached positions 0..=p of KV head
//! h / (n_head / n_head_kv), scaled by 1/sqrt(head_dim), softmax, weighted sum of values.

/// q [n_tokens, n_head, head_dim] at positions start..start+n_tokens; keys and values
/// [n_cached, n_head_kv, head_dim] with n_cached >= start + n_tokens; out like q.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    let n_tokens = q.len() / (n_head * head_dim);
    assert_eq!(out.len(), q.len());
    assert!(n_head.is_multiple_of(n_head_kv));
    let group = n_head / n_head_kv;
    let kv_stride = n_head_kv * head_dim;
    assert!(keys.len() >= (start + n_tokens) * kv_stride);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut scores = Vec::new();
    for t in 0..n_tokens {
        let position = start + t;
        for h in 0..n_head {
            let kv_head = h / group;
            let query = &q[(t * n_head + h) * head_dim..][..head_dim];
            scores.clear();
            for p in 0..=position {
                let key = &keys[p * kv_stride + kv_head * head_dim..][..head_dim];
                let s: f64 = query.iter().zip(key).map(|(&a, &b)| a as f64 * b as f64).sum();
                scores.push(s * scale);
            }
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            let output = &mut out[(t * n_head + h) * head_dim..][..head_dim];
            for (d, o) in output.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for (p, &w) in scores.iter().enumerate() {
                    acc += w * values[p * kv_stride + kv_head * head_dim + d] as f64;
                }
                *o = (acc / total) as f32;
            }
        }
    }
}

/// Attention as llama.cpp's CPU flash attention computes it over an f16 cache: batches of 64 or
/// more query tokens take its tiled path, f32 throughout (which is [`causal_attention`] on the
/// f16-rounded cache), smaller ones its one-row path ([`causal_attention_f16`]).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_llamacpp(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    let n_tokens = q.len() / (n_head * head_dim);
    let attention = if n_tokens >= 64 { causal_attention } else { causal_attention_f16 };
    attention(q, keys, values, out, start, n_head, n_head_kv, head_dim)
}

/// The same attention computed the way llama.cpp's CPU flash-attention kernel computes it for a
/// few query tokens, so that greedy continuations can be compared with llama.cpp's: keys and values
/// are f16 (the cache rounds them when written), the query is rounded to f16, scores are f32,
/// and the weighted sum of values is accumulated in f16 with an online softmax (a new maximum
/// rescales the f16 accumulator), then divided by the f32 sum.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_f16(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    use half::f16;
    let n_tokens = q.len() / (n_head * head_dim);
    let group = n_head / n_head_kv;
    let kv_stride = n_head_kv * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut accumulator = vec![f16::ZERO; head_dim];
    for t in 0..n_tokens {
        let position = start + t;
        for h in 0..n_head {
            let kv_head = h / group;
            let query: Vec<f32> = q[(t * n_head + h) * head_dim..][..head_dim]
                .iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect();
            accumulator.fill(f16::ZERO);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for p in 0..=position {
                let key = &keys[p * kv_stride + kv_head * head_dim..][..head_dim];
                let s = super::matmul::dot(&query, key) * scale;
                let value = &values[p * kv_stride + kv_head * head_dim..][..head_dim];
                let (rescale, weight) = if s > max {
                    let rescale = (max - s).exp();
                    max = s;
                    for a in accumulator.iter_mut() {
                        *a = f16::from_f32(a.to_f32() * rescale);
                    }
                    (rescale, 1.0)
                } else {
                    (1.0, (s - max).exp())
                };
                for (a, &v) in accumulator.iter_mut().zip(value) {
                    *a = f16::from_f32(a.to_f32() + v * weight);
                }
                sum = sum * rescale + weight;
            }
            let inverse = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (o, a) in out[(t * n_head + h) * head_dim..][..head_dim].iter_mut().zip(&accumulator) {
                *o = a.to_f32() * inverse;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_position_attends_only_to_itself() {
        let (q, k, v) = ([1.0, 0.0], [5.0, 5.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]);
        let mut out = [0.0; 2];
        causal_attention(&q, &k, &v, &mut out, 0, 1, 1, 2);
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn the_f16_form_agrees_with_the_exact_one_to_f16_precision() {
        let n = 7 * 2 * 16;
        let q: Vec<f32> = (0..n).map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.11).collect();
        let kv: Vec<f32> =
            (0..7 * 16).map(|i| half::f16::from_f32(((i * 13 % 11) as f32 - 5.0) * 0.2).to_f32()).collect();
        let (mut exact, mut f16) = (vec![0.0; n], vec![0.0; n]);
        causal_attention(&q, &kv, &kv, &mut exact, 0, 2, 1, 16);
        causal_attention_f16(&q, &kv, &kv, &mut f16, 0, 2, 1, 16);
        let worst = exact.iter().zip(&f16).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 5e-3 && worst > 0.0, "largest difference {worst}");
    }

    #[test]
    fn equal_scores_average_the_values() {
        // Two query heads share one KV head; both keys score equally.
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [1.0, 1.0, 1.0, 1.0];
        let v = [0.0, 2.0, 4.0, 6.0];
        let mut out = [0.0; 4];
        causal_attention(&q, &k, &v, &mut out, 1, 2, 1, 2);
        assert_eq!(out, [2.0, 4.0, 2.0, 4.0]);
    }
}
