//! TLS for every Meridian connection: the control plane's gRPC server, the proxy's listener,
//! and the clients of both. Built on rustls with one crypto provider, `ring`, for the whole
//! dependency tree (rustls's default, aws-lc-rs, is switched off in the workspace manifest,
//! so there is one provider to audit and no C build).
//!
//! | file          | concern                                                                |
//! | ------------- | ---------------------------------------------------------------------- |
//! | `pem.rs`      | certificate chains, private keys and CA bundles read from PEM files     |
//! | `reload.rs`   | a configuration rebuilt when its files change; a bad change keeps the old |
//! | `server.rs`   | [`ServerTls`]: the server configuration (ALPN `h2`, optional mTLS)      |
//! | `incoming.rs` | [`TlsIncoming`]: a listener's connections after concurrent handshakes   |
//! | `client.rs`   | [`ClientTls`]: the client configuration (CA, optional client cert)      |
//! | `connect.rs`  | [`connect`] / [`connect_lazy`]: a tonic `Channel` for `http(s)://` URLs |
//! | `identity.rs` | [`PeerIdentity`]: who the client certificate says the peer is          |
//! | `testing.rs`  | a throw-away CA for tests (cargo feature `test-certs`)                 |
//!
//! Certificates rotate without a restart: both configurations poll their files once a
//! second and the *next* handshake uses the new ones; connections already open keep theirs.
//! Files that fail to load are logged (naming the file and the problem) and the previous
//! configuration stays in use, so a half-written rotation never takes a server down.

mod client;
mod connect;
mod error;
mod identity;
mod incoming;
mod pem;
mod reload;
mod server;
#[cfg(any(test, feature = "test-certs"))]
pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use client::{ClientTls, ClientTlsFiles};
pub use connect::{ConnectError, connect, connect_lazy};
pub use error::TlsConfigError;
pub use identity::{IdentityError, PeerIdentity};
pub use incoming::{HandshakeLimits, TlsIncoming};
pub use pem::{PemError, load_ca, load_certs, load_key};
pub use reload::FileStamp;
pub use server::{ServerTls, ServerTlsFiles};

/// The ALPN protocol both sides offer: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider, passed explicitly so no process-wide default has to be installed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
