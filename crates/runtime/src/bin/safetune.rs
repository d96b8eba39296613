//! The `safetune` binary. Bad input: one line on stderr, exit code 2.

fn main() {
    safetune_train::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match safetune_runtime::cli::main_with(&args) {
        Ok(out) => {
            // A closed pipe (`safetune schema | head`) is not an error worth a panic.
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), "{out}");
        }
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            std::process::exit(2);
        }
    }
}
