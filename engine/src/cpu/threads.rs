//! The CPU backend's one thread pool: N - 1 persistent workers plus the calling thread share the
//! N parts of a job (the caller splits rows evenly with [`split`]; [`Pool::run_parts`] asks for
//! more parts than threads), each part claimed from an atomic counter by whichever thread comes
//! first. On an idle machine each thread takes one part (of N);
//! when a worker is not scheduled (more threads than free cores, e.g. beside a build), the
//! calling thread takes its part too instead of waiting for it, and the job closes: a worker that
//! arrives after that sees the job closed and leaves it alone. A decode step of
//! a small model is a few hundred jobs of tens of microseconds each, so starting a job must cost
//! well under a microsecond: workers spin on a generation counter for a short while after each
//! job, then sleep on a condition variable (so that an idle engine, or a machine with more
//! threads than cores, does not burn its cores). No allocation per job: the job is a borrowed
//! closure published through a pointer for the length of [`Pool::run`].
//!
//! A job started while another runs (a second thread calling in, as tests do, or a job inside a
//! job) runs all its parts on the calling thread: the parts are the same, so are the results.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;

/// How long a worker spins for the next job before it sleeps (iterations of `spin_loop`, each a
/// few nanoseconds: about 100 microseconds, longer than the gaps between a step's jobs).
const SPINS: usize = 20_000;

type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

struct Shared {
    /// Bumped once per job; a worker looks for parts when it sees a new value.
    generation: AtomicUsize,
    /// The next unclaimed part of the current job.
    next_part: AtomicUsize,
    /// The current job's parts.
    parts: AtomicUsize,
    /// Whether the current job still takes helpers.
    open: AtomicBool,
    /// Workers inside the current job.
    active: AtomicUsize,
    /// The current job, valid while it is open or a worker is inside it.
    job: Mutex<Option<JobPointer>>,
    sleeping: Mutex<usize>,
    wake: Condvar,
    n_threads: usize,
}

#[derive(Clone, Copy)]
struct JobPointer(*const Job<'static>);
// SAFETY: the pointee is Sync and outlives every use (run waits for the workers inside the job).
unsafe impl Send for JobPointer {}

pub struct Pool {
    shared: Arc<Shared>,
    busy: Mutex<()>,
}

/// Threads the global pool will have if it is not built yet (0: one per core).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
static GLOBAL: OnceLock<Pool> = OnceLock::new();

/// Asks for `n` threads in the global pool; effective only before its first use. Returns whether
/// the pool has (or will have) that many.
pub fn set_threads(n: usize) -> bool {
    REQUESTED.store(n.max(1), Ordering::Relaxed);
    GLOBAL.get().is_none_or(|pool| pool.n_threads() == n.max(1))
}

/// The global pool: ENGINE_THREADS, else [`set_threads`]'s number, else one thread per core.
pub fn pool() -> &'static Pool {
    GLOBAL.get_or_init(|| {
        let from_env = std::env::var("ENGINE_THREADS").ok().and_then(|v| v.parse().ok());
        let requested = from_env.unwrap_or(REQUESTED.load(Ordering::Relaxed));
        let n =
            if requested > 0 { requested } else { thread::available_parallelism().map_or(1, |n| n.get()) };
        Pool::new(n)
    })
}

/// Part `part` of `parts` of 0..n: contiguous ranges whose sizes differ by at most one.
pub fn split(n: usize, part: usize, parts: usize) -> std::ops::Range<usize> {
    let (base, extra) = (n / parts, n % parts);
    let start = part * base + part.min(extra);
    start..start + base + usize::from(part < extra)
}

impl Pool {
    pub fn new(n_threads: usize) -> Pool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            next_part: AtomicUsize::new(0),
            parts: AtomicUsize::new(0),
            open: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            job: Mutex::new(None),
            sleeping: Mutex::new(0),
            wake: Condvar::new(),
            n_threads,
        });
        for index in 1..n_threads {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("engine-cpu-{index}"))
                .spawn(move || worker(&shared))
                .expect("spawning a CPU worker thread");
        }
        Pool { shared, busy: Mutex::new(()) }
    }

    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `job(part, parts)` once for every part in 0..parts, parts = the pool's threads, and
    /// returns when all are done; which thread runs which part is not fixed.
    pub fn run(&self, job: &(dyn Fn(usize, usize) + Sync)) {
        self.run_parts(self.shared.n_threads, job)
    }

    /// Like [`Pool::run`] with `parts` parts (at least one): more parts than threads let a
    /// thread that runs ahead (its core not shared at the moment) take more of them, instead
    /// of the job waiting for the slowest thread's one part.
    pub fn run_parts(&self, parts: usize, job: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.shared.n_threads;
        let parts = parts.max(1);
        let Ok(_guard) =
            (if n > 1 { self.busy.try_lock() } else { Err(std::sync::TryLockError::WouldBlock) })
        else {
            for part in 0..parts {
                job(part, parts);
            }
            return;
        };
        let shared = &self.shared;
        // SAFETY: the lifetime is erased only for the span of this call: we wait below until
        // every worker has finished with the pointer.
        let pointer: *const Job<'static> = unsafe { std::mem::transmute(job as *const Job<'_>) };
        *shared.job.lock().expect("pool lock") = Some(JobPointer(pointer));
        shared.next_part.store(0, Ordering::SeqCst);
        shared.parts.store(parts, Ordering::SeqCst);
        shared.open.store(true, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let sleeping = shared.sleeping.lock().expect("pool lock");
            if *sleeping > 0 {
                shared.wake.notify_all();
            }
        }
        take_parts(shared, job);
        // Every part is claimed; close the job, then wait for the workers inside it.
        shared.open.store(false, Ordering::SeqCst);
        let mut spins = 0usize;
        while shared.active.load(Ordering::SeqCst) > 0 {
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        *shared.job.lock().expect("pool lock") = None;
    }
}

