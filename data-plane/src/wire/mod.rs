//! The HTTP/2 connections the proxy drives itself. hyper's and h2's general HTTP/2 put
//! tasks, channels, boxed futures and their own buffering between each call and its
//! streams; the proxy relays frames, so it speaks HTTP/2 itself, on both sides, over its
//! own framing ([`frame`], [`reader`]) and HPACK ([`hpack`]), which do only what
//! forwarding needs.
//!
//! [`server`] serves a client connection, every call in the connection's own task, its
//! request body a [`RecvBody`]; [`client`] is a connection to a node, where the call's
//! own future sends the request and waits for the answer. Both keep their streams,
//! windows and outgoing frames in one shared state (`conn`), hold streams and bodies the
//! same way (`stream`), write with the same `writer`, fail a stream with a
//! [`StreamError`] and PING their peer ([`keepalive`]).

pub mod client;
mod conn;
mod error;
mod frame;
mod headers;
mod hpack;
pub mod keepalive;
mod reader;
pub mod server;
mod stream;
mod writer;

pub use client::{ClientConnection, ResponseBody, SendError};
pub use error::StreamError;
pub use server::RecvBody;
