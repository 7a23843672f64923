//! Running the load: one tonic channel (one HTTP/2 connection) per connection, `streams`
//! workers on each, every worker timing its own calls into its own histogram (merged at
//! the end, so workers never contend).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_shared::Shutdown;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::report::{Report, new_histogram};
use super::{LoadArgs, Mode};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("invalid target {0:?}; expected e.g. http://127.0.0.1:7800")]
    Target(String),
}

/// Progress counters shared by the workers.
#[derive(Default)]
struct Progress {
    calls: AtomicU64,
    errors: AtomicU64,
}

/// When one worker records and stops.
#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    until: Option<Instant>,
    /// Pause between calls of one worker (rate limiting); zero for full speed.
    pace: Duration,
    /// Messages per stream in `stream` mode; 0 for one stream per worker.
    messages_per_stream: u64,
}

pub async fn run(args: LoadArgs, stop: Shutdown) -> Result<Report, LoadError> {
    let endpoint = Endpoint::from_shared(args.target.clone())
        .map_err(|_| LoadError::Target(args.target.clone()))?;
    let mut channels = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        let channel = endpoint
            .clone()
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|source| LoadError::Connect {
                target: args.target.clone(),
                source,
            })?;
        channels.push(channel);
    }
    let workers = channels.len() * args.streams.max(1);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup.max(0.0));
    let window = Window {
        measure_from,
        until: args.duration().map(|d| measure_from + d),
        pace: if args.rate > 0.0 {
            Duration::from_secs_f64(workers as f64 / args.rate)
        } else {
            Duration::ZERO
        },
        messages_per_stream: args.messages_per_stream,
    };
    let progress = Arc::new(Progress::default());
    if args.progress > 0.0 {
        tokio::spawn(report_progress(
            Arc::clone(&progress),
            Duration::from_secs_f64(args.progress),
            stop.clone(),
        ));
    }
    let payload = vec![0x5a; args.payload];
    let mut tasks = Vec::with_capacity(workers);
    for channel in &channels {
        for _ in 0..args.streams.max(1) {
            let worker = Worker {
                channel: channel.clone(),
                payload: payload.clone(),
                window,
                progress: Arc::clone(&progress),
                stop: stop.clone(),
            };
            tasks.push(tokio::spawn(worker.run(args.mode)));
        }
    }
    let mut report = Report::empty();
    for task in tasks {
        if let Ok(worker_report) = task.await {
            report.merge(&worker_report);
        }
    }
    report.elapsed = Instant::now().saturating_duration_since(measure_from);
    Ok(report)
}

struct Worker {
    channel: Channel,
    payload: Vec<u8>,
    window: Window,
    progress: Arc<Progress>,
    stop: Shutdown,
}

impl Worker {
    fn done(&self) -> bool {
        self.stop.is_triggered()
            || self
                .window
                .until
                .is_some_and(|until| Instant::now() >= until)
    }

    fn record(&self, report: &mut Report, started: Instant, outcome: Result<String, ()>) {
        let now = Instant::now();
        if started < self.window.measure_from {
            return;
        }
        match outcome {
            Ok(node) => {
                let micros = now.duration_since(started).as_micros().max(1) as u64;
                let _ = report.latencies.record(micros);
                *report.served_by.entry(node).or_default() += 1;
                self.progress.calls.fetch_add(1, Ordering::Relaxed);
            }
            Err(()) => {
                report.errors += 1;
                self.progress.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn pace(&self) {
        if !self.window.pace.is_zero() {
            tokio::time::sleep(self.window.pace).await;
        }
    }

    async fn run(self, mode: Mode) -> Report {
        let mut report = Report {
            latencies: new_histogram(),
            ..Report::empty()
        };
        match mode {
            Mode::Unary => self.unary(&mut report).await,
            Mode::Stream => self.stream(&mut report).await,
            Mode::RouteMessage => self.route_message(&mut report).await,
        }
        report
    }

    async fn unary(&self, report: &mut Report) {
        let mut client = EchoClient::new(self.channel.clone());
        while !self.done() {
            let started = Instant::now();
            let request = demo::SayRequest {
                text: "load".into(),
                payload: self.payload.clone(),
                delay_ms: 0,
            };
            let outcome = client
                .say(request)
                .await
                .map(|r| served_by(r.metadata()))
                .map_err(drop);
            self.record(report, started, outcome);
            self.pace().await;
        }
    }

    async fn stream(&self, report: &mut Report) {
        let mut client = EchoClient::new(self.channel.clone());
        while !self.done() {
            let (tx, rx) = mpsc::channel(1);
            let response = match client.chat(ReceiverStream::new(rx)).await {
                Ok(response) => response,
                Err(_) => {
                    self.record(report, Instant::now(), Err(()));
                    continue;
                }
            };
            let node = served_by(response.metadata());
            let mut replies = response.into_inner();
            let mut sent = 0;
            while !self.done() {
                if self.window.messages_per_stream > 0 && sent == self.window.messages_per_stream {
                    // Close our side and wait for the server to end the stream.
                    drop(tx);
                    while let Ok(Some(_)) = replies.message().await {}
                    break;
                }
                sent += 1;
                let started = Instant::now();
                let message = demo::SayRequest {
                    text: "load".into(),
                    payload: self.payload.clone(),
                    delay_ms: 0,
                };
                if tx.send(message).await.is_err() {
                    break;
                }
                match replies.message().await {
                    Ok(Some(_)) => self.record(report, started, Ok(node.clone())),
                    _ => {
                        self.record(report, started, Err(()));
                        break;
                    }
                }
                self.pace().await;
            }
        }
    }

    async fn route_message(&self, report: &mut Report) {
        let mut client = MessageRouterClient::new(self.channel.clone());
        let mut seq = 0u64;
        while !self.done() {
            seq += 1;
            let started = Instant::now();
            let message = pb::FederationMessage {
                id: format!("load-{seq}"),
                r#type: "demo.load".into(),
                payload: self.payload.clone(),
                target_service: "demo.v1.Echo".into(),
                ..Default::default()
            };
            let outcome = client
                .route_message(pb::RouteMessageRequest {
                    message: Some(message),
                })
                .await
                .map(|r| {
                    r.into_inner()
                        .decision
                        .map(|d| d.target_node)
                        .unwrap_or_default()
                })
                .map_err(drop);
            self.record(report, started, outcome);
            self.pace().await;
        }
    }
}

fn served_by(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata
        .get("x-meridian-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("direct")
        .to_owned()
}

async fn report_progress(progress: Arc<Progress>, every: Duration, stop: Shutdown) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let (mut last_calls, mut last_errors) = (0, 0);
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tick.tick() => {}
        }
        let calls = progress.calls.load(Ordering::Relaxed);
        let errors = progress.errors.load(Ordering::Relaxed);
        println!(
            "loadgen: {:.0} calls/s, {} errors in the last {:.0}s ({} calls in all)",
            (calls - last_calls) as f64 / every.as_secs_f64(),
            errors - last_errors,
            every.as_secs_f64(),
            calls
        );
        (last_calls, last_errors) = (calls, errors);
    }
}
