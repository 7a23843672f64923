//! Free loopback ports for servers that tests start as separate processes.

use std::net::{SocketAddr, TcpListener};

/// A port that was free on 127.0.0.1 a moment ago. Another process may take it before
/// ours binds; callers that start a server retry with fresh ports when binding fails.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}
