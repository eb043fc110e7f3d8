//! Causal self-attention over a KV cache, with grouped-query heads.
//!
//! For query head h at absolute position p: scores over cached positions 0..=p of KV head
//! h / (n_head / n_head_kv), scaled by 1/sqrt(head_dim), softmax, weighted sum of values.

/// The shape checks and the thread split that the pooled forms below share: q [n_tokens, n_head,
/// head_dim] at positions start..start+n_tokens; keys and values [n_cached, n_head_kv, head_dim]
/// with n_cached >= start + n_tokens; out like q. Calls `head(scratch, query, position, kv_head,
/// row)` for every (token, head) pair on the pool's threads, with a scratch per thread and `row`
/// the pair's head_dim outputs to fill. The pairs are independent, so the numbers do not depend
/// on the split.
#[allow(clippy::too_many_arguments)]
fn each_head_on_the_pool<S: Default>(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    (n_head, n_head_kv, head_dim): (usize, usize, usize),
    head: impl Fn(&mut S, &[f32], usize, usize, &mut [f32]) + Sync,
) {
    let n_tokens = q.len() / (n_head * head_dim);
    assert_eq!(out.len(), q.len());
    assert!(n_head.is_multiple_of(n_head_kv));
    let group = n_head / n_head_kv;
    let kv_stride = n_head_kv * head_dim;
    assert!(keys.len() >= (start + n_tokens) * kv_stride && values.len() >= (start + n_tokens) * kv_stride);
    let output = super::threads::SharedOutput(out.as_mut_ptr());
    super::threads::pool().run(&|part, parts| {
        let mut scratch = S::default();
        let mut row = vec![0.0f32; head_dim];
        for pair in super::threads::split(n_tokens * n_head, part, parts) {
            let (t, h) = (pair / n_head, pair % n_head);
            head(&mut scratch, &q[pair * head_dim..][..head_dim], start + t, h / group, &mut row);
            for (d, &value) in row.iter().enumerate() {
                // SAFETY: pair (t, h) belongs to this part only; the index is within out.
                unsafe { output.write(pair * head_dim + d, value) };
            }
        }
    });
}

/// q [n_tokens, n_head, head_dim] at positions start..start+n_tokens; keys and values
/// [n_cached, n_head_kv, head_dim] with n_cached >= start + n_tokens; out like q. Sums in f64.
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
    let kv_stride = n_head_kv * head_dim;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let shape = (n_head, n_head_kv, head_dim);
    each_head_on_the_pool(
        q,
        keys,
        values,
        out,
        start,
        shape,
        |scratch: &mut (Vec<f64>, Vec<f64>), query, position, kv_head, row| {
            let (scores, accumulator) = scratch;
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
            // Position by position (each value row read once, in order); every output element
            // still sums its terms in position order.
            accumulator.clear();
            accumulator.resize(head_dim, 0.0);
            for (p, &w) in scores.iter().enumerate() {
                let value = &values[p * kv_stride + kv_head * head_dim..][..head_dim];
                for (a, &v) in accumulator.iter_mut().zip(value) {
                    *a += w * v as f64;
                }
            }
            for (o, &a) in row.iter_mut().zip(accumulator.iter()) {
                *o = (a / total) as f32;
            }
        },
    );
}

/// The general form of causal attention that the GPU's paged kernels compute.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions<'a> {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Factor on q . k.
    pub scale: f32,
    /// Position p attends to j with p - window < j <= p; 0 = every j <= p.
    pub window: usize,
    /// One learned logit per query head that joins the softmax's denominator only.
    pub sinks: Option<&'a [f32]>,
}

/// Causal attention with an explicit scale, an optional sliding window and optional attention
/// sinks, accumulated in f64. q [n_tokens, n_head, head_dim] at positions start..start+n_tokens;
/// keys and values [n_cached, n_head_kv, head_dim] with n_cached >= start + n_tokens; out like q.
/// For query head h at position p with visible positions J: s_j = scale q . k_j, m = max(sink_h,
/// max_j s_j), w_j = exp(s_j - m) / (exp(sink_h - m) + sum_k exp(s_k - m)), out = sum_j w_j v_j
/// (no sink: the usual softmax).
pub fn causal_attention_with(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    options: &AttentionOptions,
) {
    let AttentionOptions { n_head, n_head_kv, head_dim, scale, window, sinks } = *options;
    let n_tokens = q.len() / (n_head * head_dim);
    assert_eq!(out.len(), q.len());
    assert!(n_head.is_multiple_of(n_head_kv));
    assert!(sinks.is_none_or(|s| s.len() == n_head));
    let group = n_head / n_head_kv;
    let kv_stride = n_head_kv * head_dim;
    assert!(keys.len() >= (start + n_tokens) * kv_stride && values.len() == keys.len());
    let mut scores = Vec::new();
    for t in 0..n_tokens {
        let position = start + t;
        let first = if window > 0 { (position + 1).saturating_sub(window) } else { 0 };
        for h in 0..n_head {
            let kv_head = h / group;
            let query = &q[(t * n_head + h) * head_dim..][..head_dim];
            scores.clear();
            for p in first..=position {
                let key = &keys[p * kv_stride + kv_head * head_dim..][..head_dim];
                let s: f64 = query.iter().zip(key).map(|(&a, &b)| a as f64 * b as f64).sum();
                scores.push(s * scale as f64);
            }
            let sink = sinks.map(|s| s[h] as f64);
            let max = scores.iter().copied().fold(sink.unwrap_or(f64::NEG_INFINITY), f64::max);
            let mut total = sink.map_or(0.0, |s| (s - max).exp());
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            let output = &mut out[(t * n_head + h) * head_dim..][..head_dim];
            for (d, o) in output.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for (i, &w) in scores.iter().enumerate() {
                    acc += w * values[(first + i) * kv_stride + kv_head * head_dim + d] as f64;
                }
                *o = (acc / total) as f32;
            }
        }
    }
}

