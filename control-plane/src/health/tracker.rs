//! What the health checks of one node have seen, and the status they call for: pure state,
//! no I/O, so thresholds and flap counting are tested with made-up instants.
//!
//! One check proves little (a dropped packet, a GC pause), so a node changes status only
//! after `unhealthy_threshold` failures or `healthy_threshold` passes *in a row*. That
//! damps noise but not a node that keeps crossing the thresholds: every crossing moves its
//! traffic away and back, and clients pay for each move. So the tracker also remembers
//! when it moved the node between routable and unroutable (a *flap*); when
//! `flap_threshold` of them fall within `flap_window`, it quarantines the node instead,
//! until an operator recovers it.
//!
//! Decisions are level-triggered: [`HealthTracker::decide`] compares the checks' verdict
//! with the node's status *as stored now*, not with what the tracker last wrote, so a
//! write that lost a race (or a leader change) is simply decided again after the next
//! check. Only a write that landed is [`HealthTracker::committed`] to the flap history.

use std::collections::VecDeque;
use std::time::Duration;

use meridian_shared::domain::{EventKind, NodeStatus};
use tokio::time::Instant;

/// When checks change a node's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Consecutive failures that make a routable node unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passes that make an unknown or unhealthy node healthy.
    pub healthy_threshold: u32,
    /// Flaps within `flap_window` that quarantine the node.
    pub flap_threshold: u32,
    pub flap_window: Duration,
}

/// A status change the checks call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: NodeStatus,
    pub to: NodeStatus,
    pub reason: String,
    /// The event to record; none for a new node's first verdict of healthy.
    pub event: Option<EventKind>,
    /// Whether the change moves the node between routable and unroutable.
    flap: bool,
}

/// The checks of one node so far.
#[derive(Debug, Default)]
pub struct HealthTracker {
    passes: u32,
    failures: u32,
    last_failure: String,
    /// When committed changes flapped the node, oldest first.
    flaps: VecDeque<Instant>,
}

impl HealthTracker {
    pub fn record_pass(&mut self) {
        self.passes = self.passes.saturating_add(1);
        self.failures = 0;
    }

    pub fn record_failure(&mut self, reason: String) {
        self.failures = self.failures.saturating_add(1);
        self.passes = 0;
        self.last_failure = reason;
    }

    /// The change the checks call for, given the node's stored status; `None` leaves it.
    /// Only unknown, healthy and unhealthy nodes are the checker's to change.
    pub fn decide(&self, current: NodeStatus, limits: &Limits, now: Instant) -> Option<Change> {
        let (to, reason, event) = match current {
            NodeStatus::Unknown | NodeStatus::Healthy
                if self.failures >= limits.unhealthy_threshold =>
            {
                let reason = format!(
                    "health check failed {} times in a row: {}",
                    self.failures, self.last_failure
                );
                (NodeStatus::Unhealthy, reason, Some(EventKind::NodeFailed))
            }
            NodeStatus::Unknown | NodeStatus::Unhealthy
                if self.passes >= limits.healthy_threshold =>
            {
                let reason = format!("health check passed {} times in a row", self.passes);
                let event = (current == NodeStatus::Unhealthy).then_some(EventKind::NodeRecovered);
                (NodeStatus::Healthy, reason, event)
            }
            _ => return None,
        };
        // Unknown → healthy keeps the node routable: a first verdict, not a flap.
        let flap = current.is_routable() != to.is_routable();
        let flaps = self.flaps_within(limits.flap_window, now) + usize::from(flap);
        if flap && flaps >= limits.flap_threshold as usize {
            return Some(Change {
                from: current,
                to: NodeStatus::Quarantined,
                reason: format!(
                    "flapped {flaps} times in {:?}; recover it with meridianctl nodes recover",
                    limits.flap_window
                ),
                event: Some(EventKind::NodeQuarantined),
                flap,
            });
        }
        Some(Change {
            from: current,
            to,
            reason,
            event,
            flap,
        })
    }

    /// Notes that `change` was written at `now`. A quarantine starts over: the node comes
    /// back only through an operator, with a clean history.
    pub fn committed(&mut self, change: &Change, now: Instant) {
        if change.to == NodeStatus::Quarantined {
            *self = HealthTracker::default();
            return;
        }
        if change.flap {
            self.flaps.push_back(now);
        }
    }

