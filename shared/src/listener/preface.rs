//! The HTTP/2 connection preface, read before the connection is handed to hyper, so that
//! a client that connects and sends nothing (or too little, slowly) is closed after the
//! handshake timeout instead of holding a socket and a place under the connection cap.
//! hyper has no such deadline of its own. The preface read is replayed to hyper by
//! [`PrefacedIo`], which costs one comparison per read afterwards.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads and checks the preface; the returned stream gives it to its reader again.
pub async fn read_preface<S: AsyncRead + Unpin>(mut io: S) -> io::Result<PrefacedIo<S>> {
    let mut preface = [0u8; PREFACE.len()];
    io.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client did not open with the HTTP/2 preface (not a gRPC client? HTTP/1?)",
        ));
    }
    Ok(PrefacedIo { io, replayed: 0 })
}

/// A stream whose preface was read and checked, yielding it again to its first reads.
#[derive(Debug)]
pub struct PrefacedIo<S> {
    io: S,
    /// Bytes of the preface already given back.
    replayed: usize,
}

impl<S> PrefacedIo<S> {
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The stream, for a reader that knows the preface was read (and is not to be
    /// given it again).
    pub fn into_inner(self) -> S {
        self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PrefacedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.replayed < PREFACE.len() {
            let rest = &PREFACE[self.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefacedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for PrefacedIo<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn the_preface_is_checked_then_read_again_with_what_follows() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        drop(client);
        let mut io = read_preface(server).await.unwrap();
        let mut seen = Vec::new();
        io.read_to_end(&mut seen).await.unwrap();
        assert_eq!(&seen[..24], PREFACE);
        assert_eq!(&seen[24..], b"frames");
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        let (mut client, server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let err = read_preface(server).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
