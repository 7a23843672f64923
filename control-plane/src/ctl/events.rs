//! `meridianctl events`: the event history from a sequence number and, with `--follow`,
//! new events as they happen, one line each as it arrives (JSON: one object per line, so
//! the output can be piped to `jq` while it streams). Ctrl-C ends a follow cleanly.

use clap::Args;
use futures::StreamExt;
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, text_cell, timestamp_cell, timestamp_json};
use super::{CtlError, Output, enums};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Start at this sequence number (0: the oldest kept). Numbers increase but skip
    /// values. To resume, pass the last seq seen plus one.
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    since: u64,
    /// Keep watching and print new events as they happen, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    /// Only events of this kind; repeat for several (default: all kinds).
    #[arg(long = "kind", value_name = "KIND", value_parser = enums::event_kind_parser())]
    kinds: Vec<String>,
}

pub(super) async fn run(
    mut admin: Admin,
    args: EventsArgs,
    format: Output,
) -> Result<(), CtlError> {
    let request = pb::WatchEventsRequest {
        since_seq: args.since,
        follow: args.follow,
        kinds: args.kinds,
    };
    let mut events = admin.watch_events(request).await?.into_inner();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = &mut ctrl_c => return Ok(()),
        };
        let Some(event) = event.transpose()? else {
            return Ok(());
        };
        let mut line = match format {
            Output::Table => line(&event),
            Output::Json => json(&event).to_string(),
        };
        line.push('\n');
        if !output::emit_while_open(&line)? {
            return Ok(());
        }
    }
}

/// One event as a line: seq, time, kind, subject, message, then the cause in brackets.
fn line(event: &pb::Event) -> String {
    let text = format!(
        "{:>6}  {}  {:<16}  {:<24}  {}  [{}]",
        event.seq,
        timestamp_cell(event.at.as_ref()),
        event.kind,
        event.subject,
        event.message,
        text_cell(&event.cause),
    );
    text.replace(['\n', '\r'], " ")
}

pub(crate) fn json(event: &pb::Event) -> Value {
    json!({
        "seq": event.seq,
        "at": timestamp_json(event.at.as_ref()),
        "kind": event.kind,
        "subject": event.subject,
        "message": event.message,
        "cause": event.cause,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::Command;
    use crate::ctl::tests::parse;

    fn event() -> pb::Event {
        pb::Event {
            seq: 42,
            at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            kind: "nodeFailed".into(),
            subject: "node/eu-west-a-1".into(),
            message: "marked failed: disk full".into(),
            cause: "operator:alice".into(),
        }
    }

    #[test]
    fn an_event_prints_as_one_line() {
        assert_eq!(
            line(&event()),
            "    42  2023-11-14T22:13:20Z  nodeFailed        node/eu-west-a-1          \
             marked failed: disk full  [operator:alice]"
        );
        let json = json(&event()).to_string();
        assert!(!json.contains('\n'));
        assert!(json.contains(r#""at":"2023-11-14T22:13:20Z""#), "{json}");
    }

    #[test]
    fn kinds_repeat_and_unknown_kinds_are_refused() {
        let args =
            parse("events --since 10 --follow --kind nodeFailed --kind proxyNack").expect("parses");
        let Command::Events(events) = args.command else {
            panic!("parsed as {:?}", args.command);
        };
        assert_eq!(events.since, 10);
        assert!(events.follow);
        assert_eq!(events.kinds, ["nodeFailed", "proxyNack"]);

        parse("events --kind nodeExploded").expect_err("unknown kind refused");
    }
}
