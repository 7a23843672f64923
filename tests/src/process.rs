//! Running Meridian's real binaries as child processes: find them in the target dir, start
//! them with their output in a log file, stop them with SIGTERM (graceful) or SIGKILL
//! (crash), and always kill them on drop so no test leaves a process behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The path of a workspace binary built next to the running test or benchmark program,
/// so a release-built benchmark runs release-built binaries.
///
/// Panics with the build command when it is missing: `cargo test` builds test harnesses,
/// not the binaries themselves, so `scripts/test.sh` runs `cargo build --bins` first.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running program knows its path");
    // A test runs from target/<profile>/deps/<test>, a program such as
    // meridian-control-scale from target/<profile>/<program>: both → target/<profile>/<name>.
    let parent = exe.parent().expect("programs live in target/<profile>");
    let profile_dir = if parent.file_name().is_some_and(|dir| dir == "deps") {
        parent
            .parent()
            .expect("test binaries live in target/<profile>/deps")
    } else {
        parent
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` \
         (scripts/test.sh does this)",
        path.display()
    );
    path
}

/// A running child process, killed on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts workspace binary `name` with `args`; stdout and stderr go to `log`.
    pub fn spawn(name: &str, args: &[&str], log: &Path) -> std::io::Result<Self> {
        Self::spawn_with_env(name, args, &[], log)
    }

    /// Like [`ChildProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> std::io::Result<Self> {
        Self::spawn_command(name, Command::new(binary(name)), args, env, log)
    }

    /// Like [`ChildProcess::spawn_with_env`], inside network namespace `netns` (through
    /// `ip netns exec`, which execs the binary: the pid is the binary's, so stopping it
    /// works as for any other child). Needs root.
    pub fn spawn_in_netns(
        netns: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> std::io::Result<Self> {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(binary(name));
        Self::spawn_command(name, command, args, env, log)
    }

    fn spawn_command(
        name: &str,
        mut command: Command,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> std::io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()?;
        Ok(ChildProcess {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `deadline` for the process to exit.
    /// Returns `None` (and kills it) if it did not exit in time.
    pub fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            sent,
            "could not send SIGTERM to {} (pid {})",
            self.name,
            self.child.id()
        );
        self.wait_for_exit(deadline)
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `deadline` for the process to exit by itself.
    pub fn wait_for_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs workspace binary `name` to completion and returns its status, stdout and stderr.
pub fn run_to_completion(name: &str, args: &[&str]) -> (ExitStatus, String, String) {
    let output = Command::new(binary(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
