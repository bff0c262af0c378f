//! Process figures from /proc: CPU seconds (utime + stime), resident memory, open file
//! descriptors and time spent waiting for a CPU, for the broker under test (given its
//! pid) and for the harness itself; and the machine's load average.

use std::fs;

/// A process to sample: the broker (`Pid(n)`) or this harness (`Slf`).
#[derive(Clone, Copy, Debug)]
pub enum Proc {
    Pid(u32),
    Slf,
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Pid(p) => format!("/proc/{p}"),
            Proc::Slf => "/proc/self".to_string(),
        }
    }

    /// utime + stime in seconds, or `None` when the process is gone.
    pub fn cpu_seconds(self) -> Option<f64> {
        let stat = fs::read_to_string(format!("{}/stat", self.dir())).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks())
    }

    /// Resident set size in KiB, or `None` when the process is gone.
    pub fn rss_kib(self) -> Option<u64> {
        let status = fs::read_to_string(format!("{}/status", self.dir())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Open file descriptors (sockets included), or `None` when they cannot be listed.
    pub fn open_fds(self) -> Option<usize> {
        Some(fs::read_dir(format!("{}/fd", self.dir())).ok()?.count())
    }

    /// Nanoseconds the process's threads (those alive now) have spent runnable but
    /// waiting for a CPU, summed (`/proc/PID/task/*/schedstat`, second field), or `None`
    /// when the kernel does not say. Time a broker waits for a CPU is latency its
    /// clients see that the broker did not cause: the machine was busy.
    pub fn run_queue_wait_ns(self) -> Option<u64> {
        let mut total = 0u64;
        for task in fs::read_dir(format!("{}/task", self.dir())).ok()? {
            let Ok(task) = task else { continue };
            let Ok(stat) = fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            total += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
        }
        Some(total)
    }

    /// Whether the process still exists.
    pub fn alive(self) -> bool {
        fs::metadata(self.dir()).is_ok()
    }
}

/// The machine's 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system setting.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures_are_readable() {
        assert!(Proc::Slf.cpu_seconds().is_some());
        assert!(Proc::Slf.rss_kib().is_some_and(|kib| kib > 0));
        assert!(Proc::Slf.open_fds().is_some_and(|n| n >= 3));
        assert!(Proc::Slf.alive());
        assert!(Proc::Slf.run_queue_wait_ns().is_some());
        assert!(!Proc::Pid(u32::MAX).alive());
        assert!(raise_fd_limit() >= 256);
        assert!(load_average().is_some_and(|l| l >= 0.0));
    }
}
