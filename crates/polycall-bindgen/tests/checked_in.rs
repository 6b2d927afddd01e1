//! The generated files checked in under the bindings are exactly what the schema and
//! the built-in templates produce now, so they never drift (regenerate with
//! `polycall bindgen --schema bindings/conformance/conformance.toml --lang python --out
//! bindings/python/conformance/generated`).

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("the crate lives in crates/")
        .to_path_buf()
}

fn schema() -> polycall_bindgen::Schema {
    let path = repo().join("bindings/conformance/conformance.toml");
    let text = std::fs::read_to_string(&path).expect("the conformance schema");
    polycall_bindgen::parse_schema(&text, "conformance.toml").expect("it parses")
}

/// Each file `target` generates for the conformance schema is the one checked in under
/// `dir` (a path from the repository's root); `files` of them.
fn assert_checked_in(target: &str, dir: &str, files: usize) {
    let dir = repo().join(dir);
    let generated = polycall_bindgen::generate(&schema(), target).expect("generation");
    assert_eq!(generated.len(), files, "{target}: the files per service");
    for f in generated {
        let path = dir.join(&f.path);
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; regenerate it", path.display()));
        assert!(
            on_disk == f.contents,
            "{} differs from a fresh generation; regenerate it (see the test's doc)",
            path.display()
        );
    }
}

#[test]
fn python_conformance_stubs_match_a_fresh_generation() {
    // A module and a page per service.
    assert_checked_in("python", "bindings/python/conformance/generated", 2);
}

/// The Rust target's output for the conformance schema is compiled and run: the Rust
/// conformance client and provider (`crates/polycall-cli/src/bindgen/conformance.rs`)
/// are built on it, and the conformance tests run them against the Python and
/// TypeScript programs. Regenerate with `polycall bindgen --schema
/// bindings/conformance/conformance.toml --lang rust --out
/// crates/polycall-cli/src/bindgen/generated`.
#[test]
fn rust_conformance_stubs_match_a_fresh_generation() {
    // A module per service.
    assert_checked_in("rust", "crates/polycall-cli/src/bindgen/generated", 1);
}

#[test]
fn every_target_renders_the_conformance_schema() {
    let schema = schema();
    let targets = polycall_bindgen::targets();
    for t in ["python", "markdown"] {
        assert!(
            targets.iter().any(|x| x.name == t),
            "target {t} is built in"
        );
    }
    for t in &targets {
        let files = polycall_bindgen::generate(&schema, &t.name)
            .unwrap_or_else(|e| panic!("target {}: {e}", t.name));
        assert!(!files.is_empty(), "target {} wrote nothing", t.name);
        for f in &files {
            for m in ["echo", "add", "fail", "sleep", "exit_now"] {
                assert!(
                    f.contents.contains(m),
                    "{}: {} does not mention {m}",
                    t.name,
                    f.path.display()
                );
            }
        }
    }
    let err = polycall_bindgen::generate(&schema, "cobol").unwrap_err();
    assert!(err.to_string().contains("python"), "{err}");
}

#[test]
fn markdown_pages_document_every_method_and_message() {
    let files = polycall_bindgen::generate(&schema(), "markdown").expect("generation");
    let page = &files[0].contents;
    assert!(page.contains("# Service `conformance`"));
    assert!(page.contains("### `conformance.add`"));
    assert!(page.contains(r#"`{"a": int, "b": int}`"#));
    assert!(page.contains("### `AddInput`"));
    assert!(page.contains("| `a` | `int` | The first addend. |"));
}
