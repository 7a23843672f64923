//! Runs the reconcilers while this replica leads and stops them the moment it does not.
//! Reconcilers are level-triggered: they look at the whole state after each change, so a
//! new leader also repairs what happened while nobody led.

use meridian_shared::Shutdown;

use super::{LeaderHandle, failback, lease_expiry, retention};
use crate::health;
use crate::scaling::autoscaler::Autoscaler;
use crate::topology::{StateHandle, TopologyWriter};

pub async fn run(
    leader: LeaderHandle,
    state: StateHandle,
    writer: TopologyWriter,
    autoscaler: Autoscaler,
    shutdown: Shutdown,
) {
    let mut leadership = leader.subscribe();
    while !shutdown.is_triggered() {
        let current = leadership.borrow_and_update().clone();
        let Some(lead) = current else {
            tokio::select! {
                _ = shutdown.wait() => return,
                changed = leadership.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let term = Shutdown::new();
        let tasks = [
            tokio::spawn(lease_expiry::run(
                lead.clone(),
                state.clone(),
                writer.clone(),
                term.clone(),
            )),
            tokio::spawn(failback::run(
                lead.clone(),
                state.clone(),
                writer.clone(),
                term.clone(),
            )),
            tokio::spawn(retention::run(
                lead.clone(),
                state.clone(),
                writer.clone(),
                term.clone(),
            )),
            tokio::spawn(autoscaler.clone().run(lead.clone(), term.clone())),
            tokio::spawn(health::run(
                lead,
                state.clone(),
                writer.clone(),
                term.clone(),
            )),
        ];
        let still_leading = tokio::select! {
            _ = shutdown.wait() => false,
            lost = leadership.wait_for(|l| l.is_none()) => lost.is_ok(),
        };
        term.trigger();
        for task in tasks {
            let _ = task.await;
        }
        if !still_leading && shutdown.is_triggered() {
            return;
        }
    }
}
