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
