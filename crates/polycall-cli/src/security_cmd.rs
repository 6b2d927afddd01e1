//! `polycall certs` (your own CA: init, issue, revoke) and `polycall users` (OPAQUE
//! password users: add, remove, list). Private keys are written 0600 in 0700
//! directories; passwords are read from the terminal or standard input, never argv.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use polycall::Status;
use polycall::runtime::config::security::opaque_setup_path;
use polycall::security::opaque::{ServerSetup, UserStore, read_password};
use polycall::security::{Ca, IssueOptions, write_private};
use serde_json::json;

use crate::output::{Out, exit};

/// `polycall certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a certificate authority in DIR (ca.pem, and ca.key readable by you alone).
    Init {
        /// The CA's directory (created; refused when it already holds a CA).
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "polycall CA")]
        name: String,
    },
    /// Issue a node or client certificate: NAME.pem and NAME.key in --out.
    Issue {
        /// The CA's directory.
        #[arg(long, default_value = "ca")]
        ca: PathBuf,
        /// The certificate's DNS name and common name.
        #[arg(long)]
        name: String,
        /// Its SPIFFE ID (`spiffe://DOMAIN/PATH`), the principal of its mTLS sessions.
        #[arg(long)]
        spiffe: Option<String>,
        /// Also name localhost, 127.0.0.1 and ::1 (a node serving on loopback).
        #[arg(long)]
        loopback: bool,
        /// Days of validity.
        #[arg(long, default_value_t = 90)]
        days: u64,
        /// Where to write NAME.pem and NAME.key (default: the current directory).
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Write a revocation list (crl.pem in the CA's directory) revoking serial numbers.
    Revoke {
        /// The CA's directory.
        #[arg(long, default_value = "ca")]
        ca: PathBuf,
        /// Serial numbers in hex, as `certs issue` printed them.
        #[arg(required = true)]
        serials: Vec<String>,
        /// Days until the list must be renewed.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
}

/// `polycall users …`
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Register NAME: reads the password from the terminal (twice) or one line of
    /// standard input; stores only the OPAQUE registration record.
    Add {
        /// The user name (the principal becomes `user:NAME`).
        name: String,
        /// Replace the user's record if it exists (a password change).
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        file: UsersFile,
    },
    /// Remove NAME.
    Remove {
        /// The user name.
        name: String,
        #[command(flatten)]
        file: UsersFile,
    },
    /// List the users.
    List {
        #[command(flatten)]
        file: UsersFile,
    },
}

/// Where the users live.
#[derive(Debug, clap::Args)]
pub struct UsersFile {
    /// The users file (`auth.users_file` of the runtime's configuration); the server's
    /// OPAQUE secret is kept beside it in `opaque-setup`.
    #[arg(
        long = "users-file",
        default_value = ".polycall/users.json",
        env = "POLYCALL_USERS_FILE"
    )]
    path: PathBuf,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_start_matches("0x");
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_input(e.to_string())
}

/// Runs `polycall certs …`.
pub fn certs(command: CertsCommand, out: Out) -> u8 {
    let result = match command {
        CertsCommand::Init { dir, name } => Ca::init_named(&dir, &name).map_err(invalid).map(|_| {
            let pem = dir.join("ca.pem");
            (
                json!({"ca": pem, "key": dir.join("ca.key")}),
                format!(
                    "CA created in {}: give {} to clients and nodes (ca_file); keep ca.key secret",
                    dir.display(),
                    pem.display()
                ),
            )
        }),
        CertsCommand::Issue {
            ca,
            name,
            spiffe,
            loopback,
            days,
            out: dir,
        } => issue(&ca, &name, spiffe.as_deref(), loopback, days, &dir),
        CertsCommand::Revoke { ca, serials, days } => revoke(&ca, &serials, days),
    };
    match result {
        Ok((data, text)) => out.ok("certs", data, || text),
        Err(s) => out.fail_with("certs", &s, exit::INPUT),
    }
}

