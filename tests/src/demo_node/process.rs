//! Running the real `meridian-demo-node` binary from tests: start it with a log file,
//! wait for its `listening on HOST:PORT` line, and hand back the address to call.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::Channel;

use meridian_shared::credentials::TOKEN_ENV;

use crate::control::NODE_TOKEN;
use crate::process::ChildProcess;

/// The binary's name in the target directory.
pub const BINARY: &str = "meridian-demo-node";
/// The stdout line announcing the bound address.
pub const LISTENING_PREFIX: &str = "listening on ";

const START_DEADLINE: Duration = Duration::from_secs(20);

/// A running demo node, killed on drop.
pub struct DemoNodeProcess {
    pub process: ChildProcess,
    pub addr: SocketAddr,
}

impl DemoNodeProcess {
    /// Starts `meridian-demo-node --id <id> <args>` with its output in `log` and waits
    /// until it listens. Panics with the node's output if it does not within 20 s.
    pub async fn start(id: &str, args: &[&str], log: &Path) -> Self {
        let mut all_args = vec!["--id", id];
        all_args.extend_from_slice(args);
        let process =
            ChildProcess::spawn_with_env(BINARY, &all_args, &[(TOKEN_ENV, NODE_TOKEN)], log)
                .expect("starting meridian-demo-node");
        Self::wait_listening(id, process).await
    }

    /// Like [`DemoNodeProcess::start`], inside network namespace `netns` (see
    /// [`ChildProcess::spawn_in_netns`]); `args` should then name a `--listen` address
    /// of the namespace.
    pub async fn start_in_netns(netns: &str, id: &str, args: &[&str], log: &Path) -> Self {
        let mut all_args = vec!["--id", id];
        all_args.extend_from_slice(args);
        let process =
            ChildProcess::spawn_in_netns(netns, BINARY, &all_args, &[(TOKEN_ENV, NODE_TOKEN)], log)
                .expect("starting meridian-demo-node in a network namespace");
        Self::wait_listening(id, process).await
    }

    async fn wait_listening(id: &str, process: ChildProcess) -> Self {
        let started = Instant::now();
        loop {
            if let Some(addr) = listening_addr(&process.output()) {
                return DemoNodeProcess { process, addr };
            }
            assert!(
                !has_exited(process.pid()),
                "{BINARY} {id} exited before listening; its output:\n{}",
                process.output()
            );
            assert!(
                started.elapsed() < START_DEADLINE,
                "{BINARY} {id} did not print {LISTENING_PREFIX:?} within {START_DEADLINE:?}; its output:\n{}",
                process.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel to the node.
    pub async fn channel(&self) -> Channel {
        crate::control::channel(&self.url()).await
    }
}

/// Whether process `pid`, a child not yet reaped, has exited: Linux shows it as a zombie
/// (state `Z`) until the parent waits for it.
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

/// The address in the first `listening on HOST:PORT` line of `output`.
pub fn listening_addr(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(LISTENING_PREFIX))
        .and_then(|addr| addr.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn finds_the_address_among_log_lines() {
        let output = "2026 INFO starting\nlistening on 127.0.0.1:4242\nmore";
        assert_eq!(
            listening_addr(output),
            Some("127.0.0.1:4242".parse().unwrap())
        );
        assert_eq!(listening_addr("listening on 127.0.0.1:"), None);
    }
}