/// Runs unclaimed parts of the current job until none is left.
fn take_parts(shared: &Shared, job: &Job<'_>) {
    let n = shared.parts.load(Ordering::SeqCst);
    loop {
        let part = shared.next_part.fetch_add(1, Ordering::SeqCst);
        if part >= n {
            return;
        }
        job(part, n);
    }
}

fn worker(shared: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        let generation = loop {
            let now = shared.generation.load(Ordering::Acquire);
            if now != seen {
                break now;
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
                continue;
            }
            let mut sleeping = shared.sleeping.lock().expect("pool lock");
            *sleeping += 1;
            while shared.generation.load(Ordering::Acquire) == seen {
                sleeping = shared.wake.wait(sleeping).expect("pool lock");
            }
            *sleeping -= 1;
        };
        seen = generation;
        // Announce ourselves before looking: once `run` has closed the job and seen no worker
        // inside, it may end, and a worker that comes later must see the job closed.
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.open.load(Ordering::SeqCst) {
            let job = *shared.job.lock().expect("pool lock");
            if let Some(job) = job {
                // SAFETY: `run` keeps the job alive while it is open or we are inside it.
                take_parts(shared, unsafe { &*job.0 });
            }
        }
        shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A raw pointer to write disjoint parts of one output from several parts of a job (f32 outputs,
/// or the quantized activation blocks of a product).
pub struct SharedOutput<T = f32>(pub *mut T);
impl<T> Clone for SharedOutput<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedOutput<T> {}
// SAFETY: every user writes only the indices of its own part.
unsafe impl<T> Send for SharedOutput<T> {}
unsafe impl<T> Sync for SharedOutput<T> {}

impl<T> SharedOutput<T> {
    /// Writes `value` at `index`.
    ///
    /// # Safety
    /// `index` is within the output, and no other part writes or reads it during the job.
    #[inline]
    pub unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: as the caller promises.
        unsafe { *self.0.add(index) = value };
    }

    /// The `len` elements from `start`, for this part alone.
    ///
    /// # Safety
    /// `start..start + len` is within the output, and no other part touches it during the job.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn split_covers_every_index_once_and_evenly() {
        for n in 0..40 {
            for parts in 1..6 {
                let ranges: Vec<_> = (0..parts).map(|p| split(n, p, parts)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[parts - 1].end, n);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                }
                let sizes: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
            }
        }
    }

    #[test]
    fn every_part_runs_once_per_job_even_after_the_workers_sleep() {
        let pool = Pool::new(3);
        for round in 0..200u64 {
            if round == 100 {
                // Long enough for the workers to stop spinning and sleep.
                thread::sleep(std::time::Duration::from_millis(50));
            }
            let counts: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
            pool.run(&|part, parts| {
                assert_eq!(parts, 3);
                counts[part].fetch_add(round + 1, Ordering::Relaxed);
            });
            for count in &counts {
                assert_eq!(count.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn every_part_of_a_job_of_more_parts_than_threads_runs_once() {
        let pool = Pool::new(2);
        for parts in [1, 2, 3, 8, 17] {
            let counts: Vec<AtomicU64> = (0..parts).map(|_| AtomicU64::new(0)).collect();
            pool.run_parts(parts, &|part, n| {
                assert_eq!(n, parts);
                counts[part].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{parts} parts");
        }
    }

    #[test]
    fn a_job_inside_a_job_runs_on_the_calling_thread() {
        let pool = Pool::new(2);
        let total = AtomicU64::new(0);
        pool.run(&|_, _| {
            pool.run(&|part, _| {
                total.fetch_add(part as u64 + 1, Ordering::Relaxed);
            });
        });
        // Each of the two outer parts ran the inner job's two parts (1 + 2), inline or not.
        assert_eq!(total.load(Ordering::Relaxed), 6);
    }
}
