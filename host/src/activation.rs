//! Element-wise activations and the residual add (`gpu/src/activation.rs`).

use crate::{Gpu, Result, elementwise_config, expect_len};
use cudarc::driver::{DevicePtr, DevicePtrMut};

/// The element-wise functions of one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// x/2 (1 + erf(x / sqrt 2)), GPT-2's and BERT's exact form.
    GeluErf,
    /// The tanh approximation of GELU (GPT-2's `gelu_new`).
    GeluTanh,
    /// x sigmoid(x).
    Silu,
}

impl Activation {
    fn kernel(self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu_erf_f32",
            Activation::GeluTanh => "gelu_tanh_f32",
            Activation::Silu => "silu_f32",
        }
    }
}

impl Gpu {
    /// out[i] = f(x[i]).
    pub fn activation(
        &self,
        function: Activation,
        x: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        let kernel = function.kernel();
        expect_len(kernel, "out", out.len(), x.len())?;
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (x, _x) = x.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        self.launch(kernel, elementwise_config(n), &[&x, &out, &(n as u64)])
    }

    /// out[i] = silu(gate[i]) * up[i].
    pub fn swiglu(
        &self,
        gate: &impl DevicePtr<f32>,
        up: &impl DevicePtr<f32>,
        out: &mut impl DevicePtrMut<f32>,
    ) -> Result<()> {
        const KERNEL: &str = "swiglu_f32";
        let n = gate.len();
        expect_len(KERNEL, "up", up.len(), n)?;
        expect_len(KERNEL, "out", out.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (gate, _gate) = gate.device_ptr(stream);
        let (up, _up) = up.device_ptr(stream);
        let (out, _out) = out.device_ptr_mut(stream);
        self.launch(KERNEL, elementwise_config(n), &[&gate, &up, &out, &(n as u64)])
    }

    /// x[i] += y[i].
    pub fn residual_add(&self, x: &mut impl DevicePtrMut<f32>, y: &impl DevicePtr<f32>) -> Result<()> {
        const KERNEL: &str = "residual_add_f32";
        let n = x.len();
        expect_len(KERNEL, "y", y.len(), n)?;
        if n == 0 {
            return Ok(());
        }
        let stream = self.stream();
        let (y, _y) = y.device_ptr(stream);
        let (x, _x) = x.device_ptr_mut(stream);
        self.launch(KERNEL, elementwise_config(n), &[&x, &y, &(n as u64)])
    }
}
