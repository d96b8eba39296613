//! Process-wide settings a program makes once at start, before any thread
//! starts ([`tune_process`]): the allocator's thresholds and a fixed thread
//! count for candle.

/// Call once at program start, before any thread starts: [`tune_allocator`] and
/// [`fix_thread_count`].
pub fn tune_process() {
    tune_allocator();
    fix_thread_count();
}

/// candle 0.11 asks `get_num_threads()` before every matrix product (and so does
/// `safetune_model::ops`), and without `RAYON_NUM_THREADS` that counts the physical
/// cores by reading and parsing `/proc/cpuinfo` each time: about 200 reads per decoded
/// token at 135M, each a system call in which the kernel formats the file anew. This
/// reads it once and sets `RAYON_NUM_THREADS` to the same number, so every product splits
/// its work as before (the same bits), only without the reads (docs/PERFORMANCE.md,
/// "candle counted the cores before every product"). rayon's global pool — which also
/// reads the variable, and whose default is the logical CPU count — is built first, so its
/// size does not change either. A variable the user (or `--jobs`) set is left alone.
pub fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return;
    }
    // Err only if the global pool already exists (then its size is fixed anyway).
    let _ = rayon::ThreadPoolBuilder::new().build_global();
    let threads = candle_core::utils::get_num_threads();
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
}

/// glibc returns large freed blocks to the OS at once (mmap threshold), so every training
/// step page-faulted its activations back in: ~15% of a step. Raising the mmap threshold
/// keeps them in the heap. glibc also returns the top of the heap once more than the trim
/// threshold of it is free: with batches of varying length (alignment's long answers) the
/// heap of a real run swung between 6.6 and 13 GB every few steps at a threshold of 1 GB,
/// and the kernel's page zeroing took 10% of the run's CPU time (docs/PERFORMANCE.md). So
/// trimming is off: the heap keeps its peak size, which the run needed anyway, until the
/// process ends. Part of [`tune_process`]. No effect off glibc.
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
