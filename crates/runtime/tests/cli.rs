//! The command line as a user meets it: clap's help for every command, a completion
//! script, and flag mistakes as one line naming the command's help, with exit code 2.

mod common;

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let d = common::tmp("cli");
    let r = common::safetune(args, &d.join("cache"));
    (r.status.code(), String::from_utf8_lossy(&r.stdout).into_owned(), String::from_utf8_lossy(&r.stderr).into_owned())
}

#[test]
fn every_command_has_help_and_completions_are_generated() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for cmd in ["run", "eval", "report", "calibrate", "rejudge", "judge-check", "serve", "model", "list", "schema", "completions"] {
        assert!(out.contains(&format!("  {cmd} ")), "`{cmd}` missing from --help:\n{out}");
        let (code, help, err) = run(&[cmd, "--help"]);
        assert_eq!(code, Some(0), "{cmd} --help: {err}");
        assert!(help.contains(&format!("Usage: safetune {cmd}")), "{cmd} --help:\n{help}");
    }
    let (_, help, _) = run(&["run", "--help"]);
    for flag in ["--overlay", "--data-dir", "--jobs", "--dry-run", "--checkpoint-minutes"] {
        assert!(help.contains(flag), "{flag} missing from run --help");
    }
    assert!(!help.contains("--worker-cells"), "an internal flag is shown");
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, err) = run(&["completions", shell]);
        assert_eq!(code, Some(0), "{shell}: {err}");
        assert!(script.contains("checkpoint-minutes") && script.contains("judge-check"), "{shell} script incomplete");
    }
    let (code, version, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(version.starts_with("safetune "), "{version}");
}

#[test]
fn flag_mistakes_are_one_line_naming_the_help_exit_2() {
    for (args, needle) in [
        (vec![], "no command given"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["run"], "run: the following required arguments were not provided: <SPEC> (see `safetune run --help`)"),
        (vec!["run", "x.toml", "--bogus"], "run: unexpected argument '--bogus'"),
        (vec!["run", "x.toml", "--jobs", "0"], "--jobs"),
        (vec!["run", "x.toml", "--checkpoint-minutes", "-1"], "not a number of minutes"),
        (vec!["eval", "--task", "builtin"], "--model"),
        (vec!["list", "things"], "possible values: datasets"),
        (vec!["serve", "--model", "m", "--port", "99999"], "--port"),
        (vec!["eval", "--model", "m", "--mmlu-shots", "0,x"], "--mmlu-shots"),
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
        assert!(out.is_empty(), "{args:?} printed {out}");
    }
}
