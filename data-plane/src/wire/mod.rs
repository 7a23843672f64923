//! The HTTP/2 streams the proxy drives itself over the `h2` crate, on both sides. hyper's
//! HTTP/2 layer put tasks, a channel and boxed futures between each call and its streams;
//! the proxy relays frames, so it speaks to `h2` directly. [`RecvBody`] reads a stream's
//! DATA frames and trailers as an [`http_body::Body`] (giving back flow-control window as
//! the reader takes them); [`send_body`] writes a body onto a stream as the peer's window
//! allows; [`server`] serves a client connection with them, every stream in the
//! connection's own task; [`client`] is a connection to a node, where the call's own
//! future sends the request and waits for the answer; [`keepalive`] pings the peer.

pub mod client;
pub mod keepalive;
mod recv;
mod send;
pub mod server;

pub use client::{ClientConnection, SendError};
pub use recv::RecvBody;
pub use send::{SendBody, SendBodyError, send_body};
