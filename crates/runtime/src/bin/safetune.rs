//! The `safetune` binary. Bad input: one line on stderr, exit code 2. A run whose
//! results were written but hold a set that is not a measurement: exit code 1.

fn main() {
    // Errors are one line: library backtraces (candle and anyhow capture one into every error
    // when RUST_BACKTRACE is set, common in dev shells — ~4 KB per message) stay off unless
    // asked for with RUST_LIB_BACKTRACE; panics still honour RUST_BACKTRACE. Set before any
    // thread starts.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    safetune_train::tune_process();
    if let Err(e) = safetune_runtime::logging::init() {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match safetune_runtime::cli::main_with(&args) {
        Ok(out) => {
            // A closed pipe (`safetune schema | head`) is not an error worth a panic.
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{out}");
        }
        Err(e) => {
            if let Some(u) = e.downcast_ref::<safetune_runtime::output::Unmeasured>() {
                // Results were written; the figures of some sets are not measurements.
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{}", u.output);
                eprintln!("error: {u}");
                std::process::exit(1);
            }
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {}", safetune_runtime::output::elide(&msg, 200));
            std::process::exit(2);
        }
    }
}
