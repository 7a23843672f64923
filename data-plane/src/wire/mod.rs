//! The HTTP/2 streams the proxy drives itself. hyper's HTTP/2 layer put tasks, a channel
//! and boxed futures between each call and its streams; the proxy relays frames, so it
//! speaks HTTP/2 itself: to clients over the `h2` crate directly, to nodes over its own
//! framing and HPACK, which do only what forwarding needs.
//!
//! [`RecvBody`] reads a client stream's DATA frames and trailers as an
//! [`http_body::Body`] (giving back flow-control window as the reader takes them);
//! [`send_body`] writes a body onto a client stream as the peer's window allows;
//! [`server`] serves a client connection with them, every stream in the connection's own
//! task; [`keepalive`] pings the client. [`client`] is a connection to a node, where the
//! call's own future sends the request and waits for the answer, over [`frame`] and
//! [`hpack`].

pub mod client;
mod frame;
mod hpack;
pub mod keepalive;
mod recv;
mod send;
pub mod server;

pub use client::{ClientConnection, ResponseBody, SendError, StreamError};
pub use recv::RecvBody;
pub use send::{SendBody, SendBodyError, send_body};
