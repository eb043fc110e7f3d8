//! Kernel timing for `ENGINE_PROFILE=1`: where a step's GPU time goes, kernel by kernel, on a
//! machine without Nsight Systems (the lent GPU machine has ncu, which replays kernels one at a
//! time and so cannot show a step as it runs).
//!
//! Every launch outside a graph capture gets a pair of timing events around it on the `Gpu`'s
//! stream; the pairs are read back in batches (one stream synchronisation per `FOLD` launches) and
//! summed per kernel and grid shape. The events are themselves stream work: they take the overlap
//! of programmatic dependent launch away from the kernels they sit between and add a few
//! microseconds a launch, so profiled runs are for the breakdown, not for the figures of record.
//! Launches inside a capture (the batch-1 decode graph) are not seen; their replays are.

use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError, LaunchConfig, sys};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// Launches timed before their events are read back and reused.
const FOLD: usize = 4096;

/// The kernels launched so far and their summed time.
pub(crate) struct KernelProfile {
    /// Launches whose events are not read yet: key, start, end.
    pending: Vec<(String, CudaEvent, CudaEvent)>,
    /// Events read back, ready for reuse.
    spare: Vec<CudaEvent>,
    /// Per kernel and grid: launches and milliseconds.
    totals: HashMap<String, (u64, f64)>,
}

impl KernelProfile {
    /// A profile when `ENGINE_PROFILE=1` asks for one.
    pub(crate) fn from_env() -> Option<Self> {
        (std::env::var("ENGINE_PROFILE").as_deref() == Ok("1")).then(|| KernelProfile {
            pending: Vec::new(),
            spare: Vec::new(),
            totals: HashMap::new(),
        })
    }

    fn event(&mut self, context: &Arc<CudaContext>) -> Result<CudaEvent, DriverError> {
        match self.spare.pop() {
            Some(event) => Ok(event),
            None => context.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)),
        }
    }

    /// Records the start of a launch of `name` with `config`; None while the stream is being
    /// captured into a graph (an event there would become a node of the graph).
    pub(crate) fn start(
        &mut self,
        context: &Arc<CudaContext>,
        stream: &CudaStream,
        name: &str,
        config: &LaunchConfig,
    ) -> Result<Option<(String, CudaEvent)>, DriverError> {
        if stream.capture_status()? != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(None);
        }
        let event = self.event(context)?;
        event.record(stream)?;
        let (x, y, z) = config.grid_dim;
        Ok(Some((format!("{name} ({x},{y},{z})x{}", config.block_dim.0), event)))
    }

    /// Records the end of the launch `start` returned.
    pub(crate) fn finish(
        &mut self,
        context: &Arc<CudaContext>,
        stream: &CudaStream,
        (key, start): (String, CudaEvent),
    ) -> Result<(), DriverError> {
        let end = self.event(context)?;
        end.record(stream)?;
        self.pending.push((key, start, end));
        if self.pending.len() >= FOLD {
            self.fold()?;
        }
        Ok(())
    }

    /// Reads every pending pair back into the totals (waits for the stream's work to finish).
    fn fold(&mut self) -> Result<(), DriverError> {
        self.settle(true)
    }

    /// Ends a span of launches (a step): with `keep`, their times go into the totals; without,
    /// they are dropped (a step of another kind than the one being profiled).
    pub(crate) fn settle(&mut self, keep: bool) -> Result<(), DriverError> {
        if !keep {
            if let Some((_, _, end)) = self.pending.last() {
                end.synchronize()?;
            }
            for (_, start, end) in std::mem::take(&mut self.pending) {
                self.spare.extend([start, end]);
            }
            return Ok(());
        }
        for (key, start, end) in std::mem::take(&mut self.pending) {
            let ms = start.elapsed_ms(&end)? as f64;
            let total = self.totals.entry(key).or_default();
            total.0 += 1;
            total.1 += ms;
            self.spare.extend([start, end]);
        }
        Ok(())
    }

    /// The table of kernels by total time since the last report (at most `lines` of them), and
    /// starts counting afresh.
    pub(crate) fn report(&mut self, lines: usize) -> Result<String, DriverError> {
        self.fold()?;
        let by_launch: Vec<(String, (u64, f64))> = self.totals.drain().collect();
        let mut by_kernel: HashMap<String, (u64, f64)> = HashMap::new();
        for (key, (count, ms)) in &by_launch {
            let name = key.split(' ').next().unwrap_or(key);
            let total = by_kernel.entry(name.to_string()).or_default();
            total.0 += count;
            total.1 += ms;
        }
        let all: f64 = by_launch.iter().map(|r| r.1.1).sum();
        let mut text = format!("kernel time {all:.3} ms in all\n");
        for (heading, rows) in
            [("kernel", by_kernel.into_iter().collect()), ("kernel (grid)xthreads", by_launch)]
        {
            let mut rows: Vec<(String, (u64, f64))> = rows;
            rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
            let _ =
                write!(text, "\n| {heading} | launches | ms | us each | share |\n|---|---|---|---|---|\n");
            for (key, (count, ms)) in rows.iter().take(lines) {
                let each = 1e3 * ms / *count as f64;
                let share = 100.0 * ms / all.max(f64::MIN_POSITIVE);
                let _ = writeln!(text, "| {key} | {count} | {ms:.3} | {each:.2} | {share:.1}% |");
            }
        }
        Ok(text)
    }
}
