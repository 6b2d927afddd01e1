//! API rules a grep can hold: no public function of a library crate returns
//! `Result<_, String>` (errors are types a caller can match on), and every public
//! configuration struct is `#[non_exhaustive]`.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::root;

/// Fails naming every public configuration struct (a name ending in `Config`,
/// `Settings`, `Options`, `Limits`, `Section` or `Tls`, and `ServerAuth`) of the library
/// crates that lacks `#[non_exhaustive]`: a field added later must break no user.
pub(crate) fn configs_are_non_exhaustive() -> Result<()> {
    eprintln!("\n==> every public config struct is #[non_exhaustive]");
    let mut found = Vec::new();
    for_each_library_file(&mut |path, text| {
        for name in open_config_structs(text) {
            found.push(format!("{}: {name}", path.display()));
        }
    })?;
    if !found.is_empty() {
        bail!(
            "public config structs without #[non_exhaustive] (add it, and builder methods):\n  {}",
            found.join("\n  ")
        );
    }
    eprintln!("<== all are");
    Ok(())
}

/// The config structs in `text` declared `pub struct` without `#[non_exhaustive]` among
/// the attributes right above them.
fn open_config_structs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("pub struct ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let is_config = ["Config", "Settings", "Options", "Limits", "Section", "Tls"]
            .iter()
            .any(|s| name.ends_with(s))
            || name == "ServerAuth";
        // A struct with a private field cannot be built with a literal outside its
        // crate anyway.
        let fields: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with('}'))
            .map(|l| l.trim_start())
            .filter(|l| !l.starts_with("//") && !l.starts_with("#[") && l.contains(':'))
            .collect();
        let all_pub = !fields.is_empty() && fields.iter().all(|l| l.starts_with("pub "));
        if !is_config || !all_pub || rest.trim_end().ends_with(';') {
            continue;
        }
        let attributes = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("#[") || l.starts_with("///") || l.starts_with("#!"));
        if !attributes.clone().any(|l| l.contains("non_exhaustive")) {
            out.push(name);
        }
    }
    out
}

fn for_each_library_file(visit: &mut dyn FnMut(&Path, &str)) -> Result<()> {
    for krate in std::fs::read_dir(root().join("crates")).context("crates/")? {
        let src = krate?.path().join("src");
        if src.join("lib.rs").is_file() {
            walk(&src, visit)?;
        }
    }
    Ok(())
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &str)) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, visit)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            visit(&path, &text);
        }
    }
    Ok(())
}

/// Fails naming every public fn of the library crates under `crates/` whose return type is
/// `Result<_, String>`.
pub(crate) fn no_string_errors() -> Result<()> {
    eprintln!("\n==> no public fn returns Result<_, String>");
    let mut found = Vec::new();
    // Library crates only: a binary's `pub` is not an API.
    for_each_library_file(&mut |path, text| {
        for signature in string_error_fns(text) {
            found.push(format!("{}: {signature}", path.display()));
        }
    })?;
    if !found.is_empty() {
        bail!(
            "public functions return Result<_, String>; give them a typed error:\n  {}",
            found.join("\n  ")
        );
    }
    eprintln!("<== none");
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

    #[test]
    fn finds_open_config_structs() {
        let text = "/// doc\n#[derive(Debug)]\npub struct OpenConfig {\n    pub a: u8,\n}\n\
                    #[non_exhaustive]\n/// doc\npub struct ClosedConfig {\n    pub a: u8,\n}\n\
                    pub struct PrivateTls {\n    inner: u8,\n}\npub struct Other {\n    pub a: u8,\n}\n";
        assert_eq!(
            super::open_config_structs(text),
            vec!["OpenConfig".to_owned()]
        );
    }
}
