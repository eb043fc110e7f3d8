//! Rotary position embeddings with optional YaRN scaling, computed in f64 (the twin of
//! `gpu/src/rope.rs`). The rotation angles come from the model's description,
//! [`RopeConfig::angle`] in `model/config.rs`.

pub use crate::model::{RopeConfig, RopeLayout, YarnConfig};

/// Rotates x [positions.len(), n_heads, head_dim] in place.
pub fn rope(x: &mut [f32], positions: &[u32], n_heads: usize, config: &RopeConfig) {
    rope_with(x, &RopeTable::new(positions, config), n_heads);
}

/// The rotation of every (position, pair) of a forward pass: (sin, cos, magnitude) in f64,
/// computed once and shared by every head and layer (the angles cost a `powf` and a `sin_cos`
/// each, more than the rotation). The same values [`rope`] computes, so the same results.
pub struct RopeTable {
    values: Vec<(f64, f64, f64)>,
    half: usize,
    head_dim: usize,
    layout: RopeLayout,
}

impl RopeTable {
    pub fn new(positions: &[u32], config: &RopeConfig) -> RopeTable {
        let half = config.rope_dim / 2;
        let mut values = Vec::with_capacity(positions.len() * half);
        for &position in positions {
            for i in 0..half {
                let (angle, magnitude) = config.angle(position, i);
                let (sin, cos) = angle.sin_cos();
                values.push((sin, cos, magnitude));
            }
        }
        RopeTable { values, half, head_dim: config.head_dim, layout: config.layout }
    }
}

/// [`rope`] with the angles of `table` (made for these rows' positions).
pub fn rope_with(x: &mut [f32], table: &RopeTable, n_heads: usize) {
    let (head_dim, half) = (table.head_dim, table.half);
    if half == 0 {
        return;
    }
    let n_rows = table.values.len() / half;
    assert_eq!(x.len(), n_rows * n_heads * head_dim);
    for (token, angles) in x.chunks_exact_mut(n_heads * head_dim).zip(table.values.chunks_exact(half)) {
        for head in token.chunks_exact_mut(head_dim) {
            for (i, &(sin, cos, magnitude)) in angles.iter().enumerate() {
                let (first, second) = match table.layout {
                    RopeLayout::Interleaved => (2 * i, 2 * i + 1),
                    RopeLayout::Neox => (i, i + half),
                };
                let (a, b) = (head[first] as f64, head[second] as f64);
                head[first] = ((a * cos - b * sin) * magnitude) as f32;
                head[second] = ((a * sin + b * cos) * magnitude) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(layout: RopeLayout) -> RopeConfig {
        RopeConfig { head_dim: 4, rope_dim: 4, base: 10000.0, layout, yarn: None }
    }

    #[test]
    fn position_zero_is_identity() {
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope(&mut x, &[0], 1, &plain(RopeLayout::Neox));
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn first_pair_turns_by_the_position() {
        // Pair 0 has frequency 1: at position 1 it turns by one radian.
        let (s, c) = 1.0f64.sin_cos();
        let mut x = [1.0, 0.0, 0.0, 0.0];
        rope(&mut x, &[1], 1, &plain(RopeLayout::Interleaved));
        assert!((x[0] as f64 - c).abs() < 1e-7 && (x[1] as f64 - s).abs() < 1e-7, "{x:?}");
        let mut x = [1.0, 0.0, 0.0, 0.0];
        rope(&mut x, &[1], 1, &plain(RopeLayout::Neox));
        assert!((x[0] as f64 - c).abs() < 1e-7 && (x[2] as f64 - s).abs() < 1e-7, "{x:?}");
        // Pair 1 has frequency base^(-1/2) = 0.01.
        let (s, c) = 0.01f64.sin_cos();
        let mut x = [0.0, 0.0, 1.0, 0.0];
        rope(&mut x, &[1], 1, &plain(RopeLayout::Interleaved));
        assert!((x[2] as f64 - c).abs() < 1e-7 && (x[3] as f64 - s).abs() < 1e-7, "{x:?}");
    }

    #[test]
    fn yarn_interpolates_long_wavelengths_and_keeps_short_ones() {
        let yarn = YarnConfig {
            factor: 4.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
            truncate: true,
        };
        let config = RopeConfig {
            head_dim: 128,
            rope_dim: 128,
            base: 10000.0,
            layout: RopeLayout::Neox,
            yarn: Some(yarn),
        };
        // The fastest pair is extrapolated (angle unchanged), the slowest interpolated (divided by
        // the factor); the magnitude is 1 + 0.1 ln 4 everywhere.
        let (fast, m) = config.angle(100, 0);
        assert!((fast - 100.0).abs() < 1e-9);
        assert!((m - (1.0 + 0.1 * 4f64.ln())).abs() < 1e-12);
        let (slow, _) = config.angle(100, 63);
        let plain = 100.0 * 10000f64.powf(-126.0 / 128.0);
        assert!((slow - plain / 4.0).abs() < 1e-12);
    }

    #[test]
    fn yarn_without_truncation_ramps_between_the_exact_ends() {
        // gpt-oss: head dim 64, base 150000, factor 32 over 4096. The ramp's ends are
        // 64 ln(4096 / (2 pi b)) / (2 ln 150000) = 8.093 (b = 32) and 17.400 (b = 1); truncated: 8, 18.
        let yarn = YarnConfig {
            factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            ext_factor: 1.0,
            attn_factor: 1.0,
            truncate: false,
        };
        let config = RopeConfig {
            head_dim: 64,
            rope_dim: 64,
            base: 150000.0,
            layout: RopeLayout::Neox,
            yarn: Some(yarn),
        };
        let end = |b: f64| 64.0 * (4096.0 / (2.0 * std::f64::consts::PI * b)).ln() / (2.0 * 150000f64.ln());
        let (low, high) = (end(32.0), end(1.0));
        let frequency = |i: usize| 150000f64.powf(-2.0 * i as f64 / 64.0);
        for i in [8, 9, 12, 17, 18] {
            let extrapolated = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let expected = frequency(i) * (extrapolated + (1.0 - extrapolated) / 32.0);
            let (angle, _) = config.angle(1, i);
            assert!((angle - expected).abs() < 1e-15, "pair {i}: {angle} vs {expected}");
        }
        // Pair 9 as transformers 5.17 computes it for gpt-oss (its inv_freq[9], f32): 0.0317057.
        assert!((config.angle(1, 9).0 - 0.031_705_696).abs() < 1e-8);
        // Truncated, the ramp starts at 8 and pair 9 gets a different mix.
        let truncated = RopeConfig { yarn: Some(YarnConfig { truncate: true, ..yarn }), ..config };
        assert!((truncated.angle(1, 9).0 - 0.031_705_696).abs() > 5e-5);
    }
}
