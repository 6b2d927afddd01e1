//! What the benchmark-process tests share: the binary, processes killed when dropped,
//! their ready files and a scratch directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `polycall-bench` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_polycall-bench");

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `polycall-bench ARGS` (stdout discarded).
pub fn start(args: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn polycall-bench"),
    )
}

/// Waits (30 s at most) for the whole line a process writes to `file` when ready.
pub fn wait_ready(file: &Path) -> String {
    let started = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(file)
            && t.ends_with('\n')
        {
            return t.trim().to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} never became ready",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `name` in this test process's scratch directory, removed if it exists.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("polycall-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let f = dir.join(name);
    let _ = std::fs::remove_file(&f);
    f
}
