//! `engine serve`: an OpenAI-compatible HTTP server (axum on tokio) in front of the batching
//! engine. The server owns no model state: the model and its [`Batcher`] live on the engine
//! thread (`engine_loop.rs`), which the handlers reach only through a request channel. The
//! rooms: `protocol.rs` reads and checks request bodies, `prompt.rs` turns them into tokens,
//! `generation.rs` runs the two generation endpoints (whole and streamed), `reply.rs` maps tokens
//! to content, reasoning and tool calls (`tool_tags.rs` reads `<tool_call>` tags), `routes.rs`
//! holds the small endpoints and the key check, `metrics.rs` the Prometheus text, `error.rs` the
//! OpenAI-shaped errors.
//!
//! Start-up: [`start`] binds the port and returns the [`Server`] (run it on the main thread) and
//! the [`EngineSide`] (move it to the thread that loads the model and builds the batcher, then
//! call [`EngineSide::run`]). Until the model is ready, `/health` answers 503. Shut-down
//! (SIGTERM, Ctrl-C or a [`ShutdownHandle`]): the listener closes, requests in flight get
//! `shutdown_grace` to finish, then the rest are cancelled; the engine thread ends when idle.
//! Shut down while the model still loads, there is nothing to finish: [`Server::run`] says so
//! ([`Stopped::WhileLoading`]), and the binary exits without waiting for the load.

mod engine_loop;
mod error;
mod generation;
mod metrics;
mod prompt;
pub mod protocol;
pub mod reply;
mod routes;
mod tool_tags;

pub use error::ApiError;

use crate::batching::{BatchError, Batcher};
use crate::harmony::SpecialTokens;
use crate::tokenizer::Tokenizer;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use engine_loop::Submission;
use metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub host: String,
    pub port: u16,
    /// Keys a client may send as `Authorization: Bearer KEY`; empty: no key needed.
    pub api_keys: Vec<String>,
    /// The name `/v1/models` lists and requests must use (when they name one).
    pub model_name: String,
    /// Sequences that may wait beyond the `max_seqs` running ones (a request with `n` choices
    /// is `n` sequences); a request that would go over is refused with 429.
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// After a shut-down signal, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
    /// Interval of the keep-alive comments on a stream that has nothing to send.
    pub keep_alive: Duration,
}

/// What the handlers need to know of the model.
pub struct ModelInfo {
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<String>,
    /// Harmony's special tokens, for gpt-oss.
    pub harmony: Option<SpecialTokens>,
    pub ctx_size: usize,
    pub n_vocab: usize,
    /// Most sequences in one step (the batcher's `max_seqs`).
    pub max_seqs: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not listen on {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the model failed to load: {0}")]
    Load(String),
    #[error("the engine failed: {0}")]
    Engine(String),
}

/// State every handler sees.
pub struct Shared {
    options: ServerOptions,
    model: OnceLock<Arc<ModelInfo>>,
    submit: Mutex<Option<mpsc::Sender<Submission>>>,
    metrics: Arc<Metrics>,
    /// Sequences of the requests inside a generation handler (for the 429).
    in_flight: AtomicUsize,
    /// Unix time the server started (for `/v1/models`).
    started: u64,
    /// Set by the engine side: stop when idle; cancel everything.
    stop: AtomicBool,
    abort: AtomicBool,
    /// Why the engine could not run, if it could not.
    failure: Mutex<Option<ServerError>>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn model(&self) -> Result<Arc<ModelInfo>, ApiError> {
        match self.model.get() {
            Some(model) if !self.stop.load(Ordering::Relaxed) => Ok(model.clone()),
            Some(_) => Err(ApiError::unavailable("the server is shutting down")),
            None => Err(ApiError::unavailable("the model is loading")),
        }
    }

    fn submit(&self, submission: Submission) -> Result<(), ApiError> {
        let sender = self.submit.lock().unwrap_or_else(|p| p.into_inner());
        match sender.as_ref().map(|s| s.send(submission).is_ok()) {
            Some(true) => Ok(()),
            _ => Err(ApiError::unavailable("the engine is not running")),
        }
    }
}

/// The HTTP side; see the file's opening comment.
pub struct Server {
    shared: Arc<Shared>,
    listener: std::net::TcpListener,
}

/// The engine thread's side of the request channel.
pub struct EngineSide {
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Submission>,
}

/// How a [`Server`] that was shut down ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The model had loaded: the engine thread ends once it is idle (join it).
    AfterServing,
    /// Shut down before the model was ready: no request ran, and the engine thread may go on
    /// loading for minutes (a large file, a slow disk); nothing needs to wait for it.
    WhileLoading,
}

