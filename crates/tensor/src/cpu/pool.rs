//! A spinning thread team for latency-bound work (decoding one token at a time).
//!
//! Generating a token runs ~200 small matrix-vector products, each worth splitting over the
//! cores but each only 10–100 µs long. Waking a parked worker costs 5–50 µs on a VM, so a
//! pool that sleeps between jobs (rayon's, by design) spends a large share of every token
//! waiting for the wake-up. [`SpinPool`] keeps its workers busy-waiting on an epoch counter
//! for a couple of milliseconds after each job — long enough to span the gap between two
//! matmuls — and only then parks them, so a burst of jobs pays no wake-ups and an idle
//! program burns no CPU. Threads are started once, with the pool, never per token.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker waits (spinning, then yielding) before it parks.
const SPIN_FOR: Duration = Duration::from_millis(3);
/// Pause-spins before a waiting thread starts yielding its core: if the thread it waits for
/// was descheduled (more runnable threads than cores), spinning on would only delay it.
const PURE_SPINS: u32 = 2048;

/// One step of a wait loop: a CPU pause while the wait is young, then a yield.
#[inline]
fn backoff(spins: &mut u32) {
    *spins = spins.saturating_add(1);
    if *spins < PURE_SPINS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// A pointer to the current job (a `Job` living on the caller's stack during `run`).
    job: AtomicPtr<()>,
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicU64,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Set when a worker's job panicked.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Per worker: whether it is (about to be) parked.
    parked: Vec<AtomicBool>,
}

/// A team of `n` threads (the caller and `n − 1` workers) that runs a closure on all of them.
///
/// Safe to share between threads: one caller at a time has the team; a second caller that
/// arrives while a job runs does not wait and does not touch the shared job slot — it runs
/// every index of its own job on its own thread, one after another (see [`SpinPool::run`]).
pub struct SpinPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Held by the caller whose job the workers run.
    busy: AtomicBool,
}

impl SpinPool {
    /// A team of `n ≥ 1` threads: the caller of [`SpinPool::run`] plus `n − 1` workers.
    pub fn new(n: usize) -> SpinPool {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            parked: (0..n).map(|_| AtomicBool::new(false)).collect(),
        });
        let workers = (1..n)
            .map(|i| {
                let sh = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("yuanli-spin-{i}"))
                    .spawn(move || worker(&sh, i))
                    .expect("spawning a SpinPool worker")
            })
            .collect();
        SpinPool { shared, workers, busy: AtomicBool::new(false) }
    }

    /// Threads in the team.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` once for every `i` in `0..threads()`, `f(0)` on the calling thread, and
    /// returns when all have finished. Panics if any call panicked.
    ///
    /// If another thread's job is running (or this is a job calling `run` on its own pool),
    /// the calls `f(0)`, `f(1)`, … run one after another on the calling thread instead: the
    /// same work with the same per-index split, only not in parallel. Jobs therefore never
    /// share the job slot, and a concurrent caller can neither corrupt nor deadlock the team.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        if self.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            (0..self.threads()).for_each(f);
            return;
        }
        struct Release<'a>(&'a AtomicBool);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _release = Release(&self.busy);
        let sh = &*self.shared;
        let job: Job<'_> = f;
        sh.job.store(&job as *const Job<'_> as *mut (), Ordering::Release);
        sh.remaining.store(self.workers.len(), Ordering::Release);
        sh.epoch.fetch_add(1, Ordering::SeqCst);
        for (i, w) in self.workers.iter().enumerate() {
            if sh.parked[i + 1].load(Ordering::SeqCst) {
                w.thread().unpark();
            }
        }
        // If f(0) panics we must still wait for the workers: they hold a pointer to `job`.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        let mut spins = 0;
        while sh.remaining.load(Ordering::Acquire) != 0 {
            backoff(&mut spins);
        }
        sh.job.store(std::ptr::null_mut(), Ordering::Release);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        assert!(!sh.panicked.swap(false, Ordering::AcqRel), "a SpinPool job panicked on a worker thread");
    }
}

fn worker(sh: &Shared, i: usize) {
    let mut seen = 0u64;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = sh.epoch.load(Ordering::Acquire);
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            if e != seen {
                seen = e;
                break;
            }
            backoff(&mut spins);
            if !spins.is_multiple_of(256) {
                continue;
            }
            if idle_since.elapsed() > SPIN_FOR {
                sh.parked[i].store(true, Ordering::SeqCst);
                if sh.epoch.load(Ordering::SeqCst) == seen && !sh.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
                sh.parked[i].store(false, Ordering::SeqCst);
                idle_since = Instant::now();
                spins = 0;
            }
        }
        // SAFETY: `run` stored a pointer to a `Job` that stays alive until `remaining` drops
        // to zero, which happens only after this call returns.
        let job: Job<'_> = unsafe { *(sh.job.load(Ordering::Acquire) as *const Job<'_>) };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(i))).is_err() {
            sh.panicked.store(true, Ordering::Release);
        }
        sh.remaining.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice that the threads of one [`SpinPool::run`] write in disjoint pieces (each
/// item of work owns a range of the output that no other item touches: a head's columns of
/// some rows, a block of rows). It hands out `&mut` pieces without ever making two that
/// overlap — which is the caller's promise, hence `unsafe`.
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: it is a `&mut [T]` split between threads; `piece`'s contract keeps the parts apart.
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}
// SAFETY: as above: shared references only hand out non-overlapping `&mut` pieces.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    /// Borrows `s` for the duration of the parallel job.
    pub fn new(s: &'a mut [T]) -> Self {
        DisjointSlice { ptr: s.as_mut_ptr(), len: s.len(), _borrow: std::marker::PhantomData }
    }

    /// Elements `start..start + len` (bounds-checked).
    ///
    /// # Safety
    /// No other piece overlapping this range may be alive at the same time, on any thread.
    #[track_caller]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn piece(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start, "piece {start}+{len} of {}", self.len);
        // SAFETY: in bounds (checked above) of a live `&mut [T]`; exclusive by the contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// The contiguous share `[start, end)` of `0..n` that thread `i` of `threads` takes, in
/// multiples of `align` (the last share takes the remainder).
pub fn share(n: usize, i: usize, threads: usize, align: usize) -> (usize, usize) {
    let align = align.max(1);
    let units = n.div_ceil(align);
    let per = units.div_ceil(threads.max(1));
    let start = (i * per * align).min(n);
    let end = ((i + 1) * per * align).min(n);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_job_across_many_jobs() {
        let pool = SpinPool::new(3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1000));
        // After the workers have parked, a job still wakes them.
        std::thread::sleep(SPIN_FOR * 3);
        pool.run(&|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1001));
    }

    #[test]
    fn shares_cover_the_range_without_overlap() {
        for n in [0, 1, 7, 64, 100] {
            let mut next = 0;
            for i in 0..3 {
                let (s, e) = share(n, i, 3, 4);
                assert_eq!(s, next.min(n));
                next = e;
            }
            assert_eq!(next, n);
        }
    }

    #[test]
    fn concurrent_callers_each_get_every_index_exactly_once() {
        let pool = SpinPool::new(2);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        let hits: Vec<AtomicUsize> = (0..2).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(&|i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                            // A job may run a job on its own pool: it runs alone, no deadlock.
                            pool.run(&|_| {});
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }

    #[test]
    #[should_panic(expected = "a SpinPool job panicked")]
    fn a_panicking_worker_is_reported() {
        let pool = SpinPool::new(2);
        pool.run(&|i| assert!(i == 0, "boom"));
    }
}
