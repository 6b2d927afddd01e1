//! Embeds every template set under `templates/` (one directory per target) into the
//! library, so the `polycall` binary needs no files at run time.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut sets: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .map(|rd| rd.filter_map(Result::ok).collect())
        .unwrap_or_default();
    dirs.sort_by_key(|e| e.file_name());
    for dir in dirs {
        let path = dir.path();
        if !path.is_dir() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let name = dir.file_name().to_string_lossy().into_owned();
        let mut files = Vec::new();
        collect(&path, &path, &mut files);
        files.sort();
        sets.push((name, files));
    }
    let mut out = String::from("/// Every embedded template set: (target, [(file, text)]).\n");
    out.push_str("pub(crate) static TEMPLATE_SETS: &[(&str, &[(&str, &str)])] = &[\n");
    for (name, files) in &sets {
        let _ = writeln!(out, "    ({name:?}, &[");
        for (rel, abs) in files {
            let _ = writeln!(out, "        ({rel:?}, include_str!({abs:?})),");
        }
        out.push_str("    ]),\n");
    }
    out.push_str("];\n");
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo")).join("templates.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        println!("cargo:rerun-if-changed={}", p.display());
        if p.is_dir() {
            collect(base, &p, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            let rel = rel.to_string_lossy().replace('\\', "/");
            out.push((rel, p.to_string_lossy().into_owned()));
        }
    }
}
