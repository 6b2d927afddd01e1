//! The facade's feature matrix: each feature alone builds without a warning (clippy,
//! which also lints the workspace crates it pulls in), its example runs, and a
//! plain `net` build carries none of the heavy optional crates.

use anyhow::{Context, Result, bail};

use crate::{cargo, run};

/// Each facade feature on its own, with the examples it must run.
const MATRIX: &[(&str, &[&str])] = &[
    ("proto", &[]),
    ("security", &[]),
    ("layers", &[]),
    ("net", &["hello"]),
    ("zstd", &[]),
    ("brotli", &[]),
    ("opaque", &[]),
    ("hsm", &[]),
    ("ca", &[]),
    ("state", &[]),
    ("raft", &[]),
    ("config", &[]),
    ("observe", &[]),
    ("otlp", &[]),
    ("runtime", &["routed"]),
    ("compat", &[]),
];

/// What `default-features = false, features = ["net"]` must not compile.
const NOT_IN_NET: &[&str] = &[
    "cryptoki",
    "opaque-ke",
    "argon2",
    "rcgen",
    "redb",
    "cel",
    "zstd",
    "brotli",
    "opentelemetry-otlp",
    "openraft",
    "prometheus-client",
];

/// Runs the whole matrix; fails at the first feature that does not build or run.
pub(crate) fn feature_matrix() -> Result<()> {
    for (feature, examples) in MATRIX {
        run(
            &format!("polycall with only `{feature}`"),
            cargo().args([
                "clippy",
                "-q",
                "-p",
                "polycall",
                "--no-default-features",
                "--features",
                feature,
                "--lib",
                "--examples",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        for example in *examples {
            run(
                &format!("example {example} with only `{feature}`"),
                cargo().args([
                    "run",
                    "-q",
                    "-p",
                    "polycall",
                    "--no-default-features",
                    "--features",
                    feature,
                    "--example",
                    example,
                ]),
            )?;
        }
    }
    run(
        "polycall-proto's sans-IO example without compression",
        cargo().args([
            "run",
            "-q",
            "-p",
            "polycall-proto",
            "--no-default-features",
            "--example",
            "conversation",
        ]),
    )?;
    run(
        "proto and security tests with every optional feature off",
        cargo().args([
            "test",
            "-q",
            "-p",
            "polycall-proto",
            "-p",
            "polycall-security",
            "--no-default-features",
            "--lib",
            "--tests",
        ]),
    )?;
    run(
        "polycall-net's unit tests with every optional feature off",
        cargo().args([
            "test",
            "-q",
            "-p",
            "polycall-net",
            "--no-default-features",
            "--lib",
        ]),
    )?;
    net_is_lean()
}

/// `cargo tree` of the facade with only `net`: none of [`NOT_IN_NET`].
fn net_is_lean() -> Result<()> {
    eprintln!("\n==> a `net`-only build carries no optional crate");
    let out = cargo()
        .args([
            "tree",
            "-p",
            "polycall",
            "--no-default-features",
            "--features",
            "net",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .context("cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = NOT_IN_NET
        .iter()
        .copied()
        .filter(|krate| {
            tree.lines()
                .any(|line| line.split_whitespace().next() == Some(*krate))
        })
        .collect();
    if !found.is_empty() {
        bail!("polycall with only `net` depends on {found:?}; keep them behind their features");
    }
    eprintln!("<== none of {NOT_IN_NET:?} in a `net`-only build");
    Ok(())
}
