//! The benchmark's figures and the table it prints: each measure beside its goal (from
//! issue #10) and whether today's control plane meets it.

use std::fmt::Write as _;
use std::time::Duration;

/// p50, p99 and max of a set of durations.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spread {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Spread {
    pub fn of_micros(mut samples: Vec<u64>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let rank = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            Duration::from_micros(samples.get(rank).copied().unwrap_or(0))
        };
        Spread {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }

    fn ms(&self) -> String {
        format!(
            "p50 {:.1} / p99 {:.1} / max {:.1} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Mean and max of per-proxy or per-change counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeanMax {
    pub mean: f64,
    pub max: f64,
}

impl MeanMax {
    pub fn of(values: &[f64]) -> Self {
        MeanMax {
            mean: values.iter().sum::<f64>() / values.len().max(1) as f64,
            max: values.iter().copied().fold(0.0, f64::max),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ScaleReport {
    pub nodes: usize,
    pub proxies: usize,
    pub connections: usize,
    pub changes: usize,
    pub burst: usize,
    pub register_concurrency: usize,
    pub binaries: String,

    pub registration: Duration,
    pub registration_cpu: Duration,
    pub registration_etcd_cpu: Duration,

    pub snapshot_bytes: u64,
    pub snapshot_all: Duration,
    pub snapshot_cpu: Duration,

    pub rss_before_proxies: f64,
    pub rss_with_proxies: f64,
    pub rss_end: f64,

    /// From the Admin call's start to each proxy holding the change, over all changes.
    pub change_to_proxy: Spread,
    pub change_admin_call: Spread,
    pub delta_bytes: u64,
    /// Control-plane CPU seconds per change.
    pub change_cpu: MeanMax,

    pub burst_writes: Duration,
    /// From the burst's last write returning to each proxy holding the final table.
    pub burst_final: Spread,
    /// The same from the last call's start (the write may commit before its reply).
    pub burst_final_from_last_start: Spread,
    pub burst_spread: Duration,
    pub burst_pushes_per_proxy: MeanMax,
    pub burst_cpu: Duration,
    /// Whether every proxy ended on the same version.
    pub same_final_version: bool,

    pub bench_cpu: Duration,
    /// Selected lines of the control plane's /metrics at the end.
    pub metrics: Vec<String>,
    /// Set when a phase failed: the figures after it are missing (zero).
    pub failed_phase: Option<String>,
}

impl ScaleReport {
    pub fn table(&self) -> String {
        let rate = self.nodes as f64 / self.registration.as_secs_f64().max(1e-9);
        let rows: Vec<(String, String, &str, Option<bool>)> = vec![
            (
                format!(
                    "registration ({} nodes, {} concurrent RegisterNode)",
                    self.nodes, self.register_concurrency
                ),
                format!(
                    "{rate:.0} nodes/s ({:.2} s; control-plane CPU {:.2} s, etcd CPU {:.2} s)",
                    self.registration.as_secs_f64(),
                    self.registration_cpu.as_secs_f64(),
                    self.registration_etcd_cpu.as_secs_f64()
                ),
                "≥ 2,000 nodes/s",
                Some(rate >= 2000.0),
            ),
            (
                "snapshot size".into(),
                format!(
                    "{:.2} MiB ({} bytes)",
                    mib(self.snapshot_bytes),
                    self.snapshot_bytes
                ),
                "",
                None,
            ),
            (
                format!(
                    "all {} proxies hold the full snapshot ({} connections)",
                    self.proxies, self.connections
                ),
                format!(
                    "{:.2} s (control-plane CPU {:.2} s)",
                    self.snapshot_all.as_secs_f64(),
                    self.snapshot_cpu.as_secs_f64()
                ),
                "",
                None,
            ),
            (
                "control-plane RSS: before proxies / with proxies / end".into(),
                format!(
                    "{:.0} / {:.0} / {:.0} MiB",
                    self.rss_before_proxies, self.rss_with_proxies, self.rss_end
                ),
                "≤ 256 MiB with 1,000 proxies",
                Some(self.rss_with_proxies.max(self.rss_end) <= 256.0),
            ),
            (
                format!(
                    "one change → held by every proxy ({} changes × {} proxies)",
                    self.changes, self.proxies
                ),
                self.change_to_proxy.ms(),
                "p99 ≤ 250 ms",
                Some(self.change_to_proxy.p99 <= Duration::from_millis(250)),
            ),
            (
                "  Admin call (DrainNode / RecoverNode)".into(),
                self.change_admin_call.ms(),
                "",
                None,
            ),
            (
                "  delta size".into(),
                format!("{} bytes", self.delta_bytes),
                "",
                None,
            ),
            (
                "control-plane CPU per single change".into(),
                format!(
                    "mean {:.3} s / max {:.3} s",
                    self.change_cpu.mean, self.change_cpu.max
                ),
                "≤ 0.1 s",
                Some(self.change_cpu.max <= 0.1),
            ),
            (
                format!(
                    "burst: {} drains started over {:.1} s (last reply after {:.2} s) → final at every proxy, after the last reply",
                    self.burst,
                    self.burst_spread.as_secs_f64(),
                    self.burst_writes.as_secs_f64()
                ),
                self.burst_final.ms(),
                "all within 1 s",
                // Not measured when the burst failed.
                (self.burst_writes > Duration::ZERO)
                    .then(|| self.burst_final.max <= Duration::from_secs(1)),
            ),
            (
                "  the same, after the last DrainNode call started".into(),
                self.burst_final_from_last_start.ms(),
                "",
                None,
            ),
            (
                "  pushes per proxy during the burst".into(),
                format!(
                    "mean {:.1} / max {:.0}",
                    self.burst_pushes_per_proxy.mean, self.burst_pushes_per_proxy.max
                ),
                "",
                None,
            ),
            (
                "  control-plane CPU during the burst".into(),
                format!("{:.2} s", self.burst_cpu.as_secs_f64()),
                "",
                None,
            ),
            (
                "every proxy ended on the same version".into(),
                if self.same_final_version { "yes" } else { "NO" }.into(),
                "",
                None,
            ),
            (
                "benchmark process CPU (subscribers, Admin client)".into(),
                format!("{:.2} s", self.bench_cpu.as_secs_f64()),
                "",
                None,
            ),
        ];
        let mut out = format!(
            "control-plane scale benchmark: {} nodes, {} proxies over {} connections, {} changes, burst of {}; binaries: {}\n\n",
            self.nodes, self.proxies, self.connections, self.changes, self.burst, self.binaries
        );
        if let Some(failed) = &self.failed_phase {
            let _ = writeln!(
                out,
                "THE RUN FAILED ({failed}); figures from that phase on are missing or partial.\n"
            );
        }
        out.push_str("| measure | figure | goal | met |\n|---|---|---|---|\n");
        for (measure, figure, goal, met) in rows {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let _ = writeln!(out, "| {measure} | {figure} | {goal} | {met} |");
        }
        if !self.metrics.is_empty() {
            out.push_str("\ncontrol plane /metrics at the end:\n");
            for line in &self.metrics {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
