//! A process's CPU time and resident memory, read from `/proc` (Linux): CPU is
//! `utime + stime` of `/proc/<pid>/stat` in clock ticks (`getconf CLK_TCK`, else 100),
//! memory is `VmRSS` of `/proc/<pid>/status`.

use std::time::Duration;

/// Reads CPU time and RSS of one process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessUsage {
    pid: u32,
    ticks_per_second: u64,
}

impl ProcessUsage {
    pub fn new(pid: u32) -> Self {
        ProcessUsage {
            pid,
            ticks_per_second: clock_ticks_per_second(),
        }
    }

    /// This benchmark's own process.
    pub fn current() -> Self {
        Self::new(std::process::id())
    }

    /// User plus system CPU time used so far; zero if the process is gone.
    pub fn cpu(&self) -> Duration {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return Duration::ZERO;
        };
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime field 14, stime field 15.
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            return Duration::ZERO;
        };
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(user), Some(system)) => {
                Duration::from_secs_f64((user + system) as f64 / self.ticks_per_second as f64)
            }
            _ => Duration::ZERO,
        }
    }

    /// Resident set size in MiB; zero if the process is gone.
    pub fn rss_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .filter(|&ticks| ticks > 0)
        .unwrap_or(100)
}
