//! The client connection's server side against a real HTTP/2 client (the `h2` crate's)
//! on an in-memory pipe, and against raw frames for what a well-behaved client never
//! sends: calls and their answers pass whole, flow control, resets, graceful shutdown,
//! keepalive, the stream and header limits, malformed requests and floods.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use super::*;
use crate::wire::reader::FrameReader;

/// The server's end of a pipe once the client's preface is read (as the listener does).
async fn after_preface(mut io: tokio::io::DuplexStream) -> tokio::io::DuplexStream {
    let mut preface = [0u8; 24];
    io.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface[..], frame::PREFACE);
    io
}

fn server(keepalive: Option<Duration>) -> Http2Server {
    Http2Server::new(100, 16 * 1024, keepalive, Duration::from_secs(1))
}

/// Serves `handler` on one end of an in-memory pipe; the client's end, its handshake
/// done and its connection driven in a task, and the served connection's outcome.
async fn serve<H>(
    server: Http2Server,
    handler: H,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), ConnectionError>>,
)
where
    H: Handler + Unpin + Send + 'static,
    H::Call: Send,
    H::Body: Send,
    <H::Body as Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let served =
        tokio::spawn(async move { server.serve(after_preface(server_io).await, handler).await });
    let (client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, served)
}

fn post(path: &str) -> Request<()> {
    Request::post(format!("http://proxy{path}"))
        .body(())
        .unwrap()
}

/// Echoes the request body and ends with a `grpc-status` trailer.
async fn echo(
    request: Request<RecvBody>,
) -> Response<impl Body<Data = Bytes, Error = std::convert::Infallible>> {
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers))));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut read = Vec::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        let _ = body.flow_control().release_capacity(data.len());
        read.extend_from_slice(&data);
    }
    read
}

#[tokio::test]
async fn a_call_gets_its_response_body_and_trailers() {
    let (client, _served) = serve(server(None), echo).await;
    let mut client = client.ready().await.unwrap();
    // Larger than one frame and than h2's default window, so flow control is used.
    let payload = vec![7u8; 100_000];
    let (response, mut request_body) = client
        .send_request(post("/demo.v1.Echo/Say"), false)
        .unwrap();
    request_body
        .send_data(Bytes::from(payload.clone()), true)
        .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert!(
        response.headers().contains_key("date"),
        "hyper sent a date header; still sent"
    );
    let mut body = response.into_body();
    assert_eq!(read_body(&mut body).await, payload);
    let trailers = body.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn many_calls_run_at_once_on_one_connection() {
    let (client, _served) = serve(server(None), echo).await;
    let calls = (0..50u8).map(|n| {
        let client = client.clone();
        async move {
            let mut client = client.ready().await.unwrap();
            let (response, mut body) = client
                .send_request(post("/demo.v1.Echo/Say"), false)
                .unwrap();
            body.send_data(Bytes::from(vec![n; 10]), true).unwrap();
            let mut response = response.await.unwrap().into_body();
            assert_eq!(read_body(&mut response).await, vec![n; 10]);
        }
    });
    futures::future::join_all(calls).await;
}

/// A call that never answers; counts its futures alive and tells when one started.
struct Hanging {
    alive: Arc<AtomicUsize>,
    started: Arc<Notify>,
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_reset_drops_the_call() {
    let alive = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let handler = {
        let (alive, started) = (Arc::clone(&alive), Arc::clone(&started));
        move |_request: Request<RecvBody>| {
            alive.fetch_add(1, Ordering::SeqCst);
            let hanging = Hanging {
                alive: Arc::clone(&alive),
                started: Arc::clone(&started),
            };
            async move {
                hanging.started.notify_one();
                std::future::pending::<()>().await;
                drop(hanging);
                Response::new(Full::new(Bytes::new()))
            }
        }
    };
    let (client, served) = serve(server(None), handler).await;
    let mut client = client.ready().await.unwrap();
    let (_response, mut request_body) = client.send_request(post("/slow"), false).unwrap();
    started.notified().await;
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    request_body.send_reset(Reason::CANCEL);
    tokio::time::timeout(Duration::from_secs(10), async {
        while alive.load(Ordering::SeqCst) != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the reset call's future is dropped");
    assert!(!served.is_finished(), "the connection goes on");
}

#[tokio::test]
async fn a_graceful_shutdown_lets_the_call_in_flight_finish_then_closes() {
    let (gate, opened) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let handler = {
        let (gate, opened) = (Arc::clone(&gate), Arc::clone(&opened));
        move |_request: Request<RecvBody>| {
            let (gate, opened) = (Arc::clone(&gate), Arc::clone(&opened));
            async move {
                opened.notify_one();
                gate.notified().await;
                Response::new(Full::new(Bytes::from_static(b"answer")))
            }
        }
    };
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        let mut connection = server(None).serve(after_preface(server_io).await, handler);
        tokio::select! {
            result = &mut connection => return result,
            _ = stopped => connection.graceful_shutdown(),
        }
        connection.await
    });
    let (client, connection) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(post("/slow"), true).unwrap();
    opened.notified().await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !served.is_finished(),
        "the call in flight holds the connection open"
    );
    gate.notify_one();
    let mut body = response
        .await
        .expect("the call in flight is answered")
        .into_body();
    assert_eq!(read_body(&mut body).await, b"answer");
    let closed = tokio::time::timeout(Duration::from_secs(10), served).await;
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "then the connection closes cleanly: {closed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_answers_no_ping_is_closed() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        server(Some(Duration::from_secs(5)))
            .serve(after_preface(server_io).await, echo)
            .await
    });
    // The client's connection is driven for the handshake only, so PINGs go unanswered.
    let mut client = Box::pin(h2::client::handshake(client_io));
    let (_client, _connection) = client.as_mut().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(30), served).await;
    assert!(closed.is_ok(), "closed after the interval and the timeout");
}

