//! The decode step: one token through every layer, its kernels queued by the architecture with
//! the token, its position and the sequence's length read from device memory (`StepBuffers::args`),
//! so that the whole step is captured once as a CUDA graph and replayed for every later token (a
//! copy of four integers, one graph launch, one copy of the logits back). The kernels are
//! launched with programmatic dependent launch where the GPU has it (sm_90 and later): each
//! kernel's blocks are scheduled, and the GEMVs' first weights requested, while the previous kernel
//! runs. The output matrix, shared by every architecture, turns the final norm's output into logits.

use super::linear::Activations;
use super::model::GpuModel;
use super::{Context, CudaError};
use crate::model::ModelError;
use host::{CudaSlice, CudaView, Gpu};

/// What every architecture's step reads and writes besides its own scratch.
pub struct StepBuffers {
    /// [token, position, length (position + 1), sequence slot], read by the step's kernels.
    args: CudaSlice<u32>,
    /// The final norm's output [n_embd] and its 8-bit copy: the output matrix's input.
    pub hidden: Activations,
    pub logits: CudaSlice<f32>,
}

impl StepBuffers {
    pub fn new(gpu: &Gpu, n_embd: usize, n_vocab: usize) -> Result<Self, host::Error> {
        Ok(StepBuffers {
            args: gpu.upload(&[0u32; 4])?,
            hidden: Activations::new(gpu, n_embd)?,
            logits: gpu.upload(&vec![0.0f32; n_vocab])?,
        })
    }

    /// Device bytes of the step's buffers.
    pub fn bytes(n_embd: usize, n_vocab: usize) -> usize {
        16 + Activations::bytes(n_embd) + 4 * n_vocab
    }

    pub fn token(&self) -> CudaView<'_, u32> {
        self.args.slice(0..1)
    }

    pub fn position(&self) -> CudaView<'_, u32> {
        self.args.slice(1..2)
    }

    /// Positions cached once the token's keys and values are written (position + 1).
    pub fn len(&self) -> CudaView<'_, u32> {
        self.args.slice(2..3)
    }

    /// The sequence's row in the paged cache's block table.
    pub fn slot(&self) -> CudaView<'_, u32> {
        self.args.slice(3..4)
    }
}

impl GpuModel {
    /// One token at position `len`: its logits [n_vocab].
    pub(super) fn step(&mut self, token: u32) -> Result<Vec<f32>, CudaError> {
        let logits = self.step_at(token, self.len)?;
        self.len += 1;
        Ok(logits)
    }

    /// One token at `position` of the sequence in block-table row 0: its logits [n_vocab].
    pub(super) fn step_at(&mut self, token: u32, position: usize) -> Result<Vec<f32>, CudaError> {
        self.queue_step(token, position)?;
        Ok(self.gpu.download(&self.step.logits)?)
    }

    /// Queues [`GpuModel::step_at`]'s work; the logits are left in `step.logits`.
    pub(super) fn queue_step(&mut self, token: u32, position: usize) -> Result<(), CudaError> {
        let c = &self.config;
        if token as usize >= c.n_vocab {
            return Err(ModelError::TokenOutOfRange { token, n_vocab: c.n_vocab }.into());
        }
        if position >= self.capacity {
            return Err(ModelError::ContextFull { needed: position + 1, capacity: self.capacity }.into());
        }
        let stream = self.gpu.stream().clone();
        let args = [token, position as u32, position as u32 + 1, 0];
        stream.memcpy_htod(&args, &mut self.step.args).map_err(host::Error::from)?;
        if self.use_graph {
            if self.graph.is_none() {
                stream
                    .begin_capture(host::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(host::Error::from)?;
                let enqueued = self.enqueue_step();
                let graph =
                    stream.end_capture(host::sys::CUgraphInstantiate_flags(0)).map_err(host::Error::from)?;
                enqueued?;
                self.graph = graph;
            }
            match &self.graph {
                Some(graph) => graph.launch().map_err(host::Error::from)?,
                None => self.enqueue_step()?,
            }
        } else {
            self.enqueue_step()?;
        }
        Ok(())
    }

    /// Queues every kernel of one decode step, with dependent launch on while it does.
    fn enqueue_step(&mut self) -> Result<(), CudaError> {
        let _dependent = self.gpu.dependent_launch(true);
        let context = Context { gpu: &self.gpu, integer_activations: self.integer_activations };
        let enqueued = self.architecture.decode(context, &mut self.kv, &mut self.step).and_then(|()| {
            let output = self.architecture.output();
            output.decode(context, &self.step.hidden, &mut self.step.logits)
        });
        Ok(enqueued?)
    }
}
