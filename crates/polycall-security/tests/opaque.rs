//! OPAQUE password login against real opaque-ke and real files under the temp dir.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use polycall_security::opaque::{
    ClientLogin, OpaqueError, ServerLogin, ServerSetup, UserStore, read_password_line,
};
use rand::RngCore;

const PASSWORD: &[u8] = b"Pw!Qx9#Zr-ZebraLamp_Ok77x41~";

/// A fresh directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "polycall-opaque-{}-{test}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A setup file and a saved users file with `alice` registered, both reopened from disk.
fn server(dir: &TempDir) -> (ServerSetup, UserStore) {
    let setup = ServerSetup::load_or_create(&dir.path("server/opaque.key")).unwrap();
    let users_path = dir.path("server/users.json");
    let mut users = UserStore::open(&users_path).unwrap();
    users.add(&setup, "alice", PASSWORD).unwrap();
    users.save().unwrap();
    let setup = ServerSetup::load_or_create(&dir.path("server/opaque.key")).unwrap();
    let users = UserStore::open(&users_path).unwrap();
    (setup, users)
}

/// One recorded login: the three messages and both outcomes.
struct Transcript {
    m1: Vec<u8>,
    m2: Vec<u8>,
    client: Result<(Vec<u8>, Vec<u8>), OpaqueError>,
}

