//! Free loopback ports for servers that tests start as separate processes.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// Ports this test process has already handed out: the kernel may give the same ephemeral
/// port to two `bind(0)` calls in a row once the first listener is dropped, and two servers
/// of one test on the same port fail to start (CI saw a proxy's admin port equal its gRPC port).
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port that was free on 127.0.0.1 a moment ago and that no earlier call in this process
/// returned. Another process may take it before ours binds; callers that start a server
/// retry with fresh ports when binding fails.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("binding 127.0.0.1:0 to find a free port");
        if handed_out.insert(port) {
            return port;
        }
    }
}
