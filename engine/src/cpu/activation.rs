//! Element-wise activations, computed in f64 and rounded once.

/// GELU, exact form: x/2 (1 + erf(x / sqrt 2)).
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
}

/// GELU, tanh approximation: x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_tanh(x: f32) -> f32 {
    let x = x as f64;
    let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
    (0.5 * x * (1.0 + inner.tanh())) as f32
}

/// SiLU: x / (1 + exp(-x)).
pub fn silu(x: f32) -> f32 {
    let x = x as f64;
    (x / (1.0 + (-x).exp())) as f32
}

/// SwiGLU: silu(gate) * up.
pub fn swiglu(gate: f32, up: f32) -> f32 {
    let g = gate as f64;
    (g / (1.0 + (-g).exp()) * up as f64) as f32
}

/// SwiGLU in f32, as llama.cpp's CPU back end writes it (`ggml_silu_f32(g) * u`, expf): the
/// `llama-cpp` numerics' form, a third of the f64 form's time here.
pub fn swiglu_f32(gate: f32, up: f32) -> f32 {
    gate / (1.0 + (-gate).exp()) * up
}

/// gate[i] = swiglu(gate[i], up[i]) for every i, split over the CPU pool's threads (each value
/// is computed alone, so the split does not change it): in a decode step this is the largest
/// piece of work between two matrix products, and one thread would leave the other waiting.
/// `swiglu` is [`swiglu`] or [`swiglu_f32`].
pub fn swiglu_in_place(gate: &mut [f32], up: &[f32], swiglu: impl Fn(f32, f32) -> f32 + Sync) {
    assert_eq!(gate.len(), up.len());
    let output = super::threads::SharedOutput(gate.as_mut_ptr());
    super::threads::pool().run(&|part, parts| {
        let range = super::threads::split(up.len(), part, parts);
        // SAFETY: each part takes its own range of gate.
        let mine = unsafe { output.part(range.start, range.len()) };
        for (g, &u) in mine.iter_mut().zip(&up[range]) {
            *g = swiglu(*g, u);
        }
    });
}

/// gpt-oss's clamped SwiGLU: with g = min(gate, limit) and u = clamp(up, -limit, limit),
/// g sigmoid(alpha g) (u + 1). The gate is clamped from above only; gpt-oss uses alpha 1.702, limit 7.
pub fn swiglu_oai(gate: f32, up: f32, alpha: f32, limit: f32) -> f32 {
    let (alpha, limit) = (alpha as f64, limit as f64);
    let g = (gate as f64).min(limit);
    let u = (up as f64).clamp(-limit, limit);
    (g / (1.0 + (-alpha * g).exp()) * (u + 1.0)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Values from the closed forms: gelu(1) = Phi(1) = 0.841344746..., silu(1) = 1/(1+e^-1).
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_erf(-1.0) + 0.158_655_25).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
        assert!((silu(1.0) - 0.731_058_6).abs() < 1e-6);
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!((swiglu(2.0, 3.0) - 3.0 * silu(2.0)).abs() < 1e-6);
        // Large inputs: GELU tends to the identity, SiLU to identity / zero.
        assert_eq!(gelu_erf(30.0), 30.0);
        assert_eq!(silu(-200.0), -0.0);
    }

    #[test]
    fn swiglu_in_place_is_swiglu_of_each_pair() {
        let gate: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let up: Vec<f32> = (0..1001).map(|i| (i as f32 * 0.61).sin()).collect();
        let mut got = gate.clone();
        swiglu_in_place(&mut got, &up, swiglu);
        for ((&g, &u), &v) in gate.iter().zip(&up).zip(&got) {
            assert_eq!(v.to_bits(), swiglu(g, u).to_bits(), "{g} {u}");
            // The f32 form is within a few f32 roundings of the f64 one.
            let f32_form = swiglu_f32(g, u);
            assert!(
                (f32_form - v).abs() <= 4.0 * f32::EPSILON * v.abs().max(1e-30),
                "{g} {u}: {f32_form} vs {v}"
            );
        }
    }

    #[test]
    fn swiglu_oai_clamps_the_gate_from_above_and_the_up_both_ways() {
        let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
        let expected = |g: f64, u: f64| (g * sigmoid(1.702 * g) * (u + 1.0)) as f32;
        let close = |a: f32, b: f32| assert!((a - b).abs() <= 1e-6 * b.abs().max(1e-30), "{a} vs {b}");
        assert_eq!(swiglu_oai(0.0, 3.0, 1.702, 7.0), 0.0);
        close(swiglu_oai(1.5, -0.5, 1.702, 7.0), expected(1.5, -0.5));
        // Above the limit, the gate is 7; below, it is left alone (no lower clamp).
        close(swiglu_oai(9.0, 2.0, 1.702, 7.0), expected(7.0, 2.0));
        close(swiglu_oai(-9.0, 2.0, 1.702, 7.0), expected(-9.0, 2.0));
        // The up value is clamped to [-7, 7] before the + 1.
        close(swiglu_oai(1.0, 12.0, 1.702, 7.0), expected(1.0, 7.0));
        close(swiglu_oai(1.0, -12.0, 1.702, 7.0), expected(1.0, -7.0));
    }
}