/// Stops a running [`Server`] as SIGTERM does.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }
}

/// The text of each generated token for the batcher: the vocabulary's bytes, nothing for
/// control tokens (an end-of-turn marker, harmony's framing), which `reply.rs` reads by id.
pub fn token_text(tokenizer: Arc<Tokenizer>) -> Box<dyn Fn(u32) -> Vec<u8> + Send> {
    Box::new(move |token| {
        if tokenizer.is_special(token) {
            Vec::new()
        } else {
            tokenizer.token_bytes(token).unwrap_or(b"").to_vec()
        }
    })
}

/// Binds `options.host:options.port` (port 0: any free port; see [`Server::local_addr`]).
pub fn start(options: ServerOptions) -> Result<(Server, EngineSide), ServerError> {
    let address = format!("{}:{}", options.host, options.port);
    let listener =
        std::net::TcpListener::bind(&address).map_err(|source| ServerError::Bind { address, source })?;
    listener.set_nonblocking(true)?;
    let (sender, inbox) = mpsc::channel();
    let started =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        metrics: Arc::new(Metrics::new(&options.model_name)),
        options,
        model: OnceLock::new(),
        submit: Mutex::new(Some(sender)),
        in_flight: AtomicUsize::new(0),
        started,
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        failure: Mutex::new(None),
        shutdown: watch::channel(false).0,
    });
    Ok((Server { shared: shared.clone(), listener }, EngineSide { shared, inbox }))
}

impl EngineSide {
    /// Serves with `batcher` until the server stops; `model` makes the server ready.
    pub fn run(self, model: ModelInfo, mut batcher: Batcher<'_>) -> Result<(), BatchError> {
        let _ = self.shared.model.set(Arc::new(model));
        let EngineSide { shared, inbox } = self;
        let result = engine_loop::run(&mut batcher, inbox, &shared.metrics, &shared.abort);
        if let Err(error) = &result {
            fail(&shared, ServerError::Engine(error.to_string()));
        }
        result
    }

    /// The model could not load (or the engine stopped): the server shuts down with `error`.
    pub fn fail_with(self, error: String) {
        fail(&self.shared, ServerError::Load(error));
    }
}

fn fail(shared: &Shared, error: ServerError) {
    *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
    shared.shutdown.send_replace(true);
}

impl Server {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Serves until shut down (SIGTERM, Ctrl-C, a [`ShutdownHandle`], or the engine failing).
    pub fn run(self) -> Result<Stopped, ServerError> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let shared = self.shared.clone();
        runtime.block_on(serve(self.shared, self.listener))?;
        // Nothing more is submitted; the engine thread ends when it is idle. (A model that
        // becomes ready after this finds the channel closed and ends at once.)
        shared.submit.lock().unwrap_or_else(|p| p.into_inner()).take();
        match shared.failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(error) => Err(error),
            None if shared.model.get().is_some() => Ok(Stopped::AfterServing),
            None => Ok(Stopped::WhileLoading),
        }
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/v1/chat/completions", post(generation::chat_completions))
        .route("/v1/completions", post(generation::completions))
        .route("/v1/models", get(routes::models))
        .route("/metrics", get(routes::metrics))
        .route("/tokenize", post(routes::tokenize))
        .route("/detokenize", post(routes::detokenize))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(shared.clone(), routes::require_key));
    guarded
        .route("/health", get(routes::health))
        .layer(DefaultBodyLimit::max(shared.options.max_body_bytes))
        .with_state(shared)
}

async fn serve(shared: Arc<Shared>, listener: std::net::TcpListener) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let signals = shared.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signals.send_replace(true);
    });
    let shutting_down = |shared: &Arc<Shared>| {
        let mut receiver = shared.shutdown.subscribe();
        async move {
            let _ = receiver.wait_for(|&stop| stop).await;
        }
    };
    let app = router(shared.clone());
    let server = axum::serve(listener, app).with_graceful_shutdown(shutting_down(&shared)).into_future();
    tokio::pin!(server);
    let grace = shared.options.shutdown_grace;
    let signalled = shutting_down(&shared);
    tokio::select! {
        result = &mut server => result?,
        _ = async { signalled.await; tokio::time::sleep(grace).await } => {
            // The grace is over: cancel what is left, and give the streams a moment to close.
            shared.abort.store(true, Ordering::Relaxed);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut server).await;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    shared.abort.store(true, Ordering::Relaxed);
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
