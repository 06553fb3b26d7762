//! One knob for the number of compute threads.
//!
//! Every parallel kernel runs on rayon's global pool or, for the matmuls, attention, GELU,
//! LayerNorm and AdamW of a training step, on a spinning team of the same size
//! (`cpu::team_for_each`), so its size is the thread count. [`init_threads`] sizes it once, from an explicit value or from the
//! `YUANLI_THREADS` environment variable; without either, rayon uses one thread per core.

use std::sync::OnceLock;

/// The environment variable that sets the thread count (`YUANLI_THREADS=2`).
pub const THREADS_ENV: &str = "YUANLI_THREADS";

static CONFIGURED: OnceLock<usize> = OnceLock::new();

/// Sizes the global compute pool. `threads = None` reads `YUANLI_THREADS`, else uses all cores.
///
/// Call it before the first kernel runs. Returns the thread count in effect; later calls (or a
/// pool that rayon already started) keep the first size.
pub fn init_threads(threads: Option<usize>) -> usize {
    *CONFIGURED.get_or_init(|| {
        let wanted = threads.or_else(|| {
            std::env::var(THREADS_ENV).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0)
        });
        if let Some(n) = wanted {
            // An already-built global pool (someone ran a kernel first) keeps its size.
            let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
        }
        rayon::current_num_threads()
    })
}

/// Number of threads parallel kernels use.
pub fn num_threads() -> usize {
    match CONFIGURED.get() {
        Some(&n) => n,
        None => init_threads(None),
    }
}

/// Runs `f` on a worker of the compute pool and returns its result.
///
/// Parallel kernels called from a pool worker split their work on the spot (the caller does
/// its share while the other workers steal the rest). Called from an outside thread, every
/// kernel would first have to hand its job to the pool and sleep until it is done, paying a
/// cross-thread wake-up per call: tens of microseconds, which is the whole budget of a small
/// matrix-vector product. Entry points (the CLI, a generation loop) run their work through here.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    num_threads();
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::join(f, || ()).0
}
