//! The client connection against a real HTTP/2 server (the `h2` crate's) on an in-memory
//! pipe: what a node receives and answers passes whole, both directions' flow control,
//! resets both ways, the node's stream limit, GOAWAY, large header blocks and a peer
//! that breaks the protocol.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::wire::frame;

const STREAM_WINDOW: u32 = 64 * 1024;

/// A node serving one connection with `answer` (each stream in a task of its own), and
/// the proxy's connection to it.
fn node<F, Fut>(builder: h2::server::Builder, answer: F) -> ClientConnection
where
    F: Fn(Request<RecvStream>, SendResponse<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (client_io, node_io) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        let mut connection = builder.handshake::<_, Bytes>(node_io).await.unwrap();
        while let Some(Ok((request, respond))) = connection.accept().await {
            tokio::spawn(answer(request, respond));
        }
    });
    ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW)
}

async fn read_all(mut body: RecvStream) -> Bytes {
    let mut all = BytesMut::new();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
        all.extend_from_slice(&data);
    }
    all.freeze()
}

/// Answers with the request body, the path and `x-custom` echoed in headers, and
/// `grpc-status: 0` in trailers.
async fn echo(request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let (head, body) = request.into_parts();
    let body = read_all(body).await;
    let mut answer = Response::builder()
        .header("x-path", head.uri.path())
        .header(
            "x-authority",
            head.uri.authority().map_or("", |a| a.as_str()),
        );
    if let Some(custom) = head.headers.get("x-custom") {
        answer = answer.header("x-custom", custom);
    }
    let mut stream = respond
        .send_response(answer.body(()).unwrap(), false)
        .unwrap();
    stream.send_data(body, false).unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    stream.send_trailers(trailers).unwrap();
}

fn request(body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    Request::post("http://node.local:50051/demo.v1.Echo/Say")
        .header("x-custom", "kept")
        .header("te", "trailers")
        .body(Full::new(body.into()))
        .unwrap()
}

async fn call(
    connection: &ClientConnection,
    body: impl Into<Bytes>,
) -> (Response<()>, Bytes, Option<HeaderMap>) {
    let response = match connection.send(request(body)).await {
        Ok(response) => response,
        Err(SendError::NotSent(e, _) | SendError::Failed(e)) => panic!("the call failed: {e}"),
    };
    let (head, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (
        Response::from_parts(head, ()),
        collected.to_bytes(),
        trailers,
    )
}

#[tokio::test]
async fn a_call_and_its_answer_pass_whole() {
    let connection = node(h2::server::Builder::new(), echo);
    for payload in [&b"hello"[..], b"", &[7u8; 20_000]] {
        let (head, body, trailers) = call(&connection, Bytes::copy_from_slice(payload)).await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()["x-path"], "/demo.v1.Echo/Say");
        assert_eq!(head.headers()["x-authority"], "node.local:50051");
        assert_eq!(head.headers()["x-custom"], "kept");
        assert_eq!(body, payload);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
    }
}

#[tokio::test]
async fn bodies_larger_than_every_window_pass_both_ways() {
    // The node allows 16 KiB per stream and 64 KiB per connection at first; the proxy's
    // own windows are 64 KiB per stream, 256 KiB per connection.
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(16 * 1024)
        .initial_connection_window_size(65_535);
    let connection = node(builder, echo);
    let payload: Bytes = (0..2_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let calls = (0..3).map(|_| call(&connection, payload.clone()));
    for (head, body, _) in futures::future::join_all(calls).await {
        assert_eq!(head.status(), 200);
        assert!(body == payload, "the body came back whole");
    }
}

#[tokio::test]
async fn a_reset_from_the_node_fails_the_call_with_its_reason() {
    let connection = node(
        h2::server::Builder::new(),
        |_request, mut respond| async move {
            respond.send_reset(h2::Reason::ENHANCE_YOUR_CALM);
        },
    );
    match connection.send(request("x")).await {
        Err(SendError::Failed(e)) => assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM)),
        other => panic!("expected a reset, got {:?}", other.map(|_| ())),
    }
}

