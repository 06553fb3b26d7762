//! Buffer allocation for large kernel outputs.
//!
//! A 400 MB logits matrix touched for the first time costs ~100 000 page faults with 4 KiB
//! pages. On Linux we ask for transparent huge pages (`madvise(MADV_HUGEPAGE)`, as numpy
//! does for large arrays) before the first touch, which cuts that by 512×.

use crate::dtype::Element;

/// Buffers at least this large (bytes) are advised to use huge pages.
pub const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// A zero-filled vector of `n` elements, huge-page backed when large (Linux).
pub fn alloc_zeroed<T: Element>(n: usize) -> Vec<T> {
    alloc_filled(n, T::zero())
}

/// A vector of `n` copies of `value`, huge-page backed when large (Linux). Also what a big
/// buffer read in scattered pieces wants (a paged KV cache): one TLB entry covers 2 MiB.
pub fn alloc_filled<T: Clone>(n: usize, value: T) -> Vec<T> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes < HUGE_PAGE_MIN_BYTES {
        return vec![value; n];
    }
    let mut v = alloc_advised::<T>(n);
    v.resize(n, value);
    v
}

/// An output buffer of `n` floats for a GEMM that writes every element before anything reads
/// one (`gemm_into` with `accumulate = false`): the zero-fill a product would overwrite at once
/// is skipped (a memset pass over every activation and gradient, ≈ 4% of a LoRA step).
///
/// The contents are unspecified until written; only `f32`/`f64` (`Float`), for which every bit
/// pattern is a value, and only for callers that overwrite the whole buffer.
pub(crate) fn alloc_for_overwrite<T: crate::dtype::Float>(n: usize) -> Vec<T> {
    let mut v = alloc_advised::<T>(n);
    // SAFETY: the capacity is n; T is f32 or f64 (plain old data, no drop glue, every bit
    // pattern valid), and every caller overwrites all n elements before reading any.
    unsafe { v.set_len(n) };
    v
}

/// An empty vector with room for `n` elements, advised to use huge pages when large (Linux).
fn alloc_advised<T>(n: usize) -> Vec<T> {
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    let mut v: Vec<T> = Vec::with_capacity(n);
    if bytes < HUGE_PAGE_MIN_BYTES {
        return v;
    }
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_mut_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let end = start + bytes;
        if end > aligned + HUGE {
            // SAFETY: the range [aligned, end) lies inside the allocation just made; madvise
            // only changes the paging policy of memory we own and is harmless if it fails.
            unsafe {
                libc::madvise(aligned as *mut libc::c_void, (end - aligned) / HUGE * HUGE, libc::MADV_HUGEPAGE);
            }
        }
    }
    v
}

/// Asks the C allocator to keep freed buffers for reuse instead of returning them to the OS.
///
/// A training step allocates and frees the same large activation buffers every step. glibc
/// serves allocations above its mmap threshold with fresh `mmap`s, so each step would pay page
/// faults and the kernel's page zeroing again (≈ 10% of a small model's step). Raising the
/// mmap and trim thresholds makes freed memory reusable, as PyTorch's caching allocator does.
///
/// Those thresholds govern only the main arena. glibc gives other threads (rayon's workers,
/// which run the training step) arenas of their own, built from 64 MiB heaps, and unmaps a
/// secondary heap as soon as it is empty, whatever the thresholds: a step that outgrows one
/// heap mapped, faulted in, zeroed and unmapped a fresh one every step (with a TLB shootdown
/// per unmap). One arena for all threads keeps every freed buffer; our threads allocate only
/// between kernels, so they rarely contend for its lock.
/// Call once at program start (the CLI does); a no-op outside Linux/glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; it is safe to call at any time.
    unsafe {
        // glibc caps the mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2); larger values are refused.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
