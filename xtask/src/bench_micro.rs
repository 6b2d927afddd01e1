//! `cargo xtask bench micro [--quick]`: criterion microbenchmarks of the per-call hot
//! path (`crates/polycall-bench/benches/micro.rs`): framing, compression selection,
//! routing lookup, the connection writer and an in-memory call round trip. Writes a
//! summary to `target/bench/micro.md`.

use anyhow::{Result, bail};

use crate::{cargo, fmt_ns, root, run};

/// The benchmarks of `micro.rs`: (group, id, calls per iteration).
const BENCHES: [(&str, &str, u64); 15] = [
    ("framing", "encode_call_64B", 1),
    ("framing", "decode_call_64B", 1),
    ("framing", "encode_call_4KiB", 1),
    ("framing", "decode_call_4KiB", 1),
    ("compression_select", "choose_64B_below_min_size", 1),
    ("compression_select", "choose_4KiB_incompressible", 1),
    ("compression_select", "choose_4KiB_json", 1),
    ("routing", "router_handler_200_methods", 1),
    ("routing", "registry_pick_200_methods_4_providers", 1),
    ("connection_writer", "open_call_and_poll_transmit_1x64B", 1),
    (
        "connection_writer",
        "open_call_and_poll_transmit_16x64B",
        16,
    ),
    (
        "connection_writer",
        "open_call_and_poll_transmit_64x64B",
        64,
    ),
    ("connection_roundtrip", "call_reply_1x64B", 1),
    ("connection_roundtrip", "call_reply_16x64B", 16),
    ("connection_roundtrip", "call_reply_64x64B", 64),
];

pub(crate) fn bench_micro(quick: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["bench", "-p", "polycall-bench", "--bench", "micro", "--"]);
    if quick {
        cmd.arg("--quick");
    }
    run("micro benchmarks (criterion)", &mut cmd)?;
    let dir = root().join("target/criterion");
    let mut rows = Vec::new();
    for (group, id, calls) in &BENCHES {
        let est = dir.join(format!("{group}/{id}/new/estimates.json"));
        let Ok(text) = std::fs::read_to_string(&est) else {
            rows.push(format!("| {group} | {id} | not run | |"));
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let ns = v["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
        rows.push(format!(
            "| {group} | {id} | {} | {} |",
            fmt_ns(ns),
            fmt_ns(ns / *calls as f64)
        ));
    }
    if rows.iter().all(|r| r.ends_with("not run | |")) {
        bail!("no criterion results under {}", dir.display());
    }
    let table = format!(
        "# Micro benchmarks\n\n`cargo xtask bench micro{}` (criterion medians).\n\n\
         | group | benchmark | median per iteration | per call |\n|---|---|---|---|\n{}\n",
        if quick { " --quick" } else { "" },
        rows.join("\n")
    );
    let out = root().join("target/bench/micro.md");
    std::fs::create_dir_all(out.parent().expect("has a parent"))?;
    std::fs::write(&out, &table)?;
    println!("\n{table}");
    println!("written: {}", out.display());
    Ok(())
}