/// `x` rounded to the nearest f16 (ties to even), as f32. Normal f16 range by bit arithmetic (the
/// value of a conversion there and back, without the conversions); the rest through `half`.
#[inline]
pub fn round_f16(x: f32) -> f32 {
    let magnitude = x.abs();
    if (6.103_515_6e-5..65504.0).contains(&magnitude) {
        // f32 keeps 23 fraction bits, f16 10: round off the low 13, ties to even.
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x0FFF + ((bits >> 13) & 1)) & !0x1FFF;
        f32::from_bits(rounded)
    } else {
        half::f16::from_f32(x).to_f32()
    }
}

/// Attention as llama.cpp's CPU flash attention computes it over an f16 cache (keys and values
/// as `E`: the f16 pool's own elements, or f32 holding f16-rounded values): batches of 64 or more
/// query tokens take its tiled path, f32 throughout ([`causal_attention_f32`] on the cache
/// converted to f32 once), smaller ones its one-row path ([`causal_attention_f16`], which reads
/// the elements as they are).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_llamacpp<E: CachedElement>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    let n_tokens = q.len() / (n_head * head_dim);
    if n_tokens >= 64 {
        let (keys, values) = (E::to_f32(keys), E::to_f32(values));
        causal_attention_f32(q, &keys, &values, out, start, n_head, n_head_kv, head_dim)
    } else {
        causal_attention_f16(q, keys, values, out, start, n_head, n_head_kv, head_dim)
    }
}

/// An element of a cached key or value row: f32, or the f16 the `llama-cpp` numerics store.
/// Converting f16 to f32 is exact, so each operation gives the same bits on an f16 row as on
/// the f32 row of its values.
pub trait CachedElement: Copy + Send + Sync {
    /// [`super::matmul::dot`] of an f32 query with a cached row.
    fn dot(query: &[f32], row: &[Self]) -> f32;
    /// a = round_f16(a + v * weight) for every a and its v.
    fn add_rounding_to_f16(accumulator: &mut [f32], value: &[Self], weight: f32);
    /// The rows as f32.
    fn to_f32(rows: &[Self]) -> std::borrow::Cow<'_, [f32]>;
}

impl CachedElement for f32 {
    fn dot(query: &[f32], row: &[f32]) -> f32 {
        super::matmul::dot(query, row)
    }

    fn add_rounding_to_f16(accumulator: &mut [f32], value: &[f32], weight: f32) {
        add_rounding_to_f16(accumulator, value, weight)
    }

    fn to_f32(rows: &[f32]) -> std::borrow::Cow<'_, [f32]> {
        std::borrow::Cow::Borrowed(rows)
    }
}

impl CachedElement for half::f16 {
    fn dot(query: &[f32], row: &[half::f16]) -> f32 {
        assert_eq!(query.len(), row.len());
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c") {
            // SAFETY: AVX and F16C are present.
            return unsafe { f16c::dot(query, row) };
        }
        // The lanes of matmul::dot_scalar, on the converted values.
        let mut lanes = [0.0f32; 8];
        let (q_chunks, r_chunks) = (query.chunks_exact(8), row.chunks_exact(8));
        let tail: f32 =
            q_chunks.remainder().iter().zip(r_chunks.remainder()).map(|(x, y)| x * y.to_f32()).sum();
        for (x, y) in q_chunks.zip(r_chunks) {
            for k in 0..8 {
                lanes[k] += x[k] * y[k].to_f32();
            }
        }
        lanes.iter().sum::<f32>() + tail
    }

    fn add_rounding_to_f16(accumulator: &mut [f32], value: &[half::f16], weight: f32) {
        assert!(value.len() >= accumulator.len());
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c") {
            // SAFETY: AVX and F16C are present.
            return unsafe { f16c::add_scaled_f16(accumulator, value, weight) };
        }
        for (a, &v) in accumulator.iter_mut().zip(value) {
            *a = round_f16(*a + v.to_f32() * weight);
        }
    }

    fn to_f32(rows: &[half::f16]) -> std::borrow::Cow<'_, [f32]> {
        let mut out = vec![0.0f32; rows.len()];
        half::slice::HalfFloatSliceExt::convert_to_f32_slice(rows, &mut out);
        std::borrow::Cow::Owned(out)
    }
}

