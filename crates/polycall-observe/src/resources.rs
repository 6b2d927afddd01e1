//! The process's resource use, read from `/proc/self` (Linux).
//!
//! Reading takes a few file reads (microseconds); the admin listener and the sampler
//! call it off the calls' path, on tokio's blocking pool.

use std::time::Duration;

use serde::Serialize;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ResourceUsage {
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// CPU time used so far (user + system), seconds.
    pub cpu_seconds: f64,
    /// Open file descriptors (sockets included).
    pub open_fds: u64,
    /// Threads.
    pub threads: u64,
}

impl ResourceUsage {
    /// Reads it now; fields the system does not expose stay 0.
    pub fn read() -> ResourceUsage {
        let mut u = ResourceUsage::default();
        let page = rustix::param::page_size() as u64;
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm")
            && let Some(rss) = statm.split_whitespace().nth(1)
        {
            u.rss_bytes = rss.parse::<u64>().unwrap_or(0) * page;
        }
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            // The command name may hold spaces: the fields start after its `)`.
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After `)`: state is field 0, utime field 11, stime field 12, threads 17.
            let ticks = rustix::param::clock_ticks_per_second() as f64;
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if ticks > 0.0 {
                u.cpu_seconds = (num(11) + num(12)) as f64 / ticks;
            }
            u.threads = num(17);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            u.open_fds = dir.count() as u64;
        }
        u
    }

    /// CPU used between `earlier` and `self`, as a share of one core over `elapsed`.
    pub fn cpu_share_since(&self, earlier: &ResourceUsage, elapsed: Duration) -> f64 {
        let secs = elapsed.as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        ((self.cpu_seconds - earlier.cpu_seconds) / secs).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_threads_and_files() {
        let u = ResourceUsage::read();
        assert!(u.rss_bytes > 1 << 20, "{u:?}");
        assert!(u.threads >= 1, "{u:?}");
        assert!(u.open_fds >= 3, "{u:?}");
        let before = u.cpu_seconds;
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(ResourceUsage::read().cpu_seconds >= before, "{x}");
    }
}
