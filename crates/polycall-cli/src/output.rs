//! What the command prints: plain text for people, or libpolycall's JSON envelope
//! (`--format json`), and the exit code.

use polycall::{Code, Status};
use serde_json::{Value, json};

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// One JSON object: `{"schema_version": 1, "ok", "command", "data", "error"}`.
    Json,
}

/// The global `--format` as given: `dot` and `mermaid` draw a state machine and apply to
/// `polycall state graph` only (which prints DOT for `text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// For people.
    Text,
    /// For programs: the JSON envelope (a machine's graph as JSON for `state graph`).
    Json,
    /// Graphviz DOT (`state graph`).
    Dot,
    /// Mermaid (`state graph`).
    Mermaid,
}

impl FormatArg {
    /// How ordinary output is printed.
    pub fn output(self) -> Format {
        match self {
            FormatArg::Json => Format::Json,
            _ => Format::Text,
        }
    }
}

/// Exit codes of libpolycall's CLI contract.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Runtime error.
    pub const RUNTIME: u8 = 1;
    /// Usage: arguments that do not fit the command.
    pub const USAGE: u8 = 2;
    /// Configuration or invalid input.
    pub const INPUT: u8 = 3;
    /// Interrupted (SIGINT).
    pub const INTERRUPTED: u8 = 130;
}

/// Where output goes and how.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Text or JSON.
    pub format: Format,
    /// Print nothing on success.
    pub quiet: bool,
}

/// What to do about a failure, for people.
fn hint(code: Code) -> &'static str {
    match code {
        Code::Unavailable => {
            "is the runtime running? start one with `polycall run`, or pass --endpoint"
        }
        Code::UnknownMethod => "`polycall describe` lists the methods served",
        Code::DeadlineExceeded => "the call took longer than allowed; raise --timeout-ms",
        Code::InvalidInput | Code::Malformed => "check the input: --json takes a JSON document",
        Code::Unauthenticated | Code::PermissionDenied => "check the token or credentials",
        Code::Busy => "the runtime is overloaded; retry shortly",
        Code::TooLarge => "the message exceeds the negotiated maximum",
        Code::Unsupported => "this capability is not available in this build yet",
        _ => "",
    }
}

impl Out {
    /// Prints a success: `text` for people, `data` in the JSON envelope.
    pub fn ok(&self, command: &str, data: Value, text: impl FnOnce() -> String) -> u8 {
        match self.format {
            Format::Json => println!(
                "{}",
                json!({"schema_version": 1, "ok": true, "command": command, "data": data, "error": null})
            ),
            Format::Text if !self.quiet => {
                let t = text();
                if !t.is_empty() {
                    println!("{t}");
                }
            }
            Format::Text => {}
        }
        exit::OK
    }

    /// Prints an answer that is itself bad news (a degraded runtime's health): the data
    /// and the failure together, with `code` as the exit code.
    pub fn fail_with_data(
        &self,
        command: &str,
        data: Value,
        status: &Status,
        code: u8,
        text: impl FnOnce() -> String,
    ) -> u8 {
        let h = hint(status.code);
        match self.format {
            Format::Json => println!(
                "{}",
                json!({"schema_version": 1, "ok": false, "command": command, "data": data,
                       "error": {"code": status.code.name(), "message": status.message, "hint": h}})
            ),
            Format::Text => {
                if !self.quiet {
                    println!("{}", text());
                }
                eprintln!("error: {status}");
            }
        }
        code
    }

    /// Prints a failure and returns its exit code.
    pub fn fail(&self, command: &str, status: &Status) -> u8 {
        self.fail_with(command, status, status.code.exit_code())
    }

    /// Prints a failure with an explicit exit code.
    pub fn fail_with(&self, command: &str, status: &Status, code: u8) -> u8 {
        let h = hint(status.code);
        match self.format {
            Format::Json => println!(
                "{}",
                json!({"schema_version": 1, "ok": false, "command": command, "data": null,
                       "error": {"code": status.code.name(), "message": status.message, "hint": h}})
            ),
            Format::Text => {
                eprintln!("error: {status}");
                if !h.is_empty() {
                    eprintln!("hint: {h}");
                }
            }
        }
        code
    }
}