/// A node that answers with a head and `first`, then reports the reset it sees.
fn node_sending_first_then_waiting_for_a_reset()
-> (ClientConnection, mpsc::UnboundedReceiver<h2::Reason>) {
    let (reset_tx, reset_rx) = mpsc::unbounded_channel();
    let connection = node(h2::server::Builder::new(), move |_request, mut respond| {
        let reset_tx = reset_tx.clone();
        async move {
            let mut stream = respond.send_response(Response::new(()), false).unwrap();
            stream
                .send_data(Bytes::from_static(b"first"), false)
                .unwrap();
            let reason = std::future::poll_fn(|cx| stream.poll_reset(cx))
                .await
                .unwrap();
            reset_tx.send(reason).unwrap();
        }
    });
    (connection, reset_rx)
}

#[tokio::test]
async fn dropping_an_answer_before_its_end_resets_the_stream() {
    let (connection, mut reset_rx) = node_sending_first_then_waiting_for_a_reset();
    let response = connection.send(request("x")).await.ok().unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    drop(body);
    assert_eq!(reset_rx.recv().await, Some(h2::Reason::CANCEL));
    // The connection goes on.
    let connection2 = connection.clone();
    assert!(!connection2.is_closed());
}

#[tokio::test]
async fn calls_beyond_the_nodes_stream_limit_wait_for_a_free_stream() {
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(1);
    let connection = node(builder, echo);
    // The node's SETTINGS come with the first answer.
    call(&connection, "first").await;
    let calls = (0..5).map(|i| call(&connection, format!("call {i}")));
    let answers = futures::future::join_all(calls).await;
    for (i, (_, body, _)) in answers.into_iter().enumerate() {
        assert_eq!(body, format!("call {i}"));
    }
}

#[tokio::test]
async fn a_header_block_larger_than_a_frame_goes_in_continuation_frames() {
    let connection = node(h2::server::Builder::new(), echo);
    let large = "v".repeat(40_000);
    let mut request = request("x");
    request
        .headers_mut()
        .insert("x-custom", HeaderValue::from_str(&large).unwrap());
    let response = connection.send(request).await.ok().unwrap();
    assert_eq!(response.headers()["x-custom"], large.as_str());
}

#[tokio::test]
async fn after_goaway_calls_in_flight_finish_and_new_calls_are_not_sent() {
    let (client_io, node_io) = tokio::io::duplex(64 * 1024);
    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel::<()>();
    let (respond_tx, mut respond_rx) = mpsc::unbounded_channel::<SendResponse<Bytes>>();
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(node_io).await.unwrap();
        loop {
            tokio::select! {
                accepted = connection.accept() => match accepted {
                    Some(Ok((_request, respond))) => respond_tx.send(respond).unwrap(),
                    _ => break,
                },
                Some(()) = shutdown_rx.recv() => connection.graceful_shutdown(),
            }
        }
    });
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let in_flight = tokio::spawn({
        let connection = connection.clone();
        async move {
            connection
                .send(request("x"))
                .await
                .ok()
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
        }
    });
    let mut respond = respond_rx.recv().await.unwrap();
    shutdown_tx.send(()).unwrap();
    // GOAWAY is polled for until the client's connection has heard it.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !connection.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client heard the GOAWAY");
    match connection.send(request("late")).await {
        Err(SendError::NotSent(_, request)) => {
            assert_eq!(request.uri().path(), "/demo.v1.Echo/Say")
        }
        other => panic!("expected the request back, got {:?}", other.map(|_| ())),
    }
    let mut stream = respond.send_response(Response::new(()), false).unwrap();
    stream
        .send_data(Bytes::from_static(b"finished"), true)
        .unwrap();
    assert_eq!(in_flight.await.unwrap(), "finished");
}

