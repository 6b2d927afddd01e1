//! API rules a grep can hold: no public function of a library crate returns
//! `Result<_, String>` (errors are types a caller can match on).

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::root;

/// Fails naming every public fn of the library crates under `crates/` whose return type is
/// `Result<_, String>`.
pub(crate) fn no_string_errors() -> Result<()> {
    eprintln!("\n==> no public fn returns Result<_, String>");
    let mut found = Vec::new();
    for krate in std::fs::read_dir(root().join("crates")).context("crates/")? {
        let src = krate?.path().join("src");
        // Library crates only: a binary's `pub` is not an API.
        if src.join("lib.rs").is_file() {
            scan(&src, &mut found)?;
        }
    }
    if !found.is_empty() {
        bail!(
            "public functions return Result<_, String>; give them a typed error:\n  {}",
            found.join("\n  ")
        );
    }
    eprintln!("<== none");
    Ok(())
}

fn scan(dir: &Path, found: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            scan(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            for signature in string_error_fns(&text) {
                found.push(format!("{}: {signature}", path.display()));
            }
        }
    }
    Ok(())
}

/// The signatures of `pub fn` / `pub async fn` items returning `Result<…, String>`.
fn string_error_fns(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for start in ["pub fn ", "pub async fn ", "pub const fn "]
        .iter()
        .flat_map(|k| text.match_indices(k).map(|(i, _)| i))
    {
        let rest = &text[start..];
        let end = rest.find(['{', ';']).unwrap_or(rest.len());
        let signature = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
        let returns = signature.split_once(" -> ").map(|(_, r)| r);
        if let Some(ret) = returns {
            let ret = ret.split(" where ").next().unwrap_or(ret).trim();
            if ret.starts_with("Result<") && ret.ends_with(", String>") {
                out.push(signature);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::string_error_fns;

    #[test]
    fn finds_string_errors_across_lines() {
        let text = "pub fn a(x: u8)\n    -> Result<u8, String> {\n}\npub fn b() -> Result<Vec<u8>, Error> {}\n\
                    pub(crate) fn c() -> Result<(), String> {}\npub async fn d() -> Result<(), String>;";
        let found = string_error_fns(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("pub fn a"));
        assert!(found[1].starts_with("pub async fn d"));
    }
}