fn issue(
    ca: &Path,
    name: &str,
    spiffe: Option<&str>,
    loopback: bool,
    days: u64,
    dir: &Path,
) -> Result<(serde_json::Value, String), Status> {
    let ca = Ca::load(ca).map_err(invalid)?;
    let mut options = IssueOptions::valid_for(Duration::from_secs(days * 24 * 3600));
    if loopback {
        options = options.with_loopback();
    }
    let issued = ca.issue(name, spiffe, options).map_err(invalid)?;
    std::fs::create_dir_all(dir).map_err(|e| invalid(format!("{}: {e}", dir.display())))?;
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    if key.exists() {
        return Err(invalid(format!(
            "{} exists; remove it first (a key is never overwritten)",
            key.display()
        )));
    }
    std::fs::write(&cert, &issued.cert_pem)
        .map_err(|e| invalid(format!("{}: {e}", cert.display())))?;
    write_private(&key, issued.key_pem.as_bytes())
        .map_err(|e| invalid(format!("{}: {e}", key.display())))?;
    let serial = hex(&issued.serial);
    Ok((
        json!({"cert": cert, "key": key, "serial": serial, "spiffe": spiffe}),
        format!(
            "issued {} and {} (serial {serial}{})",
            cert.display(),
            key.display(),
            spiffe.map(|s| format!(", {s}")).unwrap_or_default()
        ),
    ))
}

fn revoke(ca: &Path, serials: &[String], days: u64) -> Result<(serde_json::Value, String), Status> {
    let parsed = serials
        .iter()
        .map(|s| unhex(s).ok_or_else(|| invalid(format!("{s:?} is not a hex serial number"))))
        .collect::<Result<Vec<_>, _>>()?;
    let authority = Ca::load(ca).map_err(invalid)?;
    let pem = authority
        .crl(&parsed, Duration::from_secs(days * 24 * 3600))
        .map_err(invalid)?;
    let path = ca.join("crl.pem");
    std::fs::write(&path, pem).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    Ok((
        json!({"crl": path, "revoked": serials}),
        format!(
            "{} revokes {} certificate(s); point tls.crl_file at it and send the runtime SIGHUP",
            path.display(),
            serials.len()
        ),
    ))
}

/// Runs `polycall users …`.
pub fn users(command: UsersCommand, out: Out) -> u8 {
    let result = match command {
        UsersCommand::Add {
            name,
            replace,
            file,
        } => add_user(&file.path, &name, replace),
        UsersCommand::Remove { name, file } => UserStore::open(&file.path)
            .and_then(|mut s| {
                let removed = s.remove(&name)?;
                s.save()?;
                Ok(removed)
            })
            .map_err(invalid)
            .and_then(|removed| {
                if removed {
                    Ok((json!({"removed": name}), format!("removed {name}")))
                } else {
                    Err(Status::not_found(format!("no user {name:?}")))
                }
            }),
        UsersCommand::List { file } => UserStore::open(&file.path).map_err(invalid).map(|s| {
            let names = s.names();
            (json!({"users": names}), names.join("\n"))
        }),
    };
    match result {
        Ok((data, text)) => out.ok("users", data, || text),
        Err(s) => out.fail_with("users", &s, exit::INPUT),
    }
}

fn add_user(path: &Path, name: &str, replace: bool) -> Result<(serde_json::Value, String), Status> {
    let setup = ServerSetup::load_or_create(&opaque_setup_path(path)).map_err(invalid)?;
    let mut store = UserStore::open(path).map_err(invalid)?;
    if store.contains(name) && !replace {
        return Err(Status::new(
            polycall::Code::AlreadyExists,
            format!("user {name:?} exists; pass --replace to change the password"),
        ));
    }
    let password = read_password(&format!("password for {name}: ")).map_err(invalid)?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let again = read_password("again: ").map_err(invalid)?;
        if again != password {
            return Err(invalid("the passwords differ; nothing was changed"));
        }
    }
    if replace {
        store.replace(&setup, name, &password)
    } else {
        store.add(&setup, name, &password)
    }
    .and_then(|()| store.save())
    .map_err(invalid)?;
    Ok((
        json!({"user": name, "users_file": path}),
        format!(
            "{name} registered in {} (only the OPAQUE record is stored)",
            path.display()
        ),
    ))
}