#[tokio::test]
async fn a_node_that_breaks_the_protocol_fails_its_calls_and_hears_why() {
    let (client_io, mut node_io) = tokio::io::duplex(64 * 1024);
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let call = tokio::spawn({
        let connection = connection.clone();
        async move { connection.send(request("x")).await.map(|_| ()) }
    });
    let mut preface = vec![0; frame::PREFACE.len()];
    node_io.read_exact(&mut preface).await.unwrap();
    assert_eq!(preface, frame::PREFACE);
    // A DATA frame on stream 0.
    node_io
        .write_all(&[0, 0, 1, frame::DATA, 0, 0, 0, 0, 0, b'x'])
        .await
        .unwrap();
    match call.await.unwrap() {
        Err(SendError::Failed(StreamError::Connection(message))) => {
            assert!(message.contains("broke the HTTP/2 protocol"), "{message}")
        }
        other => panic!("expected the connection to fail, got {other:?}"),
    }
    assert!(connection.is_closed());
    // What the client sent, up to its GOAWAY (PROTOCOL_ERROR).
    let mut sent = Vec::new();
    node_io.read_to_end(&mut sent).await.unwrap();
    let goaway = sent
        .windows(4)
        .position(|w| w == [0, 0, 8, frame::GOAWAY])
        .expect("a GOAWAY");
    assert_eq!(
        frame::word(&sent, goaway + 13),
        u32::from(h2::Reason::PROTOCOL_ERROR)
    );
}

