//! Real etcd for tests: a single member or a 3-member cluster on free loopback ports, each
//! with its own temp data dir, started with short heartbeat and election timeouts so it is
//! up in well under a second. Members can be killed and restarted on the same ports and
//! data (restart and failover tests). Everything is killed and removed on drop.
//!
//! [`EtcdCluster::single_secured`] starts a member as a production etcd runs: TLS only,
//! client certificates required (`--client-cert-auth`), and authentication enabled with a
//! `root` user; the PKI is a throw-away [`TestCa`] whose files the test hands to the code
//! under test, and which signs more client certificates on request
//! ([`EtcdCluster::client_cert`]).
//!
//! etcd 3.4 (Debian's `etcd-server`) may drop idle watch streams when lease keep-alives
//! are sent more often than every ~5 s: code under test should keep keep-alive intervals
//! at or above that.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use meridian_shared::tls::testing::{CertFiles, TestCa, TestCert};
use tempfile::TempDir;

use crate::ports::free_port;

/// How long a member may take to answer after it was started.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// Attempts with fresh ports when a member cannot bind the ones it was given.
const PORT_ATTEMPTS: usize = 3;

pub const INSTALL_HINT: &str = "install it with `apt-get install etcd-server etcd-client` \
     (Debian/Ubuntu), or run `scripts/test.sh`, which installs what the tests need";

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("etcd binary {binary:?} not found on PATH: {INSTALL_HINT}")]
    EtcdMissing { binary: PathBuf },
    #[error("cannot start etcd member {member}: {source}")]
    Spawn {
        member: String,
        source: std::io::Error,
    },
    #[error(
        "etcd member {member} did not answer within {deadline:?}; its log ({log}) ends with:\n{tail}"
    )]
    NotReady {
        member: String,
        deadline: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("temp dir for etcd: {0}")]
    TempDir(std::io::Error),
    #[error("cannot read the test etcd's TLS files: {0}")]
    TlsFiles(std::io::Error),
    #[error("enabling authentication on the test etcd failed at {step}: {source}")]
    Auth {
        step: &'static str,
        source: etcd_client::Error,
    },
}

/// The PKI of a secured etcd: one CA signed its server certificate and the client
/// certificate it accepts.
#[derive(Debug, Clone)]
pub struct EtcdTlsFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// A client certificate etcd accepts, and its key.
    pub client: CertFiles,
    /// etcd's server certificate (for 127.0.0.1) and key.
    pub server: CertFiles,
}

/// The CA of a secured etcd, kept to sign more client certificates.
struct EtcdCa(TestCa);

impl std::fmt::Debug for EtcdCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdCa")
    }
}

impl EtcdTlsFiles {
    /// A fresh CA, a server certificate for loopback and a client certificate, in `dir`.
    fn create(dir: &Path) -> (Self, EtcdCa) {
        let ca = TestCa::new("meridian test etcd CA");
        let files = EtcdTlsFiles {
            ca: ca.write(dir, "etcd-ca"),
            client: ca
                .client_cert("meridian-control", None)
                .write(dir, "etcd-client"),
            server: ca.localhost_server().write(dir, "etcd-server"),
        };
        (files, EtcdCa(ca))
    }

    /// etcd-client's TLS options: trust the CA, present the client certificate.
    fn client_options(&self) -> Result<TlsOptions, HarnessError> {
        let read = |path: &Path| std::fs::read(path).map_err(HarnessError::TlsFiles);
        Ok(TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca)?))
            .identity(Identity::from_pem(
                read(&self.client.cert)?,
                read(&self.client.key)?,
            )))
    }
}

/// One etcd process and where it lives.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Whether clients connect with TLS.
    tls: bool,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running etcd cluster of one or more members.
#[derive(Debug)]
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    token: String,
    /// TLS files, when the members serve TLS.
    tls: Option<EtcdTlsFiles>,
    /// The CA that signed them.
    ca: Option<EtcdCa>,
    /// The `root` user's password, once authentication is enabled.
    root_password: Option<String>,
    // Dropped last: the members must be dead before their data dirs go.
    dir: TempDir,
}

impl EtcdCluster {
    /// One member, the usual case.
    pub async fn single() -> Result<Self, HarnessError> {
        Self::start(Path::new("etcd"), 1).await
    }

    /// Three members, for quorum and member-loss tests.
    pub async fn three() -> Result<Self, HarnessError> {
        Self::start(Path::new("etcd"), 3).await
    }

    /// One member that serves TLS only (a server certificate for 127.0.0.1), requires
    /// client certificates from the same CA, and has authentication enabled: user `root`
    /// with `root_password` and the root role. See [`EtcdCluster::tls_files`].
    pub async fn single_secured(root_password: &str) -> Result<Self, HarnessError> {
        let mut cluster = Self::start_with(Path::new("etcd"), 1, true).await?;
        cluster.enable_auth(root_password).await?;
        Ok(cluster)
    }

    /// `size` members using the etcd at `binary` (a name looked up on PATH, or a path).
    pub async fn start(binary: &Path, size: usize) -> Result<Self, HarnessError> {
        Self::start_with(binary, size, false).await
    }

    async fn start_with(binary: &Path, size: usize, tls: bool) -> Result<Self, HarnessError> {
        let binary = which(binary).ok_or_else(|| HarnessError::EtcdMissing {
            binary: binary.to_owned(),
        })?;
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_on_fresh_ports(&binary, size, tls).await {
                Ok(cluster) => return Ok(cluster),
                Err(e @ HarnessError::NotReady { .. }) => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_error.expect("at least one attempt ran"))
    }

