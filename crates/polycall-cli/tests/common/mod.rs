//! A `polycall run` process for the CLI tests, and the binary itself.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_polycall"));
    c.env_remove("POLYCALL_ENDPOINT")
        .env_remove("POLYCALL_CONFIG")
        .env("POLYCALL_LOG", "warn");
    c
}

pub struct Runtime {
    pub child: Child,
    pub endpoint: String,
    pub dir: PathBuf,
    /// Remove `dir` on drop.
    pub owns_dir: bool,
}

impl Runtime {
    pub fn start() -> Self {
        Self::start_with(
            &[],
            &["--endpoint", "127.0.0.1:0", "--drain-timeout-ms", "5000"],
        )
    }

    /// `polycall GLOBAL… run RUN… --endpoint-file F --state-dir D` in a fresh temporary
    /// directory, once it has written the endpoint it bound.
    pub fn start_with(global: &[&str], run: &[&str]) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "polycall-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let mut r = Self::start_in(&dir, global, run);
        r.owns_dir = true;
        r
    }

    /// Like [`Runtime::start_with`], in `dir` (kept on drop: a restart finds its files).
    pub fn start_in(dir: &Path, global: &[&str], run: &[&str]) -> Self {
        Self::start_env(dir, &[], global, run)
    }

    /// Like [`Runtime::start_in`], with environment variables `env` set for the
    /// runtime (secret references such as `env:TOKEN`).
    pub fn start_env(dir: &Path, env: &[(&str, &str)], global: &[&str], run: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ep_file = dir.join("endpoint");
        let _ = std::fs::remove_file(&ep_file);
        let child = bin()
            .envs(env.iter().copied())
            .args(global)
            .arg("run")
            .args(run)
            // The tests call the debug methods (off by default).
            .arg("--debug-methods")
            .arg("--endpoint-file")
            .arg(&ep_file)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let endpoint = loop {
            if let Ok(t) = std::fs::read_to_string(&ep_file)
                && t.ends_with('\n')
            {
                break t.trim().to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the runtime did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Runtime {
            child,
            endpoint,
            dir: dir.to_path_buf(),
            owns_dir: false,
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        bin()
            .args(args)
            .args(["--endpoint", &self.endpoint])
            .output()
            .unwrap()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `polycall certs init DIR/ca`, then one certificate per `(name, SPIFFE ID)` into
/// `DIR/certs` (`NAME.pem`, `NAME.key`), valid for loopback.
pub fn issue_certs(dir: &Path, identities: &[(&str, &str)]) {
    let p = |rel: &str| dir.join(rel).display().to_string();
    let run = |args: &[&str]| {
        let o = bin().args(args).output().unwrap();
        assert!(o.status.success(), "polycall {args:?}: {o:?}");
    };
    run(&["certs", "init", &p("ca")]);
    for (name, spiffe) in identities {
        run(&[
            "certs",
            "issue",
            "--ca",
            &p("ca"),
            "--name",
            name,
            "--spiffe",
            spiffe,
            "--loopback",
            "--out",
            &p("certs"),
        ]);
    }
}