/// [`causal_attention`] in f32, as llama.cpp's tiled flash attention computes a prompt's: scores
/// by eight-lane dot products ([`super::matmul::dot`]), an f32 softmax, the weighted values summed
/// position by position in f32 (eight lanes of d at a time), divided by the f32 sum at the end.
/// The f64 form's sums run in one chain per score, which made a 64-token prompt's attention a
/// tenth of its time; this one is within f32 rounding of it (the tests bound the difference).
/// Blocked: one part takes the queries of BLOCK_TOKENS tokens for every head of one KV head's
/// group and walks the keys (then the values) once for all of them, so that each key and value
/// row is read once per block rather than once per query (a 2,000-token prompt streamed its
/// whole cache from L2 for every query and head). Each query's operations are those of
/// [`causal_attention_f32_by_query`], in the same order, so the bits are too.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_f32(
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
    assert!(keys.len() >= (start + n_tokens) * kv_stride && values.len() >= (start + n_tokens) * kv_stride);
    let scale = 1.0 / (head_dim as f32).sqrt();
    let n_blocks = n_tokens.div_ceil(BLOCK_TOKENS);
    let output = super::threads::SharedOutput(out.as_mut_ptr());
    // Parts claimed dynamically, the latest blocks (the most positions) first.
    super::threads::pool().run_parts(n_blocks * n_head_kv, &|unit, _| {
        let (block, kv_head) = (n_blocks - 1 - unit / n_head_kv, unit % n_head_kv);
        let tokens = block * BLOCK_TOKENS..((block + 1) * BLOCK_TOKENS).min(n_tokens);
        let block =
            Block { q, keys, values, start, tokens, kv_head, group, n_head, head_dim, kv_stride, scale };
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            // SAFETY: AVX is present.
            return unsafe { avx::attend(&block, &output) };
        }
        block.attend(&output, super::matmul::dot_scalar, |row, v, weight| {
            for (a, &x) in row.iter_mut().zip(v) {
                *a += x * weight;
            }
        });
    });
}

/// One part of [`causal_attention_f32`]: the queries of `tokens` for the heads of `kv_head`'s
/// group.
struct Block<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    start: usize,
    tokens: std::ops::Range<usize>,
    kv_head: usize,
    group: usize,
    n_head: usize,
    head_dim: usize,
    kv_stride: usize,
    scale: f32,
}

impl Block<'_> {
    /// The block's outputs, with `dot` ([`super::matmul::dot`]'s arithmetic) for the scores and
    /// `add_scaled` (row += v * weight) for the values; inlined into the AVX form.
    #[inline(always)]
    fn attend(
        &self,
        output: &super::threads::SharedOutput,
        dot: impl Fn(&[f32], &[f32]) -> f32,
        add_scaled: impl Fn(&mut [f32], &[f32], f32),
    ) {
        let &Block { q, keys, values, start, ref tokens, kv_head, group, n_head, head_dim, kv_stride, scale } =
            self;
        // The block's queries (token t, head h), token-major.
        let queries: Vec<(usize, usize)> = tokens
            .clone()
            .flat_map(|t| (kv_head * group..(kv_head + 1) * group).map(move |h| (t, h)))
            .collect();
        let width = start + tokens.end;
        let key = |p: usize| &keys[p * kv_stride + kv_head * head_dim..][..head_dim];
        let value = |p: usize| &values[p * kv_stride + kv_head * head_dim..][..head_dim];
        let query = |(t, h): (usize, usize)| &q[(t * n_head + h) * head_dim..][..head_dim];
        let mut scores = vec![0.0f32; queries.len() * width];
        for p in 0..width {
            let k = key(p);
            for (i, &(t, h)) in queries.iter().enumerate() {
                if p <= start + t {
                    scores[i * width + p] = dot(query((t, h)), k) * scale;
                }
            }
        }
        let mut totals = vec![0.0f32; queries.len()];
        for (i, &(t, _)) in queries.iter().enumerate() {
            let scores = &mut scores[i * width..][..start + t + 1];
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                totals[i] += *s;
            }
        }
        let mut rows = vec![0.0f32; queries.len() * head_dim];
        for p in 0..width {
            let v = value(p);
            for (i, &(t, _)) in queries.iter().enumerate() {
                if p <= start + t {
                    add_scaled(&mut rows[i * head_dim..][..head_dim], v, scores[i * width + p]);
                }
            }
        }
        for (i, &(t, h)) in queries.iter().enumerate() {
            let inverse = 1.0 / totals[i];
            for (d, &a) in rows[i * head_dim..][..head_dim].iter().enumerate() {
                // SAFETY: the pair (t, h) belongs to this part only; the index is within out.
                unsafe { output.write((t * n_head + h) * head_dim + d, a * inverse) };
            }
        }
    }
}

