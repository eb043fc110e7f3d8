//! `/metrics`: the engine's counts in Prometheus' text format (version 0.0.4), with the names
//! vLLM uses under an `engine_` prefix, each labelled with the served model's name. Gauges come
//! from the scheduler after every step; counters and histograms from the engine loop as
//! requests produce tokens and finish. Written by hand: a handful of series do not need a
//! metrics framework.
//!
//! `engine_request_success_total` is labelled with the `finish_reason` the response gives, and
//! only the handler knows it (a reply that ends in tool calls says "tool_calls", which the
//! engine cannot tell from "stop"). So each finished sequence's event carries a
//! [`FinishCount`]: the handler records it with the response's reason; an event nobody reads
//! (the client went away) counts itself with the engine's reason when it is dropped. Each
//! sequence is counted once either way.

use crate::batching::{FinishReason, Usage};
use crate::scheduler::SchedulerStats;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `finish_reason` values a response gives, in the order `/metrics` lists them.
pub const FINISH_REASONS: [&str; 4] = ["stop", "length", "tool_calls", "abort"];

/// The `finish_reason` of a sequence that ended for `reason`, having made `tool_calls` calls:
/// what the response says and what `/metrics` counts.
pub fn finish_reason(reason: FinishReason, tool_calls: usize) -> &'static str {
    match reason {
        FinishReason::EndOfSequence if tool_calls > 0 => "tool_calls",
        FinishReason::EndOfSequence | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::ContextFull => "length",
        FinishReason::Cancelled => "abort",
    }
}

/// Bucket bounds (seconds) of the latency histograms, vLLM's for TTFT stretched to cover the
/// CPU's slower steps.
const LATENCY_BUCKETS: [f64; 18] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (count, &bound) in self.counts.iter_mut().zip(&LATENCY_BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Debug, Default)]
struct Values {
    scheduler: SchedulerStats,
    prompt_tokens: u64,
    generation_tokens: u64,
    /// Finished sequences by finish reason, as [`FINISH_REASONS`] lists them.
    success: [u64; FINISH_REASONS.len()],
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    end_to_end: Histogram,
    queue_time: Histogram,
}

#[derive(Debug)]
pub struct Metrics {
    model: String,
    values: Mutex<Values>,
}

impl Metrics {
    pub fn new(model: &str) -> Self {
        Metrics { model: model.to_string(), values: Mutex::new(Values::default()) }
    }

    fn with(&self, f: impl FnOnce(&mut Values)) {
        let mut values = self.values.lock().unwrap_or_else(|poison| poison.into_inner());
        f(&mut values);
    }

    pub fn set_scheduler(&self, stats: &SchedulerStats) {
        self.with(|v| v.scheduler = stats.clone());
    }

    /// A request's first token came `ttft` after it arrived; it waited `queued` before the step
    /// that made it began.
    pub fn first_token(&self, ttft: Duration, queued: Duration) {
        self.with(|v| {
            v.time_to_first_token.observe(ttft.as_secs_f64());
            v.queue_time.observe(queued.as_secs_f64());
        });
    }

    pub fn inter_token(&self, latency: Duration) {
        self.with(|v| v.inter_token_latency.observe(latency.as_secs_f64()));
    }

    /// A sequence ended; `never_ran`: cancelled before its first token. Its finish reason is
    /// counted through the [`FinishCount`] this returns, for its event to carry.
    pub fn finished(
        self: &Arc<Self>,
        reason: FinishReason,
        usage: &Usage,
        elapsed: Duration,
        never_ran: bool,
    ) -> FinishCount {
        self.with(|v| {
            v.prompt_tokens += usage.prompt_tokens as u64;
            v.generation_tokens += usage.completion_tokens as u64;
            if !never_ran {
                v.end_to_end.observe(elapsed.as_secs_f64());
            }
        });
        FinishCount { metrics: Some(self.clone()), engine_reason: reason }
    }

    fn count_finish(&self, finish_reason: &str) {
        if let Some(slot) = FINISH_REASONS.iter().position(|&r| r == finish_reason) {
            self.with(|v| v.success[slot] += 1);
        }
    }

    /// The text Prometheus scrapes.
    pub fn render(&self) -> String {
        let v = self.values.lock().unwrap_or_else(|poison| poison.into_inner());
        let label = format!("model_name=\"{}\"", escape(&self.model));
        let mut out = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{label}}} {value}");
        };
        let s = &v.scheduler;
        scalar("engine_requests_running", "gauge", "Sequences in the running batch.", s.running as f64);
        scalar("engine_requests_waiting", "gauge", "Sequences waiting to be admitted.", s.waiting as f64);
        let usage = if s.pages_total == 0 { 0.0 } else { s.pages_used as f64 / s.pages_total as f64 };
        scalar("engine_kv_cache_usage_ratio", "gauge", "Fraction of KV pages held by sequences.", usage);
        scalar(
            "engine_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished sequences.",
            v.prompt_tokens as f64,
        );
        scalar(
            "engine_generation_tokens_total",
            "counter",
            "Generated tokens of finished sequences.",
            v.generation_tokens as f64,
        );
        scalar(
            "engine_preemptions_total",
            "counter",
            "Sequences preempted for lack of KV pages.",
            s.preemptions as f64,
        );
        let name = "engine_request_success_total";
        let _ = writeln!(out, "# HELP {name} Finished sequences by finish reason.\n# TYPE {name} counter");
        for (reason, count) in FINISH_REASONS.iter().zip(v.success) {
            let _ = writeln!(out, "{name}{{{label},finish_reason=\"{reason}\"}} {count}");
        }
        let histograms = [
            ("engine_time_to_first_token_seconds", "Arrival to first token.", &v.time_to_first_token),
            (
                "engine_inter_token_latency_seconds",
                "Time between consecutive tokens.",
                &v.inter_token_latency,
            ),
            ("engine_e2e_request_latency_seconds", "Arrival to the last token.", &v.end_to_end),
            (
                "engine_request_queue_time_seconds",
                "Arrival to the start of the step that made the first token.",
                &v.queue_time,
            ),
        ];
        for (name, help, h) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (bound, count) in LATENCY_BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{{label},le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "{name}_bucket{{{label},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{label}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{label}}} {}", h.count);
        }
        out
    }
}

/// One finished sequence's count in `engine_request_success_total`; see the file's opening
/// comment.
#[derive(Debug)]
pub struct FinishCount {
    /// None once counted.
    metrics: Option<Arc<Metrics>>,
    engine_reason: FinishReason,
}

impl FinishCount {
    /// Counts the sequence under `finish_reason`, the one its response gives.
    pub fn record(mut self, finish_reason: &str) {
        if let Some(metrics) = self.metrics.take() {
            metrics.count_finish(finish_reason);
        }
    }
}

impl Drop for FinishCount {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            metrics.count_finish(finish_reason(self.engine_reason, 0));
        }
    }
}

/// A label value with `\`, `"` and newlines escaped, as the format asks.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