#[tokio::test]
async fn a_node_that_goes_away_fails_the_calls_in_flight() {
    let (client_io, node_io) = tokio::io::duplex(64 * 1024);
    let (accepted_tx, mut accepted_rx) = mpsc::unbounded_channel::<()>();
    let node = tokio::spawn(async move {
        let mut connection = h2::server::handshake(node_io).await.unwrap();
        let _call = connection.accept().await;
        accepted_tx.send(()).unwrap();
        // The node's process ends: its end of the pipe closes.
    });
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let call = tokio::spawn({
        let connection = connection.clone();
        async move { connection.send(request("x")).await.map(|_| ()) }
    });
    accepted_rx.recv().await.unwrap();
    node.await.unwrap();
    assert!(matches!(
        call.await.unwrap(),
        Err(SendError::Failed(StreamError::Connection(_)))
    ));
    assert!(connection.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_node_that_stops_answering_pings_is_given_up() {
    // The node reads everything and answers nothing: not even SETTINGS or PING.
    let (client_io, mut node_io) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut sink = vec![0; 4096];
        while node_io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let started = tokio::time::Instant::now();
    match connection.send(request("x")).await {
        Err(SendError::Failed(StreamError::Connection(message))) => {
            assert!(
                message.contains("did not answer a keepalive PING"),
                "{message}"
            )
        }
        other => panic!(
            "expected the connection to be given up, got {:?}",
            other.map(|_| ())
        ),
    }
    assert!(connection.is_closed());
    assert!(started.elapsed() >= KEEPALIVE.interval + KEEPALIVE.timeout);
}

#[tokio::test(start_paused = true)]
async fn a_connection_nothing_holds_any_more_is_closed() {
    let (client_io, node_io) = tokio::io::duplex(64 * 1024);
    let node = tokio::spawn(async move {
        let mut connection = h2::server::handshake(node_io).await.unwrap();
        // Serves until the client closes its end.
        while let Some(Ok(_)) = connection.accept().await {}
    });
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!node.is_finished(), "a connection in a pool stays open");
    drop(connection);
    tokio::time::timeout(KEEPALIVE.interval * 2, node)
        .await
        .expect("the node saw the connection close")
        .unwrap();
}

#[tokio::test]
async fn a_node_flooding_pings_without_reading_the_answers_is_dropped() {
    let (client_io, mut node_io) = tokio::io::duplex(64 * 1024);
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let call = tokio::spawn({
        let connection = connection.clone();
        async move { connection.send(request("x")).await.map(|_| ()) }
    });
    // Never reads: every PING's answer stays with the client.
    let mut ping = Vec::new();
    for _ in 0..100 {
        ping.extend_from_slice(&[0, 0, 8, frame::PING, 0, 0, 0, 0, 0]);
        ping.extend_from_slice(b"flooding");
    }
    let flood = tokio::spawn(async move { while node_io.write_all(&ping).await.is_ok() {} });
    let ended = tokio::time::timeout(Duration::from_secs(10), call).await;
    match ended.expect("the client gave up on the node").unwrap() {
        Err(SendError::Failed(StreamError::Connection(message))) => {
            assert!(message.contains("faster than it reads"), "{message}")
        }
        other => panic!("expected the connection to be dropped, got {other:?}"),
    }
    flood.await.unwrap();
}

type ChunkResult = Result<http_body::Frame<Bytes>, std::convert::Infallible>;
type ChannelBody = http_body_util::StreamBody<tokio_stream::wrappers::ReceiverStream<ChunkResult>>;

/// A request body fed chunk by chunk through a channel, never ending by itself.
fn streaming_request() -> (mpsc::Sender<ChunkResult>, Request<ChannelBody>) {
    let (tx, rx) = mpsc::channel(1);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let request = Request::post("http://node.local/demo.v1.Echo/Chat")
        .body(body)
        .unwrap();
    (tx, request)
}

#[tokio::test]
async fn a_node_that_grants_huge_windows_and_stops_reading_holds_back_the_request_body() {
    let (client_io, mut node_io) = tokio::io::duplex(64 * 1024);
    // The largest windows HTTP/2 allows, then the node reads no more.
    let mut settings = Vec::new();
    frame::write_settings(
        &mut settings,
        &[(frame::SETTINGS_INITIAL_WINDOW_SIZE, (1 << 31) - 1)],
    );
    frame::write_words(
        &mut settings,
        frame::WINDOW_UPDATE,
        0,
        &[(1 << 31) - 1 - 65_535],
    );
    node_io.write_all(&settings).await.unwrap();
    let connection = ClientConnection::start(client_io, "node", STREAM_WINDOW, 4 * STREAM_WINDOW);
    let (body, request) = streaming_request();
    let _call = tokio::spawn({
        let connection = connection.clone();
        async move { connection.send(request).await.map(|_| ()) }
    });
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let mut taken = 0;
    while taken < 16 * 1024 * 1024 {
        let sent = tokio::time::timeout(
            Duration::from_millis(500),
            body.send(Ok(http_body::Frame::data(chunk.clone()))),
        );
        if sent.await.is_err() {
            break;
        }
        taken += chunk.len();
    }
    assert!(
        taken < 2 * 1024 * 1024,
        "the proxy took {taken} bytes of a body it cannot send"
    );
    // A PING from the node is answered as ever: the queued DATA is not a PING flood.
    let mut ping = Vec::new();
    frame::write_head(&mut ping, 8, frame::PING, 0, 0);
    ping.extend_from_slice(b"stillok?");
    node_io.write_all(&ping).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!connection.is_closed());
}

#[tokio::test]
async fn dropping_an_answer_while_the_request_still_streams_resets_the_stream() {
    let (connection, mut reset_rx) = node_sending_first_then_waiting_for_a_reset();
    let (body, request) = streaming_request();
    body.send(Ok(http_body::Frame::data(Bytes::from_static(b"hello"))))
        .await
        .unwrap();
    let response = connection.send(request).await.ok().unwrap();
    let mut answer = response.into_body();
    assert_eq!(
        answer.frame().await.unwrap().unwrap().into_data().unwrap(),
        "first"
    );
    drop(answer);
    let reset = tokio::time::timeout(Duration::from_secs(5), reset_rx.recv()).await;
    assert_eq!(
        reset.expect("the node saw a reset"),
        Some(h2::Reason::CANCEL)
    );
    // The request body's sender stopped: its channel closes.
    tokio::time::timeout(Duration::from_secs(5), body.closed())
        .await
        .expect("the request body was dropped");
}
