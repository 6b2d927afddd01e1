//! What each target generates for the conformance schema, snapshot-tested with insta
//! (the Python and Rust outputs are also checked in where they are used: see
//! `checked_in.rs`). A template change shows up as a reviewed diff of
//! `tests/snapshots/*.snap`.

use std::path::Path;

fn conformance() -> polycall_bindgen::Schema {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bindings/conformance/conformance.toml");
    let text = std::fs::read_to_string(path).expect("the conformance schema");
    polycall_bindgen::parse_schema(&text, "conformance.toml").expect("it parses")
}

fn snapshot_target(target: &str) {
    for file in polycall_bindgen::generate(&conformance(), target).expect("generation") {
        let name = format!("{target}__{}", file.path.display());
        insta::assert_snapshot!(name, file.contents);
    }
}

#[test]
fn typescript() {
    snapshot_target("typescript");
}

#[test]
fn markdown() {
    snapshot_target("markdown");
}

#[test]
fn rust() {
    snapshot_target("rust");
}