    /// Flaps committed less than `window` before `now`.
    fn flaps_within(&self, window: Duration, now: Instant) -> usize {
        self.flaps
            .iter()
            .filter(|at| now.saturating_duration_since(**at) < window)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        flap_threshold: 3,
        flap_window: Duration::from_secs(60),
    };

    fn failures(tracker: &mut HealthTracker, n: u32) {
        for _ in 0..n {
            tracker.record_failure("NOT_SERVING".into());
        }
    }

    fn passes(tracker: &mut HealthTracker, n: u32) {
        for _ in 0..n {
            tracker.record_pass();
        }
    }

    /// Decides and commits as if the write landed; returns the new status.
    fn apply(tracker: &mut HealthTracker, current: NodeStatus, now: Instant) -> NodeStatus {
        let change = tracker
            .decide(current, &LIMITS, now)
            .expect("a change is due");
        tracker.committed(&change, now);
        change.to
    }

    #[test]
    fn a_node_turns_unhealthy_only_after_the_threshold_of_failures_in_a_row() {
        let now = Instant::now();
        let mut tracker = HealthTracker::default();
        failures(&mut tracker, 2);
        assert_eq!(tracker.decide(NodeStatus::Healthy, &LIMITS, now), None);
        tracker.record_pass();
        failures(&mut tracker, 2);
        assert_eq!(
            tracker.decide(NodeStatus::Healthy, &LIMITS, now),
            None,
            "a pass in between starts the count again"
        );
        tracker.record_failure("timed out after 1s".into());
        let change = tracker.decide(NodeStatus::Healthy, &LIMITS, now).unwrap();
        assert_eq!(change.to, NodeStatus::Unhealthy);
        assert_eq!(change.event, Some(EventKind::NodeFailed));
        assert_eq!(
            change.reason,
            "health check failed 3 times in a row: timed out after 1s"
        );
        // An unknown node fails the same way.
        let change = tracker.decide(NodeStatus::Unknown, &LIMITS, now).unwrap();
        assert_eq!(change.to, NodeStatus::Unhealthy);
    }

    #[test]
    fn a_node_turns_healthy_after_the_threshold_of_passes_with_an_event_only_when_recovering() {
        let now = Instant::now();
        let mut tracker = HealthTracker::default();
        tracker.record_pass();
        assert_eq!(tracker.decide(NodeStatus::Unknown, &LIMITS, now), None);
        assert_eq!(tracker.decide(NodeStatus::Unhealthy, &LIMITS, now), None);
        tracker.record_pass();
        let first = tracker.decide(NodeStatus::Unknown, &LIMITS, now).unwrap();
        assert_eq!(
            (first.to, first.event),
            (NodeStatus::Healthy, None),
            "a new node's first verdict records no event"
        );
        assert!(!first.flap);
        let recovered = tracker.decide(NodeStatus::Unhealthy, &LIMITS, now).unwrap();
        assert_eq!(
            (recovered.to, recovered.event),
            (NodeStatus::Healthy, Some(EventKind::NodeRecovered))
        );
        assert_eq!(recovered.reason, "health check passed 2 times in a row");
    }

    #[test]
    fn a_node_already_where_the_checks_say_is_left_alone() {
        let now = Instant::now();
        let mut tracker = HealthTracker::default();
        passes(&mut tracker, 5);
        assert_eq!(tracker.decide(NodeStatus::Healthy, &LIMITS, now), None);
        failures(&mut tracker, 5);
        assert_eq!(tracker.decide(NodeStatus::Unhealthy, &LIMITS, now), None);
    }

    #[test]
    fn operator_and_lease_statuses_are_never_changed() {
        let now = Instant::now();
        for status in [
            NodeStatus::Draining,
            NodeStatus::Failed,
            NodeStatus::Quarantined,
            NodeStatus::Lost,
        ] {
            let mut tracker = HealthTracker::default();
            failures(&mut tracker, 10);
            assert_eq!(tracker.decide(status, &LIMITS, now), None, "{status}");
            passes(&mut tracker, 10);
            assert_eq!(tracker.decide(status, &LIMITS, now), None, "{status}");
        }
    }

