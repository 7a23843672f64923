//! The smallest WebSocket client the DevTools protocol needs (RFC 6455 over plain TCP on
//! loopback): the opening handshake, masked text frames out, text frames in (fragments
//! joined, pings answered). No extensions, no TLS: Chromium's debugging endpoint needs
//! neither, and the tree needs no WebSocket crate for one test.

use std::io;

use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A message larger than this is refused (a full-page screenshot is a few MiB of base64).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub struct WebSocket {
    stream: BufReader<TcpStream>,
}

impl WebSocket {
    /// Opens `ws://{host_port}{path}`.
    pub async fn connect(host_port: &str, path: &str) -> io::Result<Self> {
        let mut stream = BufReader::new(TcpStream::connect(host_port).await?);
        let key = "bWVyaWRpYW4tZGV2dG9vbHM="; // any 16 bytes, base64: the server only echoes a hash of it
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.get_mut().write_all(request.as_bytes()).await?;
        let mut status = String::new();
        stream.read_line(&mut status).await?;
        if !status.starts_with("HTTP/1.1 101") {
            return Err(io::Error::other(format!(
                "the WebSocket upgrade was refused: {}",
                status.trim()
            )));
        }
        loop {
            let mut header = String::new();
            if stream.read_line(&mut header).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if header == "\r\n" {
                return Ok(WebSocket { stream });
            }
        }
    }

    /// Sends `text` as one masked text frame.
    pub async fn send(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(0x1, text.as_bytes()).await
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::rng().random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.get_mut().write_all(&frame).await
    }

    /// The next text message.
    pub async fn receive(&mut self) -> io::Result<String> {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream.read_exact(&mut head).await?;
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let masked = head[1] & 0x80 != 0;
            let length = match head[1] & 0x7f {
                126 => u64::from(self.stream.read_u16().await?),
                127 => self.stream.read_u64().await?,
                n => u64::from(n),
            };
            let length = usize::try_from(length)
                .ok()
                .filter(|&n| n <= MAX_MESSAGE_BYTES)
                .ok_or_else(|| io::Error::other("a WebSocket frame over the size limit"))?;
            let mut mask = [0u8; 4];
            if masked {
                self.stream.read_exact(&mut mask).await?;
            }
            let mut payload = vec![0u8; length];
            self.stream.read_exact(&mut payload).await?;
            if masked {
                payload
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, b)| *b ^= mask[i % 4]);
            }
            match opcode {
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if message.len() > MAX_MESSAGE_BYTES {
                        return Err(io::Error::other("a WebSocket message over the size limit"));
                    }
                    if fin {
                        return String::from_utf8(message).map_err(|_| {
                            io::Error::other("a WebSocket message that is not UTF-8")
                        });
                    }
                }
                0x8 => return Err(io::Error::other("the WebSocket was closed")),
                0x9 => self.send_frame(0xA, &payload).await?,
                _ => {}
            }
        }
    }
}
