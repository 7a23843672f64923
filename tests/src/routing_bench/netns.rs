//! The network of the geographic scenario: one Linux network namespace per region, each
//! joined by a veth pair to a private bridge in the root namespace (addresses of one
//! 10.213.N.0/24, never routed anywhere), and `tc netem` delaying what a region sends to
//! another region (not what it sends to the bridge, where the control plane and the
//! benchmark's clients are). Everything is created with `ip` and `tc` (root needed) and
//! named after this process (`mrdb-<pid>-<region>`, bridge `mrdb<pid>`), so concurrent
//! runs do not meet; [`RegionNetworks`] deletes it all when dropped, and
//! [`remove_stale`] deletes what runs killed before they could (their pid is gone).
//!
//! The delay: an HTB root on each region's veth with two classes, the default one plain
//! and one whose leaf is netem; a u32 filter per other region's address sends its packets
//! to the netem class. So a call that crosses regions pays the delay once each way. A
//! kernel without `sch_netem` (some VM kernels carry no modules) gets no delay at all,
//! and [`RegionNetworks::delay`] says why, rather than anything emulating it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

/// The first two octets of the private subnets used.
const SUBNET_PREFIX: [u8; 2] = [10, 213];
/// Where namespace and interface names start.
const NAME_PREFIX: &str = "mrdb";

/// One region's namespace.
#[derive(Debug, Clone)]
pub struct RegionNetwork {
    pub region: String,
    /// The namespace's name, for `ip netns exec`.
    pub netns: String,
    /// Its address on the bridge: nodes and proxies of the region listen on it.
    pub addr: Ipv4Addr,
    /// The veth end inside the namespace.
    device: String,
}

/// The namespaces of a run, deleted on drop.
#[derive(Debug)]
pub struct RegionNetworks {
    pub regions: Vec<RegionNetwork>,
    /// The root namespace's address on the bridge (the control plane listens on it).
    pub bridge_addr: Ipv4Addr,
    /// The subnet, e.g. `10.213.7.0/24`, for the federation's allowed networks.
    pub subnet: String,
    bridge: String,
    /// The one-way delay between regions, or why there is none.
    delay: Result<Duration, String>,
}

/// Why the network could not be built.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("not run: needs root and ip netns ({0})")]
    Unsupported(String),
    #[error("setting up the region namespaces: `{command}` failed: {message}")]
    Command { command: String, message: String },
}

