//! `polycall config validate | show | migrate`, and loading `--config FILE` for `run`.

use std::path::{Path, PathBuf};

use polycall::runtime::config::{self, Config, Diagnostic, LoadedConfig, Origin, migrate};
use serde_json::{Value, json};

use crate::output::{Format, Out, exit};

/// `polycall config …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a polycall.toml: every mistake with file:line:col (exit 0 valid, 3 invalid).
    Validate {
        /// The file (default: --config, else ./polycall.toml).
        file: Option<PathBuf>,
        /// Override a key: `--set section.key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Show the configuration: each value and where it comes from (default, file:line,
    /// env NAME, --set).
    Show {
        /// Every key, defaults included (without it: only the keys set somewhere).
        #[arg(long)]
        effective: bool,
        /// The file (default: --config, else ./polycall.toml).
        file: Option<PathBuf>,
        /// Override a key: `--set section.key=value` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Write a polycall.toml from libpolycall's Polycallfile / Polycallrc /
    /// Polycallrc.<language> / .polycallrc (files or directories; default: .), or bring an
    /// older polycall.toml (FILE.toml) to the current version.
    Migrate {
        /// libpolycall files or directories, or one older polycall.toml.
        paths: Vec<PathBuf>,
        /// Where to write.
        #[arg(long, default_value = "polycall.toml")]
        out: PathBuf,
        /// Overwrite --out if it exists.
        #[arg(long)]
        force: bool,
    },
}

fn print_diags(out: &Out, diags: &[Diagnostic]) {
    if out.format == Format::Text {
        for d in diags {
            eprintln!("{d}");
        }
    }
}

fn envelope(command: &str, ok: bool, data: Value, error: Option<(&str, String, &str)>) {
    let error = error.map_or(
        Value::Null,
        |(code, message, hint)| json!({"code": code, "message": message, "hint": hint}),
    );
    println!(
        "{}",
        json!({"schema_version": 1, "ok": ok, "command": command, "data": data, "error": error})
    );
}

/// Reports an invalid configuration: each diagnostic on stderr (text) or in the JSON
/// envelope, exit 3.
pub fn invalid(out: &Out, command: &str, what: &str, diags: &[Diagnostic]) -> u8 {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let message = format!(
        "{what}: {errors} error{}",
        if errors == 1 { "" } else { "s" }
    );
    match out.format {
        Format::Json => envelope(
            command,
            false,
            json!({"diagnostics": diags.iter().map(Diagnostic::to_json).collect::<Vec<_>>()}),
            Some((
                "invalid_input",
                message,
                "fix each error at the position given; docs/config.md lists every key",
            )),
        ),
        Format::Text => {
            print_diags(out, diags);
            eprintln!("error: {message}");
        }
    }
    exit::INPUT
}

/// A refusal of `config migrate` (exit 3) with its own hint.
fn refuse(out: &Out, message: String, hint: &str) -> u8 {
    match out.format {
        Format::Json => envelope(
            "config migrate",
            false,
            Value::Null,
            Some(("invalid_input", message, hint)),
        ),
        Format::Text => {
            eprintln!("error: {message}");
            eprintln!("hint: {hint}");
        }
    }
    exit::INPUT
}

/// Loads `path` with the process environment and `sets`.
pub fn load(path: &Path, sets: &[String]) -> Result<LoadedConfig, Vec<Diagnostic>> {
    Config::load(Some(path), &Config::process_env(), sets)
}

fn default_file(file: Option<PathBuf>, global: Option<&Path>) -> PathBuf {
    file.or_else(|| global.map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("polycall.toml"))
}

/// Runs a `polycall config` command.
pub fn config(cmd: ConfigCommand, global: Option<&Path>, out: Out) -> u8 {
    match cmd {
        ConfigCommand::Validate { file, sets } => {
            let file = default_file(file, global);
            match load(&file, &sets) {
                Err(d) => invalid(&out, "config validate", &file.display().to_string(), &d),
                Ok(l) => {
                    print_diags(&out, &l.warnings);
                    let w = l.warnings.len();
                    out.ok(
                        "config validate",
                        json!({"file": file.display().to_string(), "valid": true,
                               "diagnostics": l.warnings.iter().map(Diagnostic::to_json).collect::<Vec<_>>()}),
                        || {
                            format!(
                                "{}: valid{}",
                                file.display(),
                                if w > 0 { format!(" ({w} warning{})", if w == 1 { "" } else { "s" }) } else { String::new() }
                            )
                        },
                    )
                }
            }
        }
        ConfigCommand::Show {
            effective,
            file,
            sets,
        } => {
            let file = default_file(file, global);
            let l = match load(&file, &sets) {
                Ok(l) => l,
                Err(d) => return invalid(&out, "config show", &file.display().to_string(), &d),
            };
            print_diags(&out, &l.warnings);
            let rows: Vec<_> = l
                .entries()
                .filter(|(_, e)| effective || e.origin != Origin::Default)
                .collect();
            let data = json!({
                "file": file.display().to_string(),
                "values": rows.iter().map(|(d, e)| json!({
                    "key": d.path(),
                    "value": e.value.as_ref().map_or(Value::Null, config::Value::to_json),
                    "source": e.origin.to_string(),
                    "reloadable": d.reloadable,
                })).collect::<Vec<_>>(),
            });
            out.ok("config show", data, || {
                let lines: Vec<(String, String)> = rows
                    .iter()
                    .map(|(d, e)| {
                        let v = e
                            .value
                            .as_ref()
                            .map_or_else(|| "(unset)".to_owned(), ToString::to_string);
                        (format!("{} = {v}", d.path()), e.origin.to_string())
                    })
                    .collect();
                let width = lines.iter().map(|(a, _)| a.len()).max().unwrap_or(0);
                lines
                    .iter()
                    .map(|(a, b)| format!("{a:width$}  # {b}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        ConfigCommand::Migrate {
            paths,
            out: dest,
            force,
        } => migrate_cmd(paths, &dest, force, out),
    }
}

fn migrate_cmd(paths: Vec<PathBuf>, dest: &Path, force: bool, out: Out) -> u8 {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths
    };
    if dest.exists() && !force {
        return refuse(
            &out,
            format!("{} exists: not overwritten", dest.display()),
            "pass --force to overwrite it, or --out another file",
        );
    }
    let tomls: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml"))
        .collect();
    let (text, data, notes, warnings): (String, Value, Vec<String>, Vec<Diagnostic>) = if let [
        one,
    ] =
        tomls.as_slice()
    {
        if paths.len() != 1 {
            return refuse(
                &out,
                "a polycall.toml is migrated on its own".into(),
                "migrate one polycall.toml at a time, without libpolycall files beside it",
            );
        }
        let text = match std::fs::read_to_string(one) {
            Ok(t) => t,
            Err(e) => return refuse(&out, format!("cannot read {}: {e}", one.display()), ""),
        };
        match migrate::migrate_toml(&text, one) {
            Err(d) => return invalid(&out, "config migrate", &one.display().to_string(), &d),
            Ok(m) => {
                let data = json!({"from_version": m.from, "to_version": m.to, "notes": m.notes});
                let mut notes = vec![format!("{}: version {} → {}", one.display(), m.from, m.to)];
                notes.extend(m.notes.iter().map(|n| format!("  {n}")));
                (m.toml, data, notes, Vec::new())
            }
        }
    } else {
        let (files, mut warnings) = match migrate::discover(&paths) {
            Ok(x) => x,
            Err(d) => return invalid(&out, "config migrate", "libpolycall configuration", &d),
        };
        let m = match migrate::migrate_libpolycall(&files) {
            Ok(m) => m,
            Err(mut d) => {
                d.extend(warnings);
                return invalid(&out, "config migrate", "libpolycall configuration", &d);
            }
        };
        warnings.extend(m.warnings.iter().cloned());
        let mut notes: Vec<String> = m
            .mapped
            .iter()
            .map(|x| format!("{}: {} → {} = {}", x.origin, x.from, x.to, x.value))
            .collect();
        for u in &m.unmapped {
            notes.push(format!(
                "{}: not migrated: {} {} — {}",
                u.origin, u.key, u.value, u.reason
            ));
        }
        let data = json!({
            "sources": m.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "mapped": m.mapped.iter().map(|x| json!({"from": x.from, "location": x.origin.to_string(), "to": x.to, "value": x.value.to_json()})).collect::<Vec<_>>(),
            "unmapped": m.unmapped.iter().map(|u| json!({"key": u.key, "value": u.value, "location": u.origin.to_string(), "reason": u.reason})).collect::<Vec<_>>(),
        });
        (m.toml, data, notes, warnings)
    };
    // What the new file gives, checked as `config validate` would (TLS files are looked
    // up beside the output).
    let check = Config::load_str(&text, dest, &[], &[]);
    if let Err(e) = std::fs::write(dest, &text) {
        return refuse(&out, format!("cannot write {}: {e}", dest.display()), "");
    }
    print_diags(&out, &warnings);
    let check_diags = match &check {
        Ok(l) => l.warnings.clone(),
        Err(d) => d.clone(),
    };
    if out.format == Format::Text && !check_diags.is_empty() {
        eprintln!(
            "{}: check it with `polycall config validate {}`:",
            dest.display(),
            dest.display()
        );
        print_diags(&out, &check_diags);
    }
    let mut data = data;
    data["out"] = json!(dest.display().to_string());
    data["valid"] = json!(check.is_ok());
    data["warnings"] = json!(
        warnings
            .iter()
            .chain(check_diags.iter())
            .map(Diagnostic::to_json)
            .collect::<Vec<_>>()
    );
    out.ok("config migrate", data, || {
        let mut t = notes.join("\n");
        t.push_str(&format!("\nwrote {}", dest.display()));
        t
    })
}
