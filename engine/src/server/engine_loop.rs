//! The engine thread: the one owner of the [`Batcher`] (and so of the model and its KV pool).
//! HTTP handlers never touch it; they send a [`Submission`] through the request channel and read
//! what comes back on the submission's own event channel. Each turn of the loop takes every
//! waiting submission, runs one step, and forwards each event to its request. A request whose
//! reader has gone (the client disconnected) has its cancel flag set, so the next step ends it
//! and frees its pages. The loop also keeps the scheduler's counts and the per-request timings
//! for `/metrics`.

use super::metrics::{FinishCount, Metrics};
use crate::batching::{BatchError, Batcher, Event, FinishReason, Request, TokenLogprobs, Usage};
use crate::scheduler::SequenceId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// One sequence to run: a request's choice `choice`.
pub struct Submission {
    pub request: Request,
    pub choice: usize,
    pub events: UnboundedSender<(usize, SequenceEvent)>,
    /// When the HTTP request arrived (for the queue and end-to-end times).
    pub arrived: Instant,
}

/// What the engine sends back about one sequence.
#[derive(Debug)]
pub enum SequenceEvent {
    Token {
        token: u32,
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        text: String,
        usage: Usage,
        /// Its count in `/metrics`, for the handler to record with the response's reason.
        count: FinishCount,
    },
    /// The batcher refused the request (bad settings, too long) or the step failed.
    Failed {
        message: String,
        client_error: bool,
    },
}

struct Tracked {
    choice: usize,
    events: UnboundedSender<(usize, SequenceEvent)>,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
    last_token: Option<Instant>,
    /// The start of the step that gave the first token.
    first_step: Option<Instant>,
}

/// Runs the loop until every sender of `inbox` is gone (the server stopped) and nothing is left
/// to run; once `abort` is set, every request is cancelled. Returns the step error that ended
/// it, if one did.
pub fn run(
    batcher: &mut Batcher<'_>,
    inbox: mpsc::Receiver<Submission>,
    metrics: &Arc<Metrics>,
    abort: &AtomicBool,
) -> Result<(), BatchError> {
    let mut tracked: HashMap<SequenceId, Tracked> = HashMap::new();
    let mut open = true;
    loop {
        if batcher.is_idle() {
            if !open {
                return Ok(());
            }
            match inbox.recv_timeout(Duration::from_millis(100)) {
                Ok(submission) => submit(batcher, submission, &mut tracked),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => open = false,
            }
        }
        loop {
            match inbox.try_recv() {
                Ok(submission) => submit(batcher, submission, &mut tracked),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if abort.load(Ordering::Relaxed) {
            for t in tracked.values() {
                t.cancel.store(true, Ordering::Relaxed);
            }
        }
        // Before the step, so that `/metrics` counts a new request as waiting at once instead of
        // after its first step (a step can take seconds).
        metrics.set_scheduler(&batcher.scheduler().stats());
        if batcher.is_idle() {
            continue;
        }
        let step_start = Instant::now();
        let events = match batcher.step() {
            Ok(events) => events,
            Err(error) => {
                let message = format!("the engine failed: {error}");
                for (_, t) in tracked.drain() {
                    let _ = t.events.send((
                        t.choice,
                        SequenceEvent::Failed { message: message.clone(), client_error: false },
                    ));
                }
                metrics.set_scheduler(&batcher.scheduler().stats());
                return Err(error);
            }
        };
        let now = Instant::now();
        for event in events {
            match event {
                Event::Token { id, token, text, logprobs } => {
                    let Some(t) = tracked.get_mut(&id) else { continue };
                    match t.last_token {
                        None => {
                            t.first_step = Some(step_start);
                            metrics.first_token(
                                now - t.arrived,
                                step_start.saturating_duration_since(t.arrived),
                            );
                        }
                        Some(last) => metrics.inter_token(now - last),
                    }
                    t.last_token = Some(now);
                    let event = SequenceEvent::Token { token, text, logprobs };
                    if t.events.send((t.choice, event)).is_err() {
                        t.cancel.store(true, Ordering::Relaxed);
                    }
                }
                Event::Finished { id, reason, text, usage } => {
                    let Some(t) = tracked.remove(&id) else { continue };
                    let count = metrics.finished(reason, &usage, now - t.arrived, t.first_step.is_none());
                    // A reader that has gone drops the event, and with it the count counts itself.
                    let _ = t.events.send((t.choice, SequenceEvent::Finished { reason, text, usage, count }));
                }
            }
        }
        metrics.set_scheduler(&batcher.scheduler().stats());
    }
}

fn submit(batcher: &mut Batcher<'_>, submission: Submission, tracked: &mut HashMap<SequenceId, Tracked>) {
    let Submission { request, choice, events, arrived } = submission;
    let cancel = request.cancel.clone();
    if cancel.load(Ordering::Relaxed) {
        return;
    }
    match batcher.submit(request) {
        Ok(id) => {
            tracked
                .insert(id, Tracked { choice, events, cancel, arrived, last_token: None, first_step: None });
        }
        Err(error) => {
            // Everything submit refuses is the request's fault (settings, length, token ids).
            let _ = events
                .send((choice, SequenceEvent::Failed { message: error.to_string(), client_error: true }));
        }
    }
}