fn attempt(setup: &ServerSetup, users: &UserStore, name: &str, password: &[u8]) -> Transcript {
    let (client, m1) = ClientLogin::start(name, password).unwrap();
    let (_server, m2) = ServerLogin::start(setup, users, &m1).unwrap();
    Transcript {
        client: client.finish(&m2),
        m1,
        m2,
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

/// A finish message with valid framing but content the attacker made up.
fn forged_finish(len: usize) -> Vec<u8> {
    let mut m = vec![1u8, 3];
    m.extend(random_bytes(len - 2));
    m
}

#[test]
fn right_password_logs_in_and_keys_match() {
    let dir = TempDir::new("right");
    let (setup, users) = server(&dir);
    let (client, m1) = ClientLogin::start("alice", PASSWORD).unwrap();
    assert_eq!(client.name(), "alice");
    let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
    assert_eq!(server.claimed_name(), "alice");
    let (m3, client_key) = client.finish(&m2).unwrap();
    let (name, server_key) = server.finish_with_key(&m3).unwrap();
    assert_eq!(name, "alice");
    assert_eq!(client_key, server_key);
    assert_eq!(client_key.len(), 64);

    // `finish` returns the name, and every login has its own session key.
    let (client, m1) = ClientLogin::start("alice", PASSWORD).unwrap();
    let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
    let (m3, key2) = client.finish(&m2).unwrap();
    assert_eq!(server.finish(&m3).unwrap(), "alice");
    assert_ne!(key2, client_key);
}

#[test]
fn wrong_password_fails_at_client_and_forced_finalization_fails_at_server() {
    let dir = TempDir::new("wrong");
    let (setup, users) = server(&dir);
    let t = attempt(&setup, &users, "alice", b"Pw!Qx9#Zr-ZebraLamp_Ok7742~");
    assert!(
        matches!(t.client, Err(OpaqueError::WrongPassword)),
        "{:?}",
        t.client.err()
    );

    // Force a finalization with the wrong password: the attacker registers alice with
    // the guess in a store of its own (same setup, even), answers the client from that
    // store, and sends the resulting finalization to the real server.
    let (client, m1) = ClientLogin::start("alice", b"guess").unwrap();
    let (real, _) = ServerLogin::start(&setup, &users, &m1).unwrap();
    let mut fake_users = UserStore::open(&dir.path("fake/users.json")).unwrap();
    fake_users.add(&setup, "alice", b"guess").unwrap();
    let (_fake, m2_fake) = ServerLogin::start(&setup, &fake_users, &m1).unwrap();
    let (m3, _) = client
        .finish(&m2_fake)
        .expect("the fake record opens with the guess");
    assert!(matches!(real.finish(&m3), Err(OpaqueError::LoginFailed)));

    // A made-up finalization of the right shape fails the same way.
    let (real, _) = ServerLogin::start(&setup, &users, &m1).unwrap();
    assert!(matches!(
        real.finish(&forged_finish(m3.len())),
        Err(OpaqueError::LoginFailed)
    ));
}

#[test]
fn unknown_user_gets_an_answer_and_fails() {
    let dir = TempDir::new("unknown");
    let (setup, users) = server(&dir);
    let known = attempt(&setup, &users, "alice", PASSWORD);
    let unknown = attempt(&setup, &users, "mallory", PASSWORD);
    // The answer has the same shape as a registered user's.
    assert_eq!(unknown.m2.len(), known.m2.len());
    assert_eq!(unknown.m1.len(), known.m1.len() + 2);
    assert!(matches!(unknown.client, Err(OpaqueError::WrongPassword)));

    // A finalization of the right length for the unknown user is refused.
    let (m3, _) = known.client.unwrap();
    let (client, m1) = ClientLogin::start("mallory", PASSWORD).unwrap();
    let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
    assert!(client.finish(&m2).is_err());
    assert!(matches!(
        server.finish(&forged_finish(m3.len())),
        Err(OpaqueError::LoginFailed)
    ));
}

#[test]
fn replayed_messages_fail() {
    let dir = TempDir::new("replay");
    let (setup, users) = server(&dir);
    let (client, m1) = ClientLogin::start("alice", PASSWORD).unwrap();
    let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
    let (m3, _) = client.finish(&m2).unwrap();
    assert_eq!(server.finish(&m3).unwrap(), "alice");

    // Step 1 replayed: fresh nonces, so a different answer each time.
    let (replayed, m2b) = ServerLogin::start(&setup, &users, &m1).unwrap();
    let (_, m2c) = ServerLogin::start(&setup, &users, &m1).unwrap();
    assert_ne!(m2b, m2);
    assert_ne!(m2c, m2);
    assert_ne!(m2b, m2c);
    // Step 3 replayed against the new server state: refused.
    assert!(matches!(
        replayed.finish(&m3),
        Err(OpaqueError::LoginFailed)
    ));
}

#[test]
fn the_stored_record_alone_cannot_log_in() {
    let dir = TempDir::new("record");
    let (setup, users) = server(&dir);
    let record = users.record("alice").unwrap().to_vec();
    let file = std::fs::read(users.path()).unwrap();
    let hex: String = record.iter().map(|b| format!("{b:02x}")).collect();
    let guesses: Vec<&[u8]> = vec![&record, hex.as_bytes(), b"", b"alice", &file];
    let good_len = attempt(&setup, &users, "alice", PASSWORD)
        .client
        .unwrap()
        .0
        .len();
    for guess in guesses {
        let (client, m1) = ClientLogin::start("alice", guess).unwrap();
        let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
        assert!(matches!(
            client.finish(&m2),
            Err(OpaqueError::WrongPassword)
        ));
        // Finalizations made of the record's bytes, or random, are refused.
        let mut from_record = vec![1u8, 3];
        from_record.extend(record.iter().cycle().take(good_len - 2));
        assert!(matches!(
            server.finish(&from_record),
            Err(OpaqueError::LoginFailed)
        ));
        let (_, m1) = ClientLogin::start("alice", guess).unwrap();
        let (server, _) = ServerLogin::start(&setup, &users, &m1).unwrap();
        assert!(matches!(
            server.finish(&forged_finish(good_len)),
            Err(OpaqueError::LoginFailed)
        ));
    }
}

#[test]
fn the_users_file_holds_no_trace_of_the_password() {
    let dir = TempDir::new("trace");
    let (_setup, users) = server(&dir);
    let file = std::fs::read(users.path()).unwrap();
    let record = users.record("alice").unwrap();
    let text = String::from_utf8(file.clone()).unwrap();
    assert!(text.contains("alice"), "the file names its users");
    let hex: String = PASSWORD.iter().map(|b| format!("{b:02x}")).collect();
    for w in 4..=PASSWORD.len() {
        for sub in PASSWORD.windows(w) {
            // Every window of 4+ bytes of this password holds a non-hex character, so
            // none can appear in a JSON file of names and hex records.
            assert!(
                !contains(&file, sub),
                "file contains {:?}",
                String::from_utf8_lossy(sub)
            );
            if w >= 6 {
                assert!(!contains(record, sub));
            }
        }
    }
    for sub in hex.as_bytes().windows(16) {
        assert!(!contains(&file, sub), "file contains the password's hex");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn files_are_private_and_group_readable_ones_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let setup_path = dir.path("new/dir/opaque.key");
    let setup = ServerSetup::load_or_create(&setup_path).unwrap();
    assert_eq!(mode(&setup_path), 0o600);
    assert_eq!(mode(&dir.path("new/dir")), 0o700);
    // The same setup comes back.
    let again = ServerSetup::load_or_create(&setup_path).unwrap();
    assert_eq!(again.public_key(), setup.public_key());
    assert_eq!(again.to_bytes(), setup.to_bytes());

    let users_path = dir.path("users/users.json");
    let mut users = UserStore::open(&users_path).unwrap();
    assert!(users.is_empty());
    users.add(&setup, "bob", b"hunter2!").unwrap();
    users.save().unwrap();
    assert_eq!(mode(&users_path), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path("users")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");

    std::fs::set_permissions(&setup_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ServerSetup::load_or_create(&setup_path).unwrap_err();
    assert!(
        matches!(err, OpaqueError::Permissions { mode: 0o644, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");

    std::fs::set_permissions(&users_path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = UserStore::open(&users_path).unwrap_err();
    assert!(matches!(err, OpaqueError::Permissions { .. }), "{err:?}");

    // A corrupt setup file is refused, not silently replaced.
    let bad = dir.path("bad.key");
    std::fs::write(&bad, b"not a setup").unwrap();
    std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        ServerSetup::load_or_create(&bad),
        Err(OpaqueError::Corrupt { .. })
    ));
    let bad_users = dir.path("bad.json");
    std::fs::write(&bad_users, b"{\"users\": 3}").unwrap();
    std::fs::set_permissions(&bad_users, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        UserStore::open(&bad_users),
        Err(OpaqueError::Corrupt { .. })
    ));
}

#[test]
fn registration_add_replace_remove() {
    let dir = TempDir::new("register");
    let (setup, mut users) = server(&dir);
    assert!(matches!(
        users.add(&setup, "alice", b"other"),
        Err(OpaqueError::UserExists(n)) if n == "alice"
    ));
    assert!(matches!(
        users.add(&setup, "carol", b""),
        Err(OpaqueError::EmptyPassword)
    ));
    for bad in ["", "has space", "tab\there", &"x".repeat(256)] {
        assert!(
            matches!(
                users.add(&setup, bad, b"pw"),
                Err(OpaqueError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
    users.add(&setup, "carol", b"carol-pw").unwrap();
    assert_eq!(users.names(), ["alice", "carol"]);

    users.replace(&setup, "alice", b"new password").unwrap();
    users.save().unwrap();
    let users = UserStore::open(users.path()).unwrap();
    assert!(matches!(
        attempt(&setup, &users, "alice", PASSWORD).client,
        Err(OpaqueError::WrongPassword)
    ));
    let t = attempt(&setup, &users, "alice", b"new password");
    let (m3, _) = t.client.unwrap();
    let (server, _) = ServerLogin::start(&setup, &users, &t.m1).unwrap();
    assert!(
        matches!(server.finish(&m3), Err(OpaqueError::LoginFailed)),
        "replay after replace"
    );

    let mut users = users;
    assert!(users.remove("carol").unwrap());
    assert!(!users.remove("carol").unwrap());
    assert_eq!(users.names(), ["alice"]);
    assert_eq!(users.len(), 1);
    users.save().unwrap();
    assert!(!UserStore::open(users.path()).unwrap().contains("carol"));

    // Records are bound to the setup that made them.
    let other = ServerSetup::generate();
    assert!(matches!(
        attempt(&other, &users, "alice", b"new password").client,
        Err(OpaqueError::WrongPassword)
    ));
}

fn assert_malformed<T: std::fmt::Debug>(what: &str, r: Result<T, OpaqueError>) {
    assert!(matches!(r, Err(OpaqueError::Malformed(_))), "{what}: {r:?}");
}

#[test]
fn truncated_and_garbage_messages_are_malformed() {
    let dir = TempDir::new("garbage");
    let (setup, users) = server(&dir);
    let (client, m1) = ClientLogin::start("alice", PASSWORD).unwrap();
    let (server, m2) = ServerLogin::start(&setup, &users, &m1).unwrap();
    let (m3, _) = client.finish(&m2).unwrap();
    drop(server);

    for n in 0..m1.len() {
        assert_malformed(
            &format!("m1[..{n}]"),
            ServerLogin::start(&setup, &users, &m1[..n]),
        );
    }
    for n in 0..m2.len() {
        let (client, _) = ClientLogin::start("alice", PASSWORD).unwrap();
        assert_malformed(&format!("m2[..{n}]"), client.finish(&m2[..n]));
    }
    for n in 0..m3.len() {
        let (server, _) = ServerLogin::start(&setup, &users, &m1).unwrap();
        assert_malformed(&format!("m3[..{n}]"), server.finish(&m3[..n]));
    }
    // One byte too many, another version, the wrong step, a name length past the end.
    let mut long = m1.clone();
    long.push(0);
    assert_malformed("m1+1", ServerLogin::start(&setup, &users, &long));
    let mut v2 = m1.clone();
    v2[0] = 2;
    assert_malformed("version 2", ServerLogin::start(&setup, &users, &v2));
    assert_malformed("m3 as m1", ServerLogin::start(&setup, &users, &m3));
    let (client, _) = ClientLogin::start("alice", PASSWORD).unwrap();
    assert_malformed("m1 as m2", client.finish(&m1));
    let mut name_len = m1.clone();
    name_len[2] = 0xff;
    name_len[3] = 0xff;
    assert_malformed("name length", ServerLogin::start(&setup, &users, &name_len));
    let mut bad_name = m1.clone();
    bad_name[4] = 0xff;
    assert_malformed(
        "name not UTF-8",
        ServerLogin::start(&setup, &users, &bad_name),
    );
    // The setup's own parser.
    let setup_bytes = setup.to_bytes();
    for n in 0..setup_bytes.len() {
        assert_malformed("setup prefix", ServerSetup::from_bytes(&setup_bytes[..n]));
    }

    // Random content behind valid framing never panics: it is refused, or (rarely, if
    // the random bytes decode as group elements) answered / rejected as a failed login.
    for _ in 0..200 {
        let mut g = m1[..9].to_vec();
        g.extend(random_bytes(m1.len() - 9));
        if let Ok((server, _)) = ServerLogin::start(&setup, &users, &g) {
            assert!(server.finish(&m3).is_err());
        }
        let mut g = m2[..2].to_vec();
        g.extend(random_bytes(m2.len() - 2));
        let (client, _) = ClientLogin::start("alice", PASSWORD).unwrap();
        assert!(client.finish(&g).is_err());
        let (server, _) = ServerLogin::start(&setup, &users, &m1).unwrap();
        assert!(server.finish(&forged_finish(m3.len())).is_err());
        let any = random_bytes((rand::rngs::OsRng.next_u32() % 200) as usize);
        assert!(ServerLogin::start(&setup, &users, &any).is_err());
    }
}

#[test]
fn password_lines_lose_their_line_ending() {
    assert_eq!(
        read_password_line(&mut Cursor::new(b"s3cret\n".to_vec())).unwrap(),
        b"s3cret"
    );
    assert_eq!(
        read_password_line(&mut Cursor::new(b"s3cret\r\nnext\n".to_vec())).unwrap(),
        b"s3cret"
    );
    assert_eq!(
        read_password_line(&mut Cursor::new(b"no newline".to_vec())).unwrap(),
        b"no newline"
    );
    assert_eq!(
        read_password_line(&mut Cursor::new(b"\n".to_vec())).unwrap(),
        b""
    );
    assert!(matches!(
        read_password_line(&mut Cursor::new(Vec::new())),
        Err(OpaqueError::NoPassword)
    ));
}