    #[test]
    fn flapping_within_the_window_quarantines_the_node() {
        let start = Instant::now();
        let mut tracker = HealthTracker::default();
        passes(&mut tracker, 2);
        let mut status = apply(&mut tracker, NodeStatus::Unknown, start);
        assert_eq!(status, NodeStatus::Healthy, "not a flap");
        failures(&mut tracker, 3);
        status = apply(&mut tracker, status, start + Duration::from_secs(10));
        assert_eq!(status, NodeStatus::Unhealthy, "flap 1");
        passes(&mut tracker, 2);
        status = apply(&mut tracker, status, start + Duration::from_secs(20));
        assert_eq!(status, NodeStatus::Healthy, "flap 2");
        failures(&mut tracker, 3);
        let change = tracker
            .decide(status, &LIMITS, start + Duration::from_secs(30))
            .unwrap();
        assert_eq!(change.to, NodeStatus::Quarantined, "flap 3");
        assert_eq!(change.event, Some(EventKind::NodeQuarantined));
        assert_eq!(
            change.reason,
            "flapped 3 times in 60s; recover it with meridianctl nodes recover"
        );
    }

    #[test]
    fn flaps_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut tracker = HealthTracker::default();
        failures(&mut tracker, 3);
        let mut status = apply(&mut tracker, NodeStatus::Healthy, start);
        passes(&mut tracker, 2);
        status = apply(&mut tracker, status, start + Duration::from_secs(5));
        assert_eq!(status, NodeStatus::Healthy);
        // The first flap is 60 s old by now, so this is the second within the window.
        failures(&mut tracker, 3);
        status = apply(&mut tracker, status, start + Duration::from_secs(60));
        assert_eq!(status, NodeStatus::Unhealthy);
        // The second (at 5 s) is out of the window at 65 s, so again two, not three.
        passes(&mut tracker, 2);
        status = apply(&mut tracker, status, start + Duration::from_secs(65));
        assert_eq!(status, NodeStatus::Healthy);
        failures(&mut tracker, 3);
        let change = tracker
            .decide(status, &LIMITS, start + Duration::from_secs(66))
            .unwrap();
        assert_eq!(change.to, NodeStatus::Quarantined, "60 s, 65 s and 66 s");
    }

    #[test]
    fn only_committed_changes_count_as_flaps() {
        let start = Instant::now();
        let mut tracker = HealthTracker::default();
        failures(&mut tracker, 3);
        // Decided three times, but the writes lost their races: no flap recorded.
        for _ in 0..3 {
            let change = tracker.decide(NodeStatus::Healthy, &LIMITS, start).unwrap();
            assert_eq!(change.to, NodeStatus::Unhealthy);
        }
        assert_eq!(tracker.flaps_within(LIMITS.flap_window, start), 0);
    }

    #[test]
    fn quarantine_starts_a_clean_history() {
        let start = Instant::now();
        let mut tracker = HealthTracker::default();
        let mut status = NodeStatus::Healthy;
        for round in 0..3 {
            failures(&mut tracker, 3);
            status = apply(&mut tracker, status, start + Duration::from_secs(round));
            if status == NodeStatus::Quarantined {
                break;
            }
            passes(&mut tracker, 2);
            status = apply(&mut tracker, status, start + Duration::from_secs(round));
        }
        assert_eq!(status, NodeStatus::Quarantined);
        assert_eq!(tracker.flaps_within(LIMITS.flap_window, start), 0);
        // Recovered by an operator (unknown again): one failure does nothing, and it takes
        // three fresh flaps to quarantine it again.
        tracker.record_failure("NOT_SERVING".into());
        assert_eq!(tracker.decide(NodeStatus::Unknown, &LIMITS, start), None);
        passes(&mut tracker, 2);
        status = apply(&mut tracker, NodeStatus::Unknown, start);
        assert_eq!(status, NodeStatus::Healthy);
        failures(&mut tracker, 3);
        status = apply(&mut tracker, status, start);
        assert_eq!(status, NodeStatus::Unhealthy);
    }
}
