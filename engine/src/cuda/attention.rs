//! Attention over the KV cache, for a layer that does not care which cache it has: a paged f16
//! cache with flash-decoding and causal flash attention for the prompt (head dims 64, 80, 96,
//! 128; `host::attention`), or a contiguous f32 cache per layer with the simple decode kernel for
//! other head dims (the tiny test fixtures; their prompts run token by token). Sinks (one learned
//! logit per query head joining the softmax's denominator) and sliding windows are options of a
//! layer's attention, used by gpt-oss.

use super::Context;
use super::decode::StepBuffers;
use super::linear::Activations;
use super::prefill::PromptBatch;
use crate::model::ModelConfig;
use host::attention::{AttentionOptions, DecodeWorkspace, HEAD_DIMS, PAGE_SIZE, PagedKvCache, PagedKvShape};
use host::{CudaSlice, Gpu};

pub enum KvCache {
    /// f16 pages, flash-decoding attention: one sequence with every page reserved at load, or a
    /// pool whose pages the batching scheduler hands out (then `batch_workspace` serves the
    /// batched decode of up to the pool's rows of sequences; `workspace` the one-sequence step).
    Paged {
        cache: Box<PagedKvCache>,
        workspace: Box<DecodeWorkspace>,
        batch_workspace: Option<Box<DecodeWorkspace>>,
    },
    /// f32 [capacity, n_head_kv, head_dim] per layer, for head dims the paged kernels lack.
    Contiguous { keys: Vec<CudaSlice<f32>>, values: Vec<CudaSlice<f32>> },
}

impl KvCache {
    /// Whether a model of this configuration gets the paged cache.
    pub fn paged_for(config: &ModelConfig) -> bool {
        HEAD_DIMS.contains(&config.head_dim)
    }

    /// Bytes of keys and values one position takes over every layer.
    pub fn bytes_per_position(config: &ModelConfig) -> usize {
        let element = if Self::paged_for(config) { 2 } else { 4 };
        2 * config.n_layer * config.n_head_kv * config.head_dim * element
    }

    /// Bytes of a cache of `capacity` positions (whole pages).
    pub fn bytes(config: &ModelConfig, capacity: usize) -> usize {
        capacity.next_multiple_of(PAGE_SIZE) * Self::bytes_per_position(config)
    }

    /// A cache of `capacity` positions for one sequence, every page of it reserved now.
    pub fn new(gpu: &Gpu, config: &ModelConfig, capacity: usize) -> Result<Self, host::Error> {
        let c = config;
        if Self::paged_for(c) {
            let pages = capacity.div_ceil(PAGE_SIZE);
            let shape = PagedKvShape { n_pages: pages, n_head_kv: c.n_head_kv, head_dim: c.head_dim };
            let mut cache = PagedKvCache::new(gpu, c.n_layer, shape, 1, pages)?;
            cache.reserve(gpu, 0, capacity)?;
            let workspace = DecodeWorkspace::for_cache(gpu, &cache, 1, c.n_head)?;
            let (cache, workspace) = (Box::new(cache), Box::new(workspace));
            Ok(KvCache::Paged { cache, workspace, batch_workspace: None })
        } else {
            let n = capacity * c.n_head_kv * c.head_dim;
            let (mut keys, mut values) = (Vec::with_capacity(c.n_layer), Vec::with_capacity(c.n_layer));
            for _ in 0..c.n_layer {
                keys.push(gpu.upload(&vec![0.0f32; n])?);
                values.push(gpu.upload(&vec![0.0f32; n])?);
            }
            Ok(KvCache::Contiguous { keys, values })
        }
    }

    /// A pool of `n_pages` pages for up to `n_seq` sequences of up to `max_context` positions,
    /// its block table written by the owner ([`PagedKvCache::set_table`]). Needs a head dim the
    /// paged kernels take ([`KvCache::paged_for`]).
    pub fn pool(
        gpu: &Gpu,
        config: &ModelConfig,
        n_pages: usize,
        n_seq: usize,
        max_context: usize,
    ) -> Result<Self, host::Error> {
        let c = config;
        let shape = PagedKvShape { n_pages, n_head_kv: c.n_head_kv, head_dim: c.head_dim };
        let cache = PagedKvCache::new(gpu, c.n_layer, shape, n_seq, max_context.div_ceil(PAGE_SIZE))?;
        let workspace = DecodeWorkspace::for_cache(gpu, &cache, 1, c.n_head)?;
        let batch_workspace = DecodeWorkspace::for_cache(gpu, &cache, n_seq, c.n_head)?;
        let (cache, workspace) = (Box::new(cache), Box::new(workspace));
        Ok(KvCache::Paged { cache, workspace, batch_workspace: Some(Box::new(batch_workspace)) })
    }

    /// Bytes of one page over every layer, keys and values (paged caches only).
    pub fn page_bytes(config: &ModelConfig) -> usize {
        PAGE_SIZE * Self::bytes_per_position(config)
    }

