//! CUDA graphs of the batched decode step: a step whose sequences each bring one token is
//! captured once per size of a ladder (2, 4, 8, then every 8 to 64, every 16 to 128, every 32
//! to 256, every 64 beyond, up to `--max-seqs`) and replayed, padded up to the next size, so that
//! the ~20 kernels a layer of such a step launches cost one graph launch instead of as many
//! launches from the host (at 8 sequences the eager step took 8.5 ms on the 8B against 2.66 for
//! one sequence's graph; benches/NOTES.md).
//!
//! What a replay reads lives in buffers the graph keeps: the batch's ids, positions, slots and
//! lengths (`PromptBatch`, copied in before each replay), the block table (the pool's, written
//! before each step), the final hidden state and the logits (shared by every size: one stream
//! replays one graph at a time). Padding rows are sequences of one token at position 0 whose
//! block-table row names the pool's last page, which the scheduler never hands out: they write
//! and read only that page, and no row's numbers depend on another's. Kernels are chosen by the
//! padded size (the row products switch at 3 and 33 rows), as an eager step of that size would.
//! The scratch the pass allocates is allocated inside the capture (graph memory nodes); the
//! GEMM's f16 copy of X and its split sums are the `Gpu`'s, so the graphs are dropped whenever
//! either is reallocated.
//!
//! Off with `ENGINE_BATCH_GRAPHS=0`, and under `ENGINE_PROFILE=1` (launches inside a capture are
//! not timed).

use super::attention::KvCache;
use super::model::GpuModel;
use super::prefill::PromptBatch;
use super::{Context, CudaError};
use host::attention::NO_PAGE;
use host::{CudaGraph, CudaSlice, Gpu};
use std::collections::HashMap;

/// The captured decode steps of one batched model.
pub(super) struct DecodeGraphs {
    /// Sizes captured on demand, ascending.
    ladder: Vec<usize>,
    graphs: HashMap<usize, Captured>,
    /// The logits [ladder max, n_vocab], written by every size's graph.
    logits: CudaSlice<f32>,
    /// The pool page padding rows use.
    pad_page: u32,
    /// `Gpu::gemm_buffer_generation` when the graphs were captured.
    generation: u64,
}

/// One size's graph and the buffers it reads and writes besides the shared logits.
struct Captured {
    batch: PromptBatch,
    /// The final norm's output [size, n_embd]: never read here, but the graph writes and reads
    /// it, so it lives as long as the graph.
    _hidden: CudaSlice<f32>,
    graph: CudaGraph,
}

/// The ladder of sizes for steps of up to `max_seqs` sequences (1 is the one-sequence graph's).
pub(super) fn ladder(max_seqs: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut size = 2;
    while size < max_seqs {
        sizes.push(size);
        size += match size {
            ..8 => size,
            8..64 => 8,
            64..128 => 16,
            128..256 => 32,
            _ => 64,
        };
    }
    if max_seqs >= 2 {
        sizes.push(max_seqs);
    }
    sizes
}

/// Whether batched decode steps are captured (`ENGINE_BATCH_GRAPHS=0` and `ENGINE_PROFILE=1`
/// turn them off).
pub(super) fn wanted() -> bool {
    std::env::var("ENGINE_BATCH_GRAPHS").as_deref() != Ok("0")
        && std::env::var("ENGINE_PROFILE").as_deref() != Ok("1")
}

impl DecodeGraphs {
    /// Graphs for steps of up to `max_seqs` sequences, padding rows on page `pad_page`.
    pub(super) fn new(
        gpu: &Gpu,
        max_seqs: usize,
        n_vocab: usize,
        pad_page: u32,
    ) -> Result<Self, host::Error> {
        let ladder = ladder(max_seqs);
        let largest = ladder.last().copied().unwrap_or(1);
        Ok(DecodeGraphs {
            ladder,
            graphs: HashMap::new(),
            logits: gpu.alloc(largest * n_vocab)?,
            pad_page,
            generation: gpu.gemm_buffer_generation(),
        })
    }

    /// Device bytes of the shared logits for `max_seqs` (the ledger counts them with the step).
    pub(super) fn bytes(max_seqs: usize, n_vocab: usize) -> usize {
        4 * ladder(max_seqs).last().copied().unwrap_or(1) * n_vocab
    }

    /// The padded size of a step of `rows` one-token sequences.
    pub(super) fn size_for(&self, rows: usize) -> Option<usize> {
        self.ladder.iter().copied().find(|&size| size >= rows)
    }

