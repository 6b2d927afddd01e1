//! The TypeScript binding (`bindings/typescript`) built once per source state, for the
//! tests that run it with node: `npm ci` when its dev dependencies are missing, then
//! `tsc` (`npm run build`) whenever a source file changed; test processes that nextest
//! runs in parallel wait on a lock file meanwhile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `bindings/typescript`.
pub fn binding() -> PathBuf {
    repo().join("bindings").join("typescript")
}

/// Runs `cmd`; its stdout, or a panic with both outputs.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("{what}: cannot start: {e} (is node/npm installed? `cargo xtask ci` installs them)")
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Every file the build reads, with its contents, hashed: the build is redone when it changes.
fn source_stamp() -> String {
    use std::hash::{DefaultHasher, Hasher};
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "ts") {
                out.push(p);
            }
        }
    }
    let b = binding();
    let mut files = vec![
        b.join("package.json"),
        b.join("package-lock.json"),
        b.join("tsconfig.json"),
    ];
    for d in ["src", "test", "generated", "conformance", "bench"] {
        walk(&b.join(d), &mut files);
    }
    files.sort();
    let mut h = DefaultHasher::new();
    for f in files {
        h.write(f.to_string_lossy().as_bytes());
        h.write(&std::fs::read(&f).unwrap_or_default());
    }
    format!("{:016x}", h.finish())
}

/// Installs the dev dependencies (when missing) and compiles the binding, once per
/// source state, across the test processes nextest runs in parallel.
pub fn build_binding() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let b = binding();
        let lock = std::fs::File::create(b.join(".build.lock")).expect("lock file");
        lock.lock().expect("lock the binding build");
        if !b.join("node_modules").join("typescript").is_dir() {
            let ci = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&b)
                .output();
            if !ci.as_ref().is_ok_and(|o| o.status.success()) {
                run(
                    Command::new("npm")
                        .args(["install", "--no-audit", "--no-fund"])
                        .current_dir(&b),
                    "npm install (bindings/typescript)",
                );
            }
        }
        let stamp = source_stamp();
        let stamp_file = b.join("dist").join(".source-stamp");
        if std::fs::read_to_string(&stamp_file).ok().as_deref() != Some(stamp.as_str()) {
            run(
                Command::new("npm").args(["run", "build"]).current_dir(&b),
                "npm run build (tsc, bindings/typescript)",
            );
            std::fs::write(&stamp_file, stamp).expect("write the build stamp");
        }
        let _ = lock.unlock();
        b
    })
}