    pub fn is_paged(&self) -> bool {
        matches!(self, KvCache::Paged { .. })
    }
}

/// One layer's attention: softmax(q k^T / sqrt(head_dim)) v over the cached positions, with GQA
/// (n_head query heads over n_head_kv key/value heads), and the layer's sinks and window.
pub struct Attention {
    options: AttentionOptions,
    n_head_kv: usize,
    head_dim: usize,
    sinks: Option<CudaSlice<f32>>,
}

impl Attention {
    /// `window`: how many positions back a query sees (0: the whole context).
    pub fn new(config: &ModelConfig, window: usize, sinks: Option<CudaSlice<f32>>) -> Self {
        let options = AttentionOptions { window, ..AttentionOptions::new(config.n_head, config.head_dim) };
        Attention { options, n_head_kv: config.n_head_kv, head_dim: config.head_dim, sinks }
    }

    /// One token: its keys and values (in `qkv` = [q; k; v], q and k already rotated where the
    /// model rotates) into the cache at the step's position, then its attention over every cached
    /// position into `out`, and into `out.q8` too when `quantize`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &self,
        context: Context,
        kv: &mut KvCache,
        layer: usize,
        qkv: &CudaSlice<f32>,
        step: &StepBuffers,
        out: &mut Activations,
        quantize: bool,
    ) -> Result<(), host::Error> {
        let gpu = context.gpu;
        let (q_dim, kv_dim) = (self.options.n_head * self.head_dim, self.n_head_kv * self.head_dim);
        let (q, k, v) = (qkv.slice(..q_dim), qkv.slice(q_dim..q_dim + kv_dim), qkv.slice(q_dim + kv_dim..));
        let sinks = self.sinks.as_ref();
        match kv {
            KvCache::Paged { cache, workspace, .. } => {
                gpu.kv_write_paged(cache, layer, &k, &v, &step.slot(), &step.position())?;
                if quantize {
                    let (values, q8) = (&mut out.values, &mut out.q8);
                    gpu.attention_decode_paged_q8(
                        cache,
                        layer,
                        &q,
                        &step.len(),
                        sinks,
                        &self.options,
                        workspace,
                        values,
                        q8,
                    )
                } else {
                    gpu.attention_decode_paged(
                        cache,
                        layer,
                        &q,
                        &step.len(),
                        sinks,
                        &self.options,
                        workspace,
                        &mut out.values,
                    )
                }
            }
            KvCache::Contiguous { keys, values } => {
                let position = step.position();
                gpu.kv_write(&k, &mut keys[layer], &position)?;
                gpu.kv_write(&v, &mut values[layer], &position)?;
                let (n_head, n_head_kv, head_dim) = (self.options.n_head, self.n_head_kv, self.head_dim);
                gpu.attention_decode(
                    &q,
                    &keys[layer],
                    &values[layer],
                    &mut out.values,
                    &position,
                    n_head,
                    n_head_kv,
                    head_dim,
                )?;
                if quantize { gpu.quantize_q8(&out.values, &mut out.q8) } else { Ok(()) }
            }
        }
    }

    /// A batch's tokens: their keys and values k, v [n, kv_dim] into the cache at the batch's
    /// positions, then attention of q [n, q_dim] over each token's sequence (what it cached
    /// before included) into out [n, q_dim]: flash-decoding for the batch's leading one-token
    /// sequences, causal flash attention for each prompt chunk. Needs the paged cache.
    #[allow(clippy::too_many_arguments)]
    pub fn prefill(
        &self,
        context: Context,
        kv: &mut KvCache,
        layer: usize,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        batch: &PromptBatch,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), host::Error> {
        let KvCache::Paged { cache, workspace, batch_workspace } = kv else {
            let message = "the batched prompt pass needs the paged KV cache".to_string();
            return Err(host::Error::Shape { kernel: "attention_prefill", message });
        };
        let gpu = context.gpu;
        let (sinks, options) = (self.sinks.as_ref(), &self.options);
        let q_row = options.n_head * self.head_dim;
        gpu.kv_write_paged(cache, layer, k, v, &batch.slots, &batch.positions)?;
        if let Some(lens) = &batch.decode_lens {
            let rows = lens.len() * q_row;
            let q = q.slice(..rows);
            let mut out = out.slice_mut(..rows);
            let workspace = batch_workspace.as_mut().unwrap_or(workspace);
            gpu.attention_decode_paged(cache, layer, &q, lens, sinks, options, workspace, &mut out)?;
        }
        for (i, chunk) in batch.chunks.iter().enumerate() {
            let rows = chunk.tokens.start * q_row..chunk.tokens.end * q_row;
            let (q, mut out) = (q.slice(rows.clone()), out.slice_mut(rows));
            let start = batch.starts.slice(i..i + 1);
            gpu.attention_prefill(cache, layer, chunk.row, &q, &start, sinks, options, &mut out)?;
        }
        Ok(())
    }
}