impl RegionNetworks {
    /// Whether this process may build namespaces: root, and `ip netns` working.
    pub fn check_supported() -> Result<(), NetworkError> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Err(NetworkError::Unsupported(format!(
                "running as uid {uid:?}, not root"
            )));
        }
        run(&["ip", "netns", "list"])
            .map(|_| ())
            .map_err(|e| NetworkError::Unsupported(e.to_string()))
    }

    /// Builds one namespace per region and the bridge, with `delay` (± `jitter`) one way
    /// between regions when the kernel has netem.
    pub fn create(
        regions: &[&str],
        delay: Duration,
        jitter: Duration,
    ) -> Result<Self, NetworkError> {
        Self::check_supported()?;
        remove_stale();
        let pid = std::process::id();
        let third = free_subnet(pid);
        let [a, b] = SUBNET_PREFIX;
        let bridge_addr = Ipv4Addr::new(a, b, third, 1);
        let bridge = format!("{NAME_PREFIX}{pid}");
        let mut networks = RegionNetworks {
            regions: Vec::new(),
            bridge_addr,
            subnet: format!("{a}.{b}.{third}.0/24"),
            bridge: bridge.clone(),
            delay: Err("not set up".into()),
        };
        // From here on, dropping `networks` deletes whatever was made.
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{bridge_addr}/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for (i, region) in regions.iter().enumerate() {
            let netns = format!("{NAME_PREFIX}-{pid}-{region}");
            let outside = format!("{NAME_PREFIX}{pid}v{i}");
            let inside = format!("{NAME_PREFIX}{pid}p{i}");
            let addr = Ipv4Addr::new(a, b, third, 10 + i as u8);
            run(&["ip", "netns", "add", &netns])?;
            networks.regions.push(RegionNetwork {
                region: (*region).to_owned(),
                netns: netns.clone(),
                addr,
                device: inside.clone(),
            });
            run(&["ip", "-n", &netns, "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ])?;
            run(&["ip", "link", "set", &inside, "netns", &netns])?;
            run(&["ip", "link", "set", &outside, "master", &bridge])?;
            run(&["ip", "link", "set", &outside, "up"])?;
            run(&[
                "ip",
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inside,
            ])?;
            run(&["ip", "-n", &netns, "link", "set", &inside, "up"])?;
        }
        networks.delay = networks.add_delays(delay, jitter);
        Ok(networks)
    }

    /// The one-way delay between regions, or why there is none (netem missing).
    pub fn delay(&self) -> Result<Duration, &str> {
        self.delay.as_ref().copied().map_err(String::as_str)
    }

    /// The namespace of `region`.
    pub fn region(&self, region: &str) -> &RegionNetwork {
        self.regions
            .iter()
            .find(|r| r.region == region)
            .expect("a region the scenario created")
    }

    fn add_delays(&self, delay: Duration, jitter: Duration) -> Result<Duration, String> {
        let first = self.regions.first().ok_or("no regions")?;
        // Probe on the loopback of a namespace: nothing else is disturbed when it works.
        run(&[
            "tc",
            "-n",
            &first.netns,
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
        ])
        .map_err(|e| {
            let said = match e {
                NetworkError::Command { message, .. } => message,
                other => other.to_string(),
            };
            format!(
                "netem unavailable: `tc qdisc add … netem` fails on this kernel ({}): {said}",
                kernel_release()
            )
        })?;
        run(&[
            "tc",
            "-n",
            &first.netns,
            "qdisc",
            "del",
            "dev",
            "lo",
            "root",
        ])
        .map_err(|e| e.to_string())?;
        let (delay_arg, jitter_arg) = (
            format!("{}us", delay.as_micros()),
            format!("{}us", jitter.as_micros()),
        );
        for region in &self.regions {
            let (ns, dev) = (region.netns.as_str(), region.device.as_str());
            let tc = |args: &[&str]| {
                let mut all = vec!["tc", "-n", ns];
                all.extend_from_slice(args);
                run(&all).map_err(|e| e.to_string())
            };
            tc(&[
                "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
            ])?;
            for class in ["1:10", "1:20"] {
                tc(&[
                    "class", "add", "dev", dev, "parent", "1:", "classid", class, "htb", "rate",
                    "10gbit",
                ])?;
            }
            tc(&[
                "qdisc",
                "add",
                "dev",
                dev,
                "parent",
                "1:20",
                "handle",
                "20:",
                "netem",
                "delay",
                &delay_arg,
                &jitter_arg,
            ])?;
            for other in self.regions.iter().filter(|o| o.region != region.region) {
                tc(&[
                    "filter",
                    "add",
                    "dev",
                    dev,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    "dst",
                    &format!("{}/32", other.addr),
                    "flowid",
                    "1:20",
                ])?;
            }
        }
        Ok(delay)
    }
}

impl Drop for RegionNetworks {
    /// Deleting a namespace deletes its veth end, and with it the pair; the bridge goes
    /// last. Processes still inside keep their namespace alive but unnamed, so the
    /// scenario stops them first.
    fn drop(&mut self) {
        for region in &self.regions {
            if let Err(e) = run(&["ip", "netns", "del", &region.netns]) {
                eprintln!(
                    "routing-bench: could not delete namespace {}: {e}",
                    region.netns
                );
            }
        }
        if let Err(e) = run(&["ip", "link", "del", &self.bridge]) {
            eprintln!(
                "routing-bench: could not delete bridge {}: {e}",
                self.bridge
            );
        }
    }
}

/// Deletes the namespaces and bridges of earlier runs whose process is gone.
pub fn remove_stale() {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            let pid = name
                .strip_prefix(NAME_PREFIX)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|rest| rest.split('-').next());
            if pid.is_some_and(dead) {
                eprintln!("routing-bench: deleting namespace {name} of a run that is gone");
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    if let Ok(list) = run(&["ip", "-o", "link", "show", "type", "bridge"]) {
        for name in list
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
        {
            let pid = name.strip_prefix(NAME_PREFIX);
            if pid.is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()) && dead(p)) {
                eprintln!("routing-bench: deleting bridge {name} of a run that is gone");
                let _ = run(&["ip", "link", "del", name]);
            }
        }
    }
}

/// A third octet whose /24 no interface of the machine uses, starting from one derived
/// from `pid`.
fn free_subnet(pid: u32) -> u8 {
    let used = run(&["ip", "-4", "-o", "addr", "show"]).unwrap_or_default();
    let [a, b] = SUBNET_PREFIX;
    (0..200)
        .map(|k| 10 + ((pid + k) % 200) as u8)
        .find(|third| !used.contains(&format!(" {a}.{b}.{third}.")))
        .unwrap_or(10 + (pid % 200) as u8)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs a command to completion: its stdout, or what it said on failure.
fn run(args: &[&str]) -> Result<String, NetworkError> {
    let command = args.join(" ");
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetworkError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetworkError::Command {
            command,
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}
