//! glibc returns large freed blocks to the OS at once (mmap threshold), so
//! every training step page-faults its activations back in: ~15% of a step.
//! Raising the mmap threshold keeps them in the heap. It also returns the top
//! of the heap once more than the trim threshold of it is free: with batches
//! of varying length (alignment's long answers) the heap of a real run swung
//! between 6.6 and 13 GB every few steps at a threshold of 1 GB, and the
//! kernel's page zeroing took 10% of the run's CPU time (docs/PERFORMANCE.md).
//! So trimming is off: the heap keeps its peak size, which the run needed
//! anyway, until the process ends.

/// Call once at program start. No effect off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only changes allocator tuning parameters.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 1 << 30);
            // -1: never trim (mallopt(3)).
            mallopt(M_TRIM_THRESHOLD, -1);
        }
    }
}