#[tokio::test(start_paused = true)]
async fn a_client_answering_pings_stays_connected() {
    let (_client, served) = serve(server(Some(Duration::from_secs(5))), echo).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!served.is_finished(), "twelve PINGs answered");
}

// ---- flow control, trailers and resets with a real client ----

#[tokio::test]
async fn uploads_and_downloads_larger_than_every_window_pass_whole() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        server(None)
            .serve(after_preface(server_io).await, echo)
            .await
    });
    // The client's windows are small, so the answer waits for its WINDOW_UPDATEs; the
    // upload is over the server's 1 MiB windows, so the server must give them back.
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(10_000)
        .initial_connection_window_size(20_000)
        .handshake::<_, Bytes>(client_io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let payload: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let (response, mut request_body) = client.send_request(post("/big"), false).unwrap();
    let upload = {
        let payload = Bytes::from(payload.clone());
        async move {
            for chunk in payload.chunks(64 * 1024) {
                request_body.reserve_capacity(chunk.len());
                std::future::poll_fn(|cx| request_body.poll_capacity(cx)).await;
                request_body
                    .send_data(Bytes::copy_from_slice(chunk), false)
                    .unwrap();
            }
            request_body.send_data(Bytes::new(), true).unwrap();
        }
    };
    let download = async {
        let mut body = response.await.unwrap().into_body();
        let read = read_body(&mut body).await;
        let trailers = body.trailers().await.unwrap().expect("trailers");
        (read, trailers)
    };
    let ((), (read, trailers)) = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join(upload, download),
    )
    .await
    .expect("both directions move as the windows open");
    assert_eq!(read.len(), payload.len());
    assert!(read == payload, "the echo is the upload");
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn a_requests_trailers_reach_the_handler() {
    let handler = |request: Request<RecvBody>| async move {
        let collected = request.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let seen = trailers
            .get("x-checksum")
            .cloned()
            .unwrap_or(HeaderValue::from_static("none"));
        Response::builder()
            .header("x-seen", seen)
            .body(Full::new(collected.to_bytes()))
            .unwrap()
    };
    let (client, _served) = serve(server(None), handler).await;
    let mut client = client.ready().await.unwrap();
    let (response, mut body) = client.send_request(post("/t"), false).unwrap();
    body.send_data(Bytes::from_static(b"data"), false).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    body.send_trailers(trailers).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["x-seen"], "abc");
    assert_eq!(read_body(&mut response.into_body()).await, b"data");
}