/// Tokens per block of [`causal_attention_f32`]: with a group of 3 to 8 heads, 48 to 128 query and
/// output rows stay in L1/L2 while the key and value rows stream past once.
const BLOCK_TOKENS: usize = 16;

#[cfg(target_arch = "x86_64")]
mod avx {
    use super::Block;
    use crate::cpu::threads::SharedOutput;
    use std::arch::x86_64::*;

    /// [`Block::attend`] compiled for AVX: matmul's AVX dot, and row += v * weight eight lanes at
    /// a time (a product, then a sum, as the scalar form: the same bits in any width).
    #[target_feature(enable = "avx")]
    pub unsafe fn attend(block: &Block, output: &SharedOutput) {
        // SAFETY (both closures): AVX is present (this function's feature).
        block.attend(
            output,
            |a, b| unsafe { crate::cpu::matmul::dot_avx(a, b) },
            |row, v, weight| unsafe { add_scaled(row, v, weight) },
        );
    }

    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn add_scaled(row: &mut [f32], v: &[f32], weight: f32) {
        assert!(v.len() >= row.len());
        let whole = row.len() / 8 * 8;
        let w = _mm256_set1_ps(weight);
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= row.len() <= v.len().
            unsafe {
                let p = row.as_mut_ptr().add(i);
                _mm256_storeu_ps(
                    p,
                    _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(_mm256_loadu_ps(v.as_ptr().add(i)), w)),
                );
            }
        }
        for (a, &x) in row[whole..].iter_mut().zip(&v[whole..]) {
            *a += x * weight;
        }
    }
}

/// [`causal_attention_f32`] one query at a time (each (token, head) pair walks the whole cache):
/// the reference the blocked form is checked against, bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_f32_by_query(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    let kv_stride = n_head_kv * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let shape = (n_head, n_head_kv, head_dim);
    each_head_on_the_pool(
        q,
        keys,
        values,
        out,
        start,
        shape,
        |scores: &mut Vec<f32>, query, position, kv_head, row| {
            scores.clear();
            scores.extend((0..=position).map(|p| {
                super::matmul::dot(query, &keys[p * kv_stride + kv_head * head_dim..][..head_dim]) * scale
            }));
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            row.fill(0.0);
            for (p, &w) in scores.iter().enumerate() {
                let value = &values[p * kv_stride + kv_head * head_dim..][..head_dim];
                for (a, &v) in row.iter_mut().zip(value) {
                    *a += w * v;
                }
            }
            let inverse = 1.0 / total;
            for a in row.iter_mut() {
                *a *= inverse;
            }
        },
    );
}

/// The same attention computed the way llama.cpp's CPU flash-attention kernel computes it for a
/// few query tokens, so that greedy continuations can be compared with llama.cpp's: keys and values
/// are f16 (the cache rounds them when written), the query is rounded to f16, scores are f32,
/// and the weighted sum of values is accumulated in f16 with an online softmax (a new maximum
/// rescales the f16 accumulator), then divided by the f32 sum.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_f16<E: CachedElement>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    out: &mut [f32],
    start: usize,
    n_head: usize,
    n_head_kv: usize,
    head_dim: usize,
) {
    let n_tokens = q.len() / (n_head * head_dim);
    assert_eq!(out.len(), q.len());
    let group = n_head / n_head_kv;
    let kv_stride = n_head_kv * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // The (token, head) pairs are independent: split them over the pool's threads.
    let output = super::threads::SharedOutput(out.as_mut_ptr());
    super::threads::pool().run(&|part, parts| {
        let mut accumulator = vec![0.0f32; head_dim];
        let mut query = vec![0.0f32; head_dim];
        for pair in super::threads::split(n_tokens * n_head, part, parts) {
            let (t, h) = (pair / n_head, pair % n_head);
            let position = start + t;
            let kv_head = h / group;
            for (r, &v) in query.iter_mut().zip(&q[(t * n_head + h) * head_dim..][..head_dim]) {
                *r = round_f16(v);
            }
            accumulator.fill(0.0);
            let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f32);
            for p in 0..=position {
                let key = &keys[p * kv_stride + kv_head * head_dim..][..head_dim];
                let s = E::dot(&query, key) * scale;
                let value = &values[p * kv_stride + kv_head * head_dim..][..head_dim];
                let (rescale, weight) = if s > max {
                    let rescale = (max - s).exp();
                    max = s;
                    scale_rounding_to_f16(&mut accumulator, rescale);
                    (rescale, 1.0)
                } else {
                    (1.0, (s - max).exp())
                };
                E::add_rounding_to_f16(&mut accumulator, value, weight);
                sum = sum * rescale + weight;
            }
            let inverse = if sum == 0.0 { 0.0 } else { 1.0 / sum };
            for (d, a) in accumulator.iter().enumerate() {
                // SAFETY: pair (t, h) belongs to this part only; the index is within out.
                unsafe { output.write((t * n_head + h) * head_dim + d, a * inverse) };
            }
        }
    });
}

