//! # polycall-test-support
//!
//! What polycall's tests share, so each test file does not grow its own copy:
//!
//! - [`TempDir`]: a fresh scratch directory, removed when dropped;
//! - [`free_port`]: a TCP port nobody listens on right now;
//! - [`linearizability`]: a checker that a history of concurrent reads, writes and
//!   compare-and-sets on a key-value store is linearizable, and a
//!   [`Recorder`](linearizability::Recorder) to take such histories from concurrent clients;
//! - [`TestRuntime`] (feature `runtime`): a runtime in this process on a free loopback
//!   port, with its state in a scratch directory and the `debug.*` methods on.
//!
//! ```
//! let dir = polycall_test_support::TempDir::new("doc");
//! std::fs::write(dir.join("file"), b"x").unwrap();
//! let path = dir.path().to_owned();
//! drop(dir);
//! assert!(!path.exists());
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A scratch directory under the system's temporary directory, unique to this process
/// and call, removed (with everything in it) when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `polycall-TAG-PID-N` under the temporary directory.
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "polycall-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

/// A `&TempDir` is a `&Path` wherever one is expected.
impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub mod linearizability;
pub mod streams;

/// A loopback TCP port that was free a moment ago (the OS picked it; another process
/// may still take it before the caller binds it, so prefer port 0 where the API allows).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

#[cfg(feature = "runtime")]
pub use runtime::TestRuntime;

#[cfg(feature = "runtime")]
mod runtime {
    use polycall_net::Endpoint;
    use polycall_runtime::{Runtime, RuntimeConfig};

    use crate::TempDir;

    /// A runtime in this process, on a free loopback port, its state in a scratch
    /// directory, with the `debug.*` methods on. Shut it down with
    /// [`TestRuntime::shutdown`]; the directory goes when the value is dropped.
    pub struct TestRuntime {
        /// The runtime.
        pub runtime: Runtime,
        /// Where it listens.
        pub endpoint: Endpoint,
        /// Its state directory.
        pub dir: TempDir,
    }

    impl std::fmt::Debug for TestRuntime {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestRuntime")
                .field("endpoint", &self.endpoint)
                .field("dir", &self.dir)
                .finish()
        }
    }

    impl TestRuntime {
        /// Starts a runtime with the test defaults.
        pub async fn start() -> Self {
            Self::start_with(|c| c).await
        }

        /// Starts a runtime with the test defaults changed by `configure` (which may
        /// change anything, the endpoint and state directory included).
        pub async fn start_with(configure: impl FnOnce(RuntimeConfig) -> RuntimeConfig) -> Self {
            let dir = TempDir::new("runtime");
            let config = RuntimeConfig::default()
                .endpoint("127.0.0.1:0".parse().expect("a loopback endpoint"))
                .state_dir(dir.path().to_owned())
                .debug_methods(true);
            let runtime = Runtime::start(configure(config))
                .await
                .unwrap_or_else(|e| panic!("the test runtime does not start: {e}"));
            let endpoint = runtime.local_endpoint().clone();
            Self {
                runtime,
                endpoint,
                dir,
            }
        }

        /// Shuts the runtime down gracefully.
        pub async fn shutdown(self) {
            self.runtime.shutdown().await;
        }
    }
}