    async fn start_on_fresh_ports(
        binary: &Path,
        size: usize,
        tls: bool,
    ) -> Result<Self, HarnessError> {
        let dir = tempfile::Builder::new()
            .prefix("meridian-etcd-")
            .tempdir()
            .map_err(HarnessError::TempDir)?;
        let (tls_files, ca) = tls.then(|| EtcdTlsFiles::create(dir.path())).unzip();
        let members = (0..size)
            .map(|i| {
                let name = format!("m{i}");
                Member {
                    data_dir: dir.path().join(format!("{name}.etcd")),
                    log: dir.path().join(format!("{name}.log")),
                    client_port: free_port(),
                    peer_port: free_port(),
                    child: None,
                    tls,
                    name,
                }
            })
            .collect();
        let token = format!("meridian-test-{}-{}", std::process::id(), free_port());
        let mut cluster = EtcdCluster {
            binary: binary.to_owned(),
            members,
            token,
            tls: tls_files,
            ca,
            root_password: None,
            dir,
        };
        for i in 0..size {
            cluster.spawn(i, "new")?;
        }
        for i in 0..size {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Client URLs of all members, e.g. `["http://127.0.0.1:41234"]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// The process id of member `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members[index].child.as_ref().map(Child::id)
    }

    /// The client URL of member `index`.
    pub fn endpoint(&self, index: usize) -> String {
        self.members[index].client_url()
    }

    /// A client connected to every member (with TLS and as `root` when secured).
    pub async fn client(&self) -> etcd_client::Client {
        let options = self.connect_options().expect("the test etcd's TLS files");
        etcd_client::Client::connect(self.endpoints(), Some(options))
            .await
            .expect("connecting to the test etcd")
    }

    /// The TLS files of a cluster from [`EtcdCluster::single_secured`].
    pub fn tls_files(&self) -> Option<&EtcdTlsFiles> {
        self.tls.as_ref()
    }

    /// A client certificate with `common_name`, signed by the CA of a cluster from
    /// [`EtcdCluster::single_secured`]. With `--client-cert-auth`, etcd takes a request
    /// that carries no user's token to be from the user named by the common name.
    pub fn client_cert(&self, common_name: &str) -> Option<TestCert> {
        let EtcdCa(ca) = self.ca.as_ref()?;
        Some(ca.client_cert(common_name, None))
    }

    /// How a client reaches the members: TLS with the client certificate when they
    /// serve it, as `root` once authentication is enabled.
    fn connect_options(&self) -> Result<ConnectOptions, HarnessError> {
        let mut options = ConnectOptions::new();
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.client_options()?);
        }
        if let Some(password) = &self.root_password {
            options = options.with_user("root", password.clone());
        }
        Ok(options)
    }

    /// Adds user `root` with the root role and turns authentication on.
    async fn enable_auth(&mut self, root_password: &str) -> Result<(), HarnessError> {
        let step = |step| move |source| HarnessError::Auth { step, source };
        let options = self.connect_options()?;
        let client = etcd_client::Client::connect(self.endpoints(), Some(options))
            .await
            .map_err(step("connect"))?;
        let mut auth = client.auth_client();
        auth.user_add("root", root_password, None)
            .await
            .map_err(step("user add root"))?;
        auth.user_grant_role("root", "root")
            .await
            .map_err(step("user grant-role root root"))?;
        auth.auth_enable().await.map_err(step("auth enable"))?;
        self.root_password = Some(root_password.to_owned());
        Ok(())
    }

    /// Kills member `index` with SIGKILL (no graceful shutdown: what a crash looks like).
    pub fn kill_member(&mut self, index: usize) {
        self.members[index].kill();
    }

    /// Starts member `index` again on the same ports and data dir, and waits until it
    /// answers.
    pub async fn restart_member(&mut self, index: usize) -> Result<(), HarnessError> {
        self.members[index].kill();
        self.spawn(index, "existing")?;
        self.wait_ready(index).await
    }

    /// The member's log file, for diagnosing a failing test.
    pub fn log_path(&self, index: usize) -> &Path {
        &self.members[index].log
    }

    /// Where the cluster's data lives.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, index: usize, state: &str) -> Result<(), HarnessError> {
        let initial_cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let member = &mut self.members[index];
        let spawn_error = |source| HarnessError::Spawn {
            member: member.name.clone(),
            source,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(spawn_error)?;
        let log_err = log.try_clone().map_err(spawn_error)?;
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &member.client_url()])
            .args(["--advertise-client-urls", &member.client_url()])
            .args(["--listen-peer-urls", &member.peer_url()])
            .args(["--initial-advertise-peer-urls", &member.peer_url()])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                member: member.name.clone(),
                source,
            })?;
        member.child = Some(child);
        Ok(())
    }

    /// Polls the member until it answers a status request, its process exits, or the
    /// deadline passes.
    async fn wait_ready(&mut self, index: usize) -> Result<(), HarnessError> {
        let started = Instant::now();
        let url = self.members[index].client_url();
        let options = self.connect_options()?;
        loop {
            if let Ok(mut client) =
                etcd_client::Client::connect([&url], Some(options.clone())).await
                && client.status().await.is_ok()
            {
                return Ok(());
            }
            let member = &mut self.members[index];
            let exited = member
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || started.elapsed() > START_DEADLINE {
                member.kill();
                return Err(HarnessError::NotReady {
                    member: member.name.clone(),
                    deadline: START_DEADLINE,
                    log: member.log.clone(),
                    tail: log_tail(&member.log),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
    }
}

/// `binary` itself when it is a path, else the first match on PATH.
fn which(binary: &Path) -> Option<PathBuf> {
    if binary.components().count() > 1 {
        return binary.is_file().then(|| binary.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
