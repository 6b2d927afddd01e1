//! Files that hold secrets (keys, tokens, the users file), written one way only: created
//! with `O_CREAT | O_EXCL` and mode 0600 from the first byte, so no other user can open
//! them even for an instant, and no existing file or planted symlink is ever followed.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("pf-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("secret");
//! polycall_security::private_file::replace(&path, b"one").unwrap();
//! polycall_security::private_file::replace(&path, b"two").unwrap();
//! assert_eq!(std::fs::read(&path).unwrap(), b"two");
//! assert!(polycall_security::private_file::create_new(&path, b"three").is_err());
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Creates `path` (which must not exist) with mode 0600 and writes `contents`, synced to
/// disk. Fails with `AlreadyExists` rather than touch an existing file or a symlink.
pub fn create_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut o = fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    let mut f = o.open(path)?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Replaces `path` atomically: a new private temporary file beside it (as
/// [`create_new`]), then a rename over it. A reader sees the old contents or the new,
/// never a part; the directory entry is synced.
pub fn replace(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = temporary_beside(path)?;
    create_new(&tmp, contents)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && let Ok(dir) = fs::File::open(parent)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// A name for a temporary file beside `path`, unique within this process.
pub fn temporary_beside(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file path", path.display()),
        )
    })?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(path.with_file_name(tmp))
}

/// Writes a secret file readable by its owner only (mode 0600), replacing any
/// earlier file atomically: the same as [`replace`], under the name the
/// certificate tools use.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    replace(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_owner_only_and_never_follow_links() {
        let dir = std::env::temp_dir().join(format!("pf-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("key");
        let _ = fs::remove_file(&f);
        replace(&f, b"k").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&f).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let target = dir.join("elsewhere");
            let link = dir.join("link");
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link).unwrap();
            assert_eq!(
                create_new(&link, b"x").unwrap_err().kind(),
                io::ErrorKind::AlreadyExists
            );
            assert!(!target.exists());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