#[tokio::test]
async fn an_answer_body_failing_with_a_reset_resets_the_clients_stream_with_that_reason() {
    let handler = |_request: Request<RecvBody>| async move {
        let frames: Vec<Result<http_body::Frame<Bytes>, StreamError>> = vec![
            Ok(http_body::Frame::data(Bytes::from_static(b"partial"))),
            Err(StreamError::Reset(Reason::CANCEL)),
        ];
        Response::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    };
    let (client, served) = serve(server(None), handler).await;
    let mut client = client.ready().await.unwrap();
    let (response, _) = client.send_request(post("/r"), true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut error = None;
    while let Some(data) = body.data().await {
        if let Err(e) = data {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the stream is reset");
    assert_eq!(error.reason(), Some(Reason::CANCEL));
    assert!(!served.is_finished(), "the connection goes on");
}

// ---- what only a misbehaving client sends: raw frames ----

/// A client writing raw frames and reading the server's.
struct RawClient {
    io: tokio::io::DuplexStream,
    reader: FrameReader,
}

impl RawClient {
    /// Connects to a server serving `handler`, with the preface and empty SETTINGS sent.
    async fn connect<H>(
        server: Http2Server,
        handler: H,
    ) -> (
        RawClient,
        tokio::task::JoinHandle<Result<(), ConnectionError>>,
    )
    where
        H: Handler + Unpin + Send + 'static,
        H::Call: Send,
        H::Body: Send,
        <H::Body as Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let served =
            tokio::spawn(
                async move { server.serve(after_preface(server_io).await, handler).await },
            );
        let mut client = RawClient {
            io: client_io,
            reader: FrameReader::new(64 * 1024),
        };
        let mut opening = frame::PREFACE.to_vec();
        frame::write_settings(&mut opening, &[]);
        client.send(&opening).await;
        (client, served)
    }

    async fn send(&mut self, octets: &[u8]) {
        self.io.write_all(octets).await.unwrap();
    }

    /// The next frame the server sends, `None` when it closed the connection.
    async fn next_frame(&mut self) -> Option<ReadFrame> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(frame) = self.reader.next_frame().unwrap() {
                    return Some(frame);
                }
                let read = std::future::poll_fn(|cx| self.reader.poll_fill(&mut self.io, cx)).await;
                if !matches!(read, Ok(n) if n > 0) {
                    return None;
                }
            }
        })
        .await
        .expect("the server sends a frame or closes within 10 s")
    }

    /// Skips frames until one of `kind` (on `id`, for stream frames) comes: its head
    /// and payload.
    async fn frame_of(&mut self, kind: u8, id: u32) -> (Head, Bytes) {
        loop {
            match self.next_frame().await.expect("the connection stays open") {
                ReadFrame::Other(head, payload) if head.kind == kind && head.stream_id == id => {
                    return (head, payload.freeze());
                }
                ReadFrame::HeaderBlock {
                    id: got,
                    end,
                    block,
                } if kind == frame::HEADERS && got == id => {
                    let head = Head {
                        length: block.len(),
                        kind,
                        flags: if end { frame::END_STREAM } else { 0 },
                        stream_id: id,
                    };
                    return (head, block);
                }
                _ => {}
            }
        }
    }
}

/// A request's HEADERS frame (with CONTINUATION frames past 16 KiB) from `fields`.
/// Waits (at most `within`) for the served connection to end because the client broke
/// the protocol, and checks the reason it was given.
async fn assert_ended_with(
    served: tokio::task::JoinHandle<Result<(), ConnectionError>>,
    reason: Reason,
    within: Duration,
) {
    let ended = tokio::time::timeout(within, served).await;
    assert!(
        matches!(&ended, Ok(Ok(Err(ConnectionError::Protocol(r, _)))) if *r == reason),
        "expected the connection to end with {reason:?}: {ended:?}"
    );
}

fn request_frames(id: u32, end: bool, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_header_block(&mut out, id, end, frame::DEFAULT_MAX_FRAME, |out| {
        for (name, value) in fields {
            match hpack::Pseudo::from_bytes(name.as_bytes()) {
                Some(pseudo) => hpack::encode_pseudo(out, pseudo, value.as_bytes()),
                None => hpack::encode_header(out, &name.parse().unwrap(), &value.parse().unwrap()),
            }
        }
    });
    out
}

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "http"),
    (":authority", "proxy"),
    (":path", "/"),
];

/// A call's future, boxed so that a test's handler can be named.
type BoxedCall = std::pin::Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// Answers every call with an empty 200 once `gate` is opened.
fn gated(gate: Arc<Notify>) -> impl FnMut(Request<RecvBody>) -> BoxedCall + Unpin + Send + 'static {
    move |_request| {
        let gate = Arc::clone(&gate);
        Box::pin(async move {
            gate.notified().await;
            Response::new(Full::new(Bytes::new()))
        })
    }
}

