//! Test helpers shared by the TLS and authentication tests: a CA in a temporary
//! directory and certificates issued from it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use polycall_security::{
    Ca, ClientAuth, ClientTls, IssueOptions, Issued, SecretRef, ServerTls, write_private,
};

pub use polycall_test_support::TempDir;

/// A scratch directory for `tag`, removed when dropped.
pub fn tmp(tag: &str) -> TempDir {
    TempDir::new(tag)
}

pub fn store(dir: &Path, name: &str, i: &Issued) -> (SecretRef, SecretRef) {
    let c = dir.join(format!("{name}.pem"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, &i.cert_pem).unwrap();
    write_private(&k, i.key_pem.as_bytes()).unwrap();
    (SecretRef::File(c), SecretRef::File(k))
}

/// A CA in a temporary directory and a server certificate for the loopback names.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new(tag: &str) -> Self {
        let dir = tmp(tag);
        let ca = Ca::init_named(dir.join("ca"), &format!("polycall test CA {tag}")).unwrap();
        Self { dir, ca }
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca").join("ca.pem")
    }

    pub fn server_tls(&self, auth: ClientAuth) -> ServerTls {
        let i = self
            .ca
            .issue(
                "node-a",
                Some("spiffe://test.local/node-a"),
                IssueOptions::default().with_loopback(),
            )
            .unwrap();
        let (c, k) = store(&self.dir, "server", &i);
        ServerTls::default()
            .cert_chain(c)
            .key(k)
            .ca(SecretRef::File(self.ca_file()))
            .client_auth(auth)
    }

    /// A client trusting `trust`'s CA, with a certificate from this CA when `cert`.
    pub fn client_tls(
        &self,
        trust: &Pki,
        cert: Option<(&str, IssueOptions)>,
    ) -> (ClientTls, Option<Issued>) {
        let mut t = ClientTls::default().ca(SecretRef::File(trust.ca_file()));
        let mut issued = None;
        if let Some((name, options)) = cert {
            let i = self
                .ca
                .issue(name, Some(&format!("spiffe://test.local/{name}")), options)
                .unwrap();
            let (c, k) = store(&self.dir, name, &i);
            t.cert_chain = Some(c);
            t.key = Some(k);
            issued = Some(i);
        }
        (t, issued)
    }
}