    /// Runs a decode step of `steps.len()` sequences ((token, position) each, block-table rows
    /// 0.. of `table`, which is `max_pages` wide) padded to `size`, capturing the graph of that
    /// size on first use. The real rows' logits are left in [`DecodeGraphs::logits`].
    pub(super) fn run(
        &mut self,
        model: &mut GpuModel,
        size: usize,
        steps: &[(u32, u32)],
        mut table: Vec<u32>,
        max_pages: usize,
    ) -> Result<(), CudaError> {
        self.drop_stale(&model.gpu);
        for _ in steps.len()..size {
            table.push(self.pad_page);
            table.extend(std::iter::repeat_n(NO_PAGE, max_pages - 1));
        }
        let KvCache::Paged { cache, .. } = &mut model.kv else { unreachable!("a batching model has a pool") };
        cache.set_table(&model.gpu, &table)?;
        let (mut ids, mut positions, mut lens) = (vec![0u32; size], vec![0u32; size], vec![1u32; size]);
        for (row, &(token, position)) in steps.iter().enumerate() {
            (ids[row], positions[row], lens[row]) = (token, position, position + 1);
        }
        let stream = model.gpu.stream().clone();
        if let Some(captured) = self.graphs.get_mut(&size) {
            // The slots (row r is block-table row r) never change: uploaded at the capture.
            let batch = &mut captured.batch;
            let copy = |host: &[u32], device: &mut CudaSlice<u32>| stream.memcpy_htod(host, device);
            copy(&ids, &mut batch.ids).map_err(host::Error::from)?;
            copy(&positions, &mut batch.positions).map_err(host::Error::from)?;
            copy(&lens, batch.decode_lens.as_mut().expect("a decode batch")).map_err(host::Error::from)?;
            captured.graph.launch().map_err(host::Error::from)?;
            return Ok(());
        }
        let gpu = &model.gpu;
        let batch = PromptBatch {
            n: size,
            ids: gpu.upload(&ids)?,
            positions: gpu.upload(&positions)?,
            slots: gpu.upload(&(0..size as u32).collect::<Vec<_>>())?,
            decode_lens: Some(gpu.upload(&lens)?),
            chunks: Vec::new(),
            starts: gpu.upload(&[0u32])?,
        };
        let mut hidden = gpu.alloc::<f32>(size * model.config.n_embd)?;
        // This step runs eagerly (growing the GEMM's X buffer to this size outside the capture,
        // if it must); the capture after it records the same work without running it.
        self.enqueue(model, &batch, &mut hidden)?;
        // The eager run may have grown the GEMM's buffers, which the other sizes' graphs hold.
        self.drop_stale(&model.gpu);
        stream
            .begin_capture(host::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(host::Error::from)?;
        let enqueued = self.enqueue(model, &batch, &mut hidden);
        let graph = stream.end_capture(host::sys::CUgraphInstantiate_flags(0)).map_err(host::Error::from)?;
        enqueued?;
        if let Some(graph) = graph {
            self.graphs.insert(size, Captured { batch, _hidden: hidden, graph });
        }
        Ok(())
    }

    /// Drops every graph when the GEMM's buffers (whose addresses the graphs hold) have been
    /// reallocated since they were captured.
    fn drop_stale(&mut self, gpu: &Gpu) {
        if gpu.gemm_buffer_generation() != self.generation {
            self.graphs.clear();
            self.generation = gpu.gemm_buffer_generation();
        }
    }

    /// Queues the pass over `batch` into `hidden` and the output matrix into the shared logits.
    fn enqueue(
        &mut self,
        model: &mut GpuModel,
        batch: &PromptBatch,
        hidden: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        let (gpu, n) = (&model.gpu, batch.n);
        let context = Context { gpu, integer_activations: model.integer_activations };
        let _dependent = gpu.dependent_launch(n <= super::batch::DEPENDENT_LAUNCH_ROWS);
        model.architecture.prefill(context, &mut model.kv, batch, hidden)?;
        let mut logits = self.logits.slice_mut(..n * model.config.n_vocab);
        model.architecture.output().prefill(context, &*hidden, n, &mut logits)?;
        Ok(())
    }

    /// The last step's logits of its first `rows` rows.
    pub(super) fn logits(&self, rows: usize, n_vocab: usize) -> host::CudaView<'_, f32> {
        self.logits.slice(..rows * n_vocab)
    }
}