#[tokio::test]
async fn streams_over_the_limit_are_refused_and_the_others_answered() {
    let gate = Arc::new(Notify::new());
    let limited = Http2Server::new(2, 16 * 1024, None, Duration::from_secs(1));
    let (mut client, _served) = RawClient::connect(limited, gated(Arc::clone(&gate))).await;
    for id in [1, 3, 5] {
        client.send(&request_frames(id, true, &GET)).await;
    }
    let (_, reason) = client.frame_of(frame::RST_STREAM, 5).await;
    assert_eq!(
        Reason::from(frame::word(&reason, 0)),
        Reason::REFUSED_STREAM
    );
    gate.notify_waiters();
    for id in [1, 3] {
        let (head, _) = client.frame_of(frame::HEADERS, id).await;
        assert!(head.has(frame::END_STREAM), "stream {id} answered");
    }
    // The two answered, a third stream is taken.
    client.send(&request_frames(7, true, &GET)).await;
    tokio::task::yield_now().await;
    gate.notify_waiters();
    let (head, _) = client.frame_of(frame::HEADERS, 7).await;
    assert!(head.has(frame::END_STREAM));
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_answered_431_and_refused() {
    let (mut client, served) = RawClient::connect(server(None), echo).await;
    let big = "x".repeat(20 * 1024);
    let fields = [&GET[..], &[("x-big", big.as_str())]].concat();
    client.send(&request_frames(1, true, &fields)).await;
    let (_, block) = client.frame_of(frame::HEADERS, 1).await;
    let mut decoder = hpack::Decoder::new(4096, 1024);
    let mut status = None;
    decoder
        .decode(&block, |field| {
            if field.name == hpack::FieldName::Pseudo(hpack::Pseudo::Status) {
                status = Some(field.value);
            }
        })
        .unwrap();
    assert_eq!(status.unwrap(), "431");
    let (_, reason) = client.frame_of(frame::RST_STREAM, 1).await;
    assert_eq!(
        Reason::from(frame::word(&reason, 0)),
        Reason::REFUSED_STREAM
    );
    assert!(!served.is_finished(), "the connection goes on");
}

#[tokio::test]
async fn a_malformed_request_is_reset_and_the_connection_goes_on() {
    let (mut client, _served) = RawClient::connect(server(None), echo).await;
    client.send(&request_frames(1, true, &GET[..3])).await;
    let (_, reason) = client.frame_of(frame::RST_STREAM, 1).await;
    assert_eq!(
        Reason::from(frame::word(&reason, 0)),
        Reason::PROTOCOL_ERROR
    );
    client.send(&request_frames(3, true, &GET)).await;
    let (_, block) = client.frame_of(frame::HEADERS, 3).await;
    assert_eq!(block[0], 0x88, ":status 200, indexed");
}

#[tokio::test]
async fn an_undecodable_header_block_ends_the_connection_with_compression_error() {
    let (mut client, served) = RawClient::connect(server(None), echo).await;
    let mut bad = Vec::new();
    frame::write_head(
        &mut bad,
        4,
        frame::HEADERS,
        frame::END_HEADERS | frame::END_STREAM,
        1,
    );
    bad.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
    client.send(&bad).await;
    let (_, goaway) = client.frame_of(frame::GOAWAY, 0).await;
    assert_eq!(
        Reason::from(frame::word(&goaway, 4)),
        Reason::COMPRESSION_ERROR
    );
    assert_ended_with(served, Reason::COMPRESSION_ERROR, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_client_that_pings_without_reading_the_answers_is_dropped() {
    let (client, served) = RawClient::connect(server(None), echo).await;
    let RawClient { io, .. } = client;
    let (_read_half, mut write_half) = tokio::io::split(io);
    let flood = tokio::spawn(async move {
        let mut pings = Vec::new();
        for _ in 0..1000 {
            frame::write_head(&mut pings, 8, frame::PING, 0, 0);
            pings.extend_from_slice(b"floodfld");
        }
        // Two megabytes of PINGs, never reading an answer.
        for _ in 0..120 {
            if write_half.write_all(&pings).await.is_err() {
                break;
            }
        }
    });
    assert_ended_with(served, Reason::ENHANCE_YOUR_CALM, Duration::from_secs(20)).await;
    flood.abort();
}

#[tokio::test]
async fn a_first_frame_other_than_settings_is_a_protocol_error() {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        server(None)
            .serve(after_preface(server_io).await, echo)
            .await
    });
    let mut opening = frame::PREFACE.to_vec();
    frame::write_head(&mut opening, 8, frame::PING, 0, 0);
    opening.extend_from_slice(b"12345678");
    let mut client_io = client_io;
    client_io.write_all(&opening).await.unwrap();
    assert_ended_with(served, Reason::PROTOCOL_ERROR, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_client_opening_streams_without_reading_the_answers_is_refused_then_dropped() {
    // Every call is answered at once with an empty body: the answers have no DATA that
    // could wait for the client to read.
    let empty = |_request: Request<RecvBody>| async { Response::new(Full::new(Bytes::new())) };
    let (client, served) = RawClient::connect(server(None), empty).await;
    let RawClient { io, .. } = client;
    let (_read_half, mut write_half) = tokio::io::split(io);
    let flood = tokio::spawn(async move {
        for batch in 0..400u32 {
            let mut requests = Vec::new();
            for n in 0..1000 {
                let id = (batch * 1000 + n) * 2 + 1;
                requests.extend_from_slice(&request_frames(id, true, &GET));
            }
            if write_half.write_all(&requests).await.is_err() {
                break;
            }
        }
    });
    assert_ended_with(served, Reason::ENHANCE_YOUR_CALM, Duration::from_secs(30)).await;
    flood.abort();
}

#[tokio::test]
async fn an_answer_ending_before_its_request_stops_the_request_with_no_error() {
    // Answers at once, without reading the request body.
    let early = |_request: Request<RecvBody>| async {
        Response::new(Full::new(Bytes::from_static(b"early")))
    };
    let (client, served) = serve(server(None), early).await;
    let mut client = client.ready().await.unwrap();
    let (response, mut request_body) = client.send_request(post("/early"), false).unwrap();
    request_body
        .send_data(Bytes::from_static(b"more to come"), false)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    assert_eq!(read_body(&mut body).await, b"early");
    let reset = tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| request_body.poll_reset(cx)),
    )
    .await
    .expect("the rest of the request is refused");
    assert_eq!(reset.unwrap(), Reason::NO_ERROR);
    // The connection goes on.
    let mut client = client.ready().await.unwrap();
    let (response, mut request_body) = client.send_request(post("/again"), false).unwrap();
    request_body
        .send_data(Bytes::from_static(b"x"), true)
        .unwrap();
    assert_eq!(
        read_body(&mut response.await.unwrap().into_body()).await,
        b"early"
    );
    assert!(!served.is_finished());
}

#[tokio::test]
async fn a_client_going_away_has_its_calls_answered_then_the_connection_ends() {
    let gate = Arc::new(Notify::new());
    let (mut client, served) = RawClient::connect(server(None), gated(Arc::clone(&gate))).await;
    client.send(&request_frames(1, true, &GET)).await;
    let mut goaway = Vec::new();
    frame::write_words(&mut goaway, frame::GOAWAY, 0, &[0, Reason::NO_ERROR.into()]);
    client.send(&goaway).await;
    // Stored as a permit if the call is not waiting yet.
    gate.notify_one();
    let (head, _) = client.frame_of(frame::HEADERS, 1).await;
    assert!(head.has(frame::END_STREAM), "the call taken is answered");
    let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn a_client_closing_its_socket_ends_the_connection_and_drops_its_calls() {
    let alive = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let handler = {
        let (alive, started) = (Arc::clone(&alive), Arc::clone(&started));
        move |_request: Request<RecvBody>| {
            let (alive, started) = (Arc::clone(&alive), Arc::clone(&started));
            async move {
                struct Alive(Arc<AtomicUsize>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                alive.fetch_add(1, Ordering::SeqCst);
                let _alive = Alive(alive);
                started.notify_one();
                std::future::pending::<()>().await;
                Response::new(Full::new(Bytes::new()))
            }
        }
    };
    let (mut client, served) = RawClient::connect(server(None), handler).await;
    client.send(&request_frames(1, false, &GET)).await;
    started.notified().await;
    assert_eq!(alive.load(Ordering::SeqCst), 1);
    drop(client);
    let ended = tokio::time::timeout(Duration::from_secs(10), served).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
    assert_eq!(alive.load(Ordering::SeqCst), 0, "the call was dropped");
}

#[tokio::test]
async fn a_client_whose_streams_keep_breaking_the_protocol_is_dropped() {
    let (mut client, served) = RawClient::connect(server(None), echo).await;
    // Requests without `:path`: each is reset with PROTOCOL_ERROR, up to 1,024 of them.
    let mut malformed = Vec::new();
    for n in 0..1100u32 {
        malformed.extend_from_slice(&request_frames(n * 2 + 1, true, &GET[..3]));
    }
    client.send(&malformed).await;
    assert_ended_with(served, Reason::ENHANCE_YOUR_CALM, Duration::from_secs(10)).await;
}