/// a = round_f16(a * factor) for every a. F16C's conversions round to nearest even, as
/// [`round_f16`] does, so both forms give the same bits.
fn scale_rounding_to_f16(accumulator: &mut [f32], factor: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c") {
        // SAFETY: AVX and F16C are present.
        return unsafe { f16c::scale(accumulator, factor) };
    }
    for a in accumulator.iter_mut() {
        *a = round_f16(*a * factor);
    }
}

/// a = round_f16(a + v * weight) for every a and its v (a product, then a sum, both in f32).
fn add_rounding_to_f16(accumulator: &mut [f32], value: &[f32], weight: f32) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx") && is_x86_feature_detected!("f16c") {
        // SAFETY: AVX and F16C are present.
        return unsafe { f16c::add_scaled(accumulator, value, weight) };
    }
    for (a, &v) in accumulator.iter_mut().zip(value) {
        *a = round_f16(*a + v * weight);
    }
}

#[cfg(target_arch = "x86_64")]
mod f16c {
    use super::round_f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx,f16c")]
    fn round(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn scale(accumulator: &mut [f32], factor: f32) {
        let whole = accumulator.len() / 8 * 8;
        let f = _mm256_set1_ps(factor);
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= len.
            unsafe {
                let p = accumulator.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, round(_mm256_mul_ps(_mm256_loadu_ps(p), f)));
            }
        }
        for a in &mut accumulator[whole..] {
            *a = round_f16(*a * factor);
        }
    }

    /// Eight f16 at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx,f16c")]
    unsafe fn load_f16(p: *const half::f16) -> __m256 {
        // SAFETY: the caller has eight f16 at p (f16 is a u16 in memory).
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }

    /// matmul::dot_avx's lanes and order, the row converted from f16 on the way.
    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn dot(query: &[f32], row: &[half::f16]) -> f32 {
        let whole = query.len() / 8 * 8;
        let mut accumulator = _mm256_setzero_ps();
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= whole <= query.len() == row.len().
            let (x, y) = unsafe { (_mm256_loadu_ps(query.as_ptr().add(i)), load_f16(row.as_ptr().add(i))) };
            accumulator = _mm256_add_ps(accumulator, _mm256_mul_ps(x, y));
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: lanes holds eight f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), accumulator) };
        let tail: f32 = query[whole..].iter().zip(&row[whole..]).map(|(x, y)| x * y.to_f32()).sum();
        lanes.iter().sum::<f32>() + tail
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn add_scaled_f16(accumulator: &mut [f32], value: &[half::f16], weight: f32) {
        let whole = accumulator.len() / 8 * 8;
        let w = _mm256_set1_ps(weight);
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= len <= value.len() (checked by the caller).
            unsafe {
                let p = accumulator.as_mut_ptr().add(i);
                let v = load_f16(value.as_ptr().add(i));
                _mm256_storeu_ps(p, round(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(v, w))));
            }
        }
        for (a, &v) in accumulator[whole..].iter_mut().zip(&value[whole..]) {
            *a = round_f16(*a + v.to_f32() * weight);
        }
    }

    #[target_feature(enable = "avx,f16c")]
    pub unsafe fn add_scaled(accumulator: &mut [f32], value: &[f32], weight: f32) {
        assert!(value.len() >= accumulator.len());
        let whole = accumulator.len() / 8 * 8;
        let w = _mm256_set1_ps(weight);
        for i in (0..whole).step_by(8) {
            // SAFETY: i + 8 <= len <= value.len().
            unsafe {
                let p = accumulator.as_mut_ptr().add(i);
                let v = _mm256_loadu_ps(value.as_ptr().add(i));
                _mm256_storeu_ps(p, round(_mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(v, w))));
            }
        }
        for (a, &v) in accumulator[whole..].iter_mut().zip(&value[whole..]) {
            *a = round_f16(*a + v * weight);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_f16c_rounding_steps_match_the_scalar_ones(
            values in proptest::collection::vec((-70000.0f32..70000.0, -3.0f32..3.0), 1..40),
            factor in 0.0f32..1.0,
            weight in 0.0f32..1.0,
        ) {
            let (accumulator, value): (Vec<f32>, Vec<f32>) = values.into_iter().unzip();
            let mut scaled = accumulator.clone();
            scale_rounding_to_f16(&mut scaled, factor);
            let mut added = accumulator.clone();
            add_rounding_to_f16(&mut added, &value, weight);
            // The f16 rows' form, on the values rounded to f16.
            let value16: Vec<half::f16> = value.iter().map(|&v| half::f16::from_f32(v)).collect();
            let mut added16 = accumulator.clone();
            <half::f16 as CachedElement>::add_rounding_to_f16(&mut added16, &value16, weight);
            for i in 0..accumulator.len() {
                let expected = round_f16(accumulator[i] + value16[i].to_f32() * weight);
                proptest::prop_assert_eq!(added16[i].to_bits(), expected.to_bits());
            }
            for i in 0..accumulator.len() {
                proptest::prop_assert_eq!(scaled[i].to_bits(), round_f16(accumulator[i] * factor).to_bits());
                proptest::prop_assert_eq!(added[i].to_bits(), round_f16(accumulator[i] + value[i] * weight).to_bits());
            }
        }
    }

    #[test]
    fn first_position_attends_only_to_itself() {
        let (q, k, v) = ([1.0, 0.0], [5.0, 5.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]);
        let mut out = [0.0; 2];
        causal_attention(&q, &k, &v, &mut out, 0, 1, 1, 2);
        assert_eq!(out, [1.0, 2.0]);
    }

    #[test]
    fn f16_rounding_matches_a_conversion_there_and_back() {
        let mut state = 0x1234_5678u32;
        for _ in 0..200_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = f32::from_bits(state);
            if x.is_finite() {
                let expected = half::f16::from_f32(x).to_f32();
                assert_eq!(round_f16(x).to_bits(), expected.to_bits(), "{x:e}");
            }
        }
        for x in [65504.0f32, 65519.0, 65520.0, 6.1035156e-5, 6.1e-5, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0]
        {
            assert_eq!(round_f16(x), half::f16::from_f32(x).to_f32(), "{x:e}");
        }
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

    proptest::proptest! {
        /// The f16 pool's rows give the bits its f32 twin (the same values as f32) gives, in both
        /// of llama.cpp's paths (one-row for 1-63 tokens, tiled from 64); the f16 dot (F16C where
        /// the machine has it) matches the scalar lanes of matmul::dot_scalar.
        #[test]
        fn f16_rows_give_the_bits_of_the_same_values_in_f32(
            seed in 0u32..1000,
            n_tokens in proptest::prop_oneof![1usize..=5, 64usize..=66],
            start in 0usize..40,
            head_dim in proptest::prop_oneof![proptest::strategy::Just(64usize), proptest::strategy::Just(13usize)],
        ) {
            let (n_head, n_head_kv) = (4, 2);
            let mut state = seed.wrapping_mul(2_654_435_761) | 1;
            let mut random = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 6.0
            };
            let q: Vec<f32> = (0..n_tokens * n_head * head_dim).map(|_| random()).collect();
            let len = (start + n_tokens) * n_head_kv * head_dim;
            let keys16: Vec<half::f16> = (0..len).map(|_| half::f16::from_f32(random())).collect();
            let values16: Vec<half::f16> = (0..len).map(|_| half::f16::from_f32(random())).collect();
            let (keys, values): (Vec<f32>, Vec<f32>) =
                (keys16.iter().map(|v| v.to_f32()).collect(), values16.iter().map(|v| v.to_f32()).collect());
            let (mut from_f32, mut from_f16) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            causal_attention_llamacpp(&q, &keys, &values, &mut from_f32, start, n_head, n_head_kv, head_dim);
            causal_attention_llamacpp(&q, &keys16, &values16, &mut from_f16, start, n_head, n_head_kv, head_dim);
            for (a, b) in from_f32.iter().zip(&from_f16) {
                proptest::prop_assert_eq!(a.to_bits(), b.to_bits());
            }
            // The scalar forms of the f16 row operations against the f32 ones.
            let (query, row16) = (&q[..head_dim], &keys16[..head_dim]);
            let scalar: f32 = {
                let mut lanes = [0.0f32; 8];
                let (qc, rc) = (query.chunks_exact(8), row16.chunks_exact(8));
                let tail: f32 = qc.remainder().iter().zip(rc.remainder()).map(|(x, y)| x * y.to_f32()).sum();
                for (x, y) in qc.zip(rc) {
                    for k in 0..8 {
                        lanes[k] += x[k] * y[k].to_f32();
                    }
                }
                lanes.iter().sum::<f32>() + tail
            };
            proptest::prop_assert_eq!(<half::f16 as CachedElement>::dot(query, row16).to_bits(), scalar.to_bits());
            proptest::prop_assert_eq!(super::super::matmul::dot_scalar(query, &keys[..head_dim]).to_bits(), scalar.to_bits());
        }
    }

    proptest::proptest! {
        /// The blocked f32 form against the one-query-at-a-time form: the same bits, over blocks
        /// cut short, offsets into the cache, groups of 1 to 4 and odd head dims.
        #[test]
        fn the_blocked_f32_form_gives_the_bits_of_the_by_query_one(
            seed in 0u32..1000, n_tokens in 1usize..=40, start in 0usize..30,
            (n_head_kv, group) in (1usize..=3, 1usize..=4), head_dim in proptest::prop_oneof![proptest::strategy::Just(64usize), 1usize..=20],
        ) {
            let n_head = n_head_kv * group;
            let mut state = seed.wrapping_mul(2_654_435_761) | 1;
            let mut random = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 - 0.5) * 6.0
            };
            let q: Vec<f32> = (0..n_tokens * n_head * head_dim).map(|_| random()).collect();
            let len = (start + n_tokens) * n_head_kv * head_dim;
            let keys: Vec<f32> = (0..len).map(|_| random()).collect();
            let values: Vec<f32> = (0..len).map(|_| random()).collect();
            let (mut blocked, mut by_query) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            causal_attention_f32(&q, &keys, &values, &mut blocked, start, n_head, n_head_kv, head_dim);
            causal_attention_f32_by_query(&q, &keys, &values, &mut by_query, start, n_head, n_head_kv, head_dim);
            for (a, b) in blocked.iter().zip(&by_query) {
                proptest::prop_assert_eq!(a.to_bits(), b.to_bits());
            }
        }
    }

    #[test]
    fn the_f32_form_agrees_with_the_exact_one_to_f32_precision() {
        let (n_head, n_head_kv, head_dim, n_tokens, start) = (4, 2, 64, 70, 5);
        let q: Vec<f32> =
            (0..n_tokens * n_head * head_dim).map(|i| ((i * 29 % 17) as f32 - 8.0) * 0.11).collect();
        let kv: Vec<f32> = (0..(start + n_tokens) * n_head_kv * head_dim)
            .map(|i| ((i * 13 % 11) as f32 - 5.0) * 0.2 + (i as f32 * 0.37).sin())
            .collect();
        let (mut exact, mut f32s) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        causal_attention(&q, &kv, &kv, &mut exact, start, n_head, n_head_kv, head_dim);
        causal_attention_f32(&q, &kv, &kv, &mut f32s, start, n_head, n_head_kv, head_dim);
        let worst = exact.iter().zip(&f32s).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 2e-5 && worst > 0.0, "largest difference {worst}");
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

    fn options(n_head: usize, n_head_kv: usize, head_dim: usize) -> AttentionOptions<'static> {
        AttentionOptions { n_head, n_head_kv, head_dim, scale: 1.0, window: 0, sinks: None }
    }

    #[test]
    fn the_general_form_without_options_is_causal_attention() {
        let (n_head, n_head_kv, head_dim, n) = (4, 2, 8, 5);
        let q: Vec<f32> = (0..n * n_head * head_dim).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.07).collect();
        let kv: Vec<f32> =
            (0..(n + 2) * n_head_kv * head_dim).map(|i| ((i * 13 % 19) as f32 - 9.0) * 0.1).collect();
        let (mut expected, mut actual) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        causal_attention(&q, &kv, &kv, &mut expected, 2, n_head, n_head_kv, head_dim);
        // 1/sqrt(8) rounded to f32 is within 3e-8 of the f64 scale causal_attention uses.
        let scale = 1.0 / (head_dim as f32).sqrt();
        causal_attention_with(
            &q,
            &kv,
            &kv,
            &mut actual,
            2,
            &AttentionOptions { scale, ..options(n_head, n_head_kv, head_dim) },
        );
        for (a, e) in actual.iter().zip(&expected) {
            assert!((a - e).abs() < 1e-6, "{a} vs {e}");
        }
    }

    #[test]
    fn a_sink_takes_its_share_of_the_weight() {
        // One key with score 0 against a sink of 0: w = 1 / (1 + 1). A sink of ln 3: w = 1 / 4.
        let (q, k, v) = ([1.0, 0.0], [0.0, 5.0], [4.0, -8.0]);
        let mut out = [0.0; 2];
        causal_attention_with(
            &q,
            &k,
            &v,
            &mut out,
            0,
            &AttentionOptions { sinks: Some(&[0.0]), ..options(1, 1, 2) },
        );
        assert_eq!(out, [2.0, -4.0]);
        let sink = [3.0f32.ln()];
        causal_attention_with(
            &q,
            &k,
            &v,
            &mut out,
            0,
            &AttentionOptions { sinks: Some(&sink), ..options(1, 1, 2) },
        );
        assert!((out[0] - 1.0).abs() < 1e-6 && (out[1] + 2.0).abs() < 1e-6, "{out:?}");
        // A sink far below the scores changes nothing.
        causal_attention_with(
            &q,
            &k,
            &v,
            &mut out,
            0,
            &AttentionOptions { sinks: Some(&[-1e4]), ..options(1, 1, 2) },
        );
        assert_eq!(out, [4.0, -8.0]);
    }

    #[test]
    fn a_window_hides_older_positions() {
        // Three positions, values 1, 2, 4 (head_dim 1), equal scores. The last token sees all three
        // (mean 7/3) without a window, the last two (3) with window 2, itself (4) with window 1.
        let (q, k, v) = ([1.0f32], [1.0f32, 1.0, 1.0], [1.0f32, 2.0, 4.0]);
        let mut out = [0.0f32];
        for (window, expected) in [(0, 7.0 / 3.0), (3, 7.0 / 3.0), (2, 3.0), (1, 4.0)] {
            causal_attention_with(&q, &k, &v, &mut out, 2, &AttentionOptions { window, ..options(1, 1, 1) });
            assert!((out[0] - expected).abs() < 1e-6, "window {window}: {} vs {expected}", out[0]);
        }
    }

    /// Attention written the way transformers' eager gpt-oss attention computes it: the full score
    /// matrix over every cached position, an additive mask of -inf for positions after the query or
    /// `window` or more behind it (transformers' sliding-window rule: visible iff q - k < window), the
    /// sink appended as one more column, softmax over the row, the sink's column dropped.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], start: usize, o: &AttentionOptions) -> Vec<f64> {
        let (n_head, head_dim) = (o.n_head, o.head_dim);
        let n_tokens = q.len() / (n_head * head_dim);
        let kv_stride = o.n_head_kv * head_dim;
        let n_cached = keys.len() / kv_stride;
        let mut out = vec![0.0f64; q.len()];
        for t in 0..n_tokens {
            let qp = start + t;
            for h in 0..n_head {
                let kv_head = h * o.n_head_kv / n_head;
                let mut row: Vec<f64> = (0..n_cached)
                    .map(|j| {
                        let masked = j > qp || (o.window > 0 && qp - j >= o.window);
                        if masked {
                            return f64::NEG_INFINITY;
                        }
                        let dot: f64 = (0..head_dim)
                            .map(|d| {
                                q[(t * n_head + h) * head_dim + d] as f64
                                    * keys[j * kv_stride + kv_head * head_dim + d] as f64
                            })
                            .sum();
                        dot * o.scale as f64
                    })
                    .collect();
                row.push(o.sinks.map_or(f64::NEG_INFINITY, |s| s[h] as f64));
                let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = row.iter().map(|&s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for d in 0..head_dim {
                    out[(t * n_head + h) * head_dim + d] = (0..n_cached)
                        .map(|j| exps[j] / total * values[j * kv_stride + kv_head * head_dim + d] as f64)
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn sinks_and_windows_agree_with_a_dense_masked_softmax() {
        let mut state = 0x9e37_79b9u32;
        let mut random = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        let mut checked = 0;
        for (n_head, n_head_kv, head_dim) in [(4, 2, 8), (3, 3, 5), (8, 1, 16)] {
            for (start, n_tokens) in [(0, 9), (5, 1), (3, 6)] {
                for window in [0, 1, 2, 4, 100] {
                    for with_sinks in [false, true] {
                        // The cache holds a few positions past the last query: they must stay hidden.
                        let n_cached = start + n_tokens + 2;
                        let q: Vec<f32> = (0..n_tokens * n_head * head_dim).map(|_| 2.0 * random()).collect();
                        let kv_len = n_cached * n_head_kv * head_dim;
                        let keys: Vec<f32> = (0..kv_len).map(|_| random()).collect();
                        let values: Vec<f32> = (0..kv_len).map(|_| random()).collect();
                        let sinks: Vec<f32> = (0..n_head).map(|_| 3.0 * random()).collect();
                        let o = AttentionOptions {
                            n_head,
                            n_head_kv,
                            head_dim,
                            scale: 0.7,
                            window,
                            sinks: with_sinks.then_some(&sinks[..]),
                        };
                        let mut out = vec![0.0f32; q.len()];
                        causal_attention_with(&q, &keys, &values, &mut out, start, &o);
                        let expected = naive(&q, &keys, &values, start, &o);
                        for (i, (&a, &e)) in out.iter().zip(&expected).enumerate() {
                            assert!(
                                (a as f64 - e).abs() < 1e-6,
                                "heads {n_head}/{n_head_kv} dim {head_dim} start {start} window {window} \
                                 sinks {with_sinks}: element {i} {a} vs {e}"
                            );
                        }
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 90);
    }

    #[test]
    fn the_scale_is_applied_to_the_scores() {
        // Scores 0 and ln 2 / scale at scale 0.5: weights 1/3, 2/3.
        let q = [2.0 * 2.0f32.ln()];
        let (k, v) = ([0.0f32, 1.0], [3.0f32, 6.0]);
        let mut out = [0.0f32];
        causal_attention_with(&q, &k, &v, &mut out, 1, &AttentionOptions { scale: 0.5, ..options(1, 1, 1) });
        assert!((out[0] - 5.0).abs() < 1e-6, "{}", out[0]);
    }
}
