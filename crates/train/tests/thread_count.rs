//! `fix_thread_count` (its own test binary: it sets a process-wide variable and builds
//! rayon's global pool, which no other test of this binary may have built first).

#[test]
fn the_thread_count_is_fixed_once_and_a_set_variable_is_left_alone() {
    // A variable already set (by a user or `--jobs`) stays as it is, and the global pool is not built.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    safetune_train::fix_thread_count();
    assert_eq!(std::env::var("RAYON_NUM_THREADS").as_deref(), Ok("1"));

    std::env::remove_var("RAYON_NUM_THREADS");
    let candle_would = candle_core::utils::get_num_threads();
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    safetune_train::fix_thread_count();
    // candle now reads the count from the variable, the same number it computed from the machine...
    assert_eq!(std::env::var("RAYON_NUM_THREADS").ok(), Some(candle_would.to_string()));
    assert_eq!(candle_core::utils::get_num_threads(), candle_would);
    // ...and rayon's global pool kept its own default (the logical CPUs), not candle's count.
    assert_eq!(rayon::current_num_threads(), logical);
}
