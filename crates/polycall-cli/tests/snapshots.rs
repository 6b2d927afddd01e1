//! The CLI's outputs as users see them, snapshot-tested with insta: a change to a help
//! text, a diagnostic or a listing shows up as a reviewed diff of
//! `tests/snapshots/*.snap` (`cargo insta review`, or `INSTA_UPDATE=always` and a look
//! at `git diff`).

mod common;

use common::bin;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../polycall-runtime/tests/fixtures")
}

/// The command's stdout and stderr, with the fixtures' absolute path made stable.
fn run(args: &[&str]) -> String {
    let o = bin()
        .env("POLYCALL_QOS__MAX_CONCURRENCY", "8")
        .args(args)
        .output()
        .unwrap();
    let fixtures = fixtures().display().to_string();
    let text = format!(
        "exit: {}\n--- stdout\n{}--- stderr\n{}",
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.replace(&fixtures, "[fixtures]")
}

#[test]
fn help() {
    insta::assert_snapshot!(run(&["--help"]));
}

#[test]
fn run_help() {
    insta::assert_snapshot!(run(&["run", "--help"]));
}

#[test]
fn bindgen_targets() {
    insta::assert_snapshot!(run(&["bindgen", "targets"]));
}

#[test]
fn config_validate_lists_every_mistake() {
    let bad = fixtures().join("invalid.toml");
    insta::assert_snapshot!(run(&["config", "validate", bad.to_str().unwrap()]));
}

#[test]
fn config_validate_as_json() {
    let bad = fixtures().join("invalid.toml");
    insta::assert_snapshot!(run(&[
        "--format",
        "json",
        "config",
        "validate",
        bad.to_str().unwrap()
    ]));
}

#[test]
fn config_show_effective() {
    let good = fixtures().join("good.toml");
    insta::assert_snapshot!(run(&[
        "config",
        "show",
        "--effective",
        good.to_str().unwrap(),
        "--set",
        "log.level=debug"
    ]));
}
