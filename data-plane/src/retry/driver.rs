//! The one retry driver, for forwarded calls and RouteMessage alike. It owns a call's
//! attempts: it picks each endpoint (the balancer's choice among ready endpoints the call
//! has not tried yet, so a node that just failed gets no second attempt while its breaker
//! is still closed), bounds every attempt by the call's deadline, and after a failure
//! decides whether another attempt follows — only when the failure says a retry is safe,
//! attempts are left (the policy's `max_attempts`), the deadline has not passed and the
//! service's [`RetryBudget`](super::RetryBudget) pays for it — pausing a jittered,
//! doubling backoff first. What one attempt does (the HTTP/2 exchange, accounting) is the
//! caller's [`Attempt`], which is also how tests script endpoints.

use std::sync::Arc;

use meridian_shared::Backoff;
use tokio::time::Instant;

use super::TriedEndpoints;
use crate::balance::{Balancer, PickContext};
use crate::endpoint::Endpoint;
use crate::error::{RequestError, Scope};
use crate::table::ServiceRoute;

/// Where a call's endpoints come from.
pub enum Candidates<'a> {
    /// The balancer's picks: ready endpoints, one the call has not tried first.
    Balanced {
        balancer: &'a dyn Balancer,
        ctx: PickContext<'a>,
        /// Where the balancer looks, for the error when it has no usable endpoint.
        scope: Scope<'a>,
    },
    /// The one node the caller named; such a call never goes elsewhere.
    Named(&'a Arc<Endpoint>),
}

/// One attempt of a call on one endpoint, as the kind of call makes it (a forwarded
/// call, RouteMessage, or a scripted endpoint in tests). The future is `Send` by contract,
/// so the driver's future is too.
pub trait Attempt {
    /// What a node answered.
    type Answer: Send;

    /// Attempt number `number` (from 1) on `endpoint`.
    fn send(
        &mut self,
        endpoint: &Arc<Endpoint>,
        number: u32,
    ) -> impl Future<Output = Result<Self::Answer, Failure<Self::Answer>>> + Send;
}

/// A failed attempt.
#[derive(Debug)]
pub struct Failure<T> {
    pub error: RequestError,
    /// The node's own answer, returned to the caller as is when no retry follows.
    pub answer: Option<T>,
    /// Whether another node may get the call: this one never saw it, or the call is
    /// idempotent.
    pub retry_safe: bool,
}

/// The answer of a call's last attempt and who gave it.
#[derive(Debug)]
pub struct Delivered<'a, T> {
    pub answer: T,
    pub endpoint: &'a Arc<Endpoint>,
    /// Why the balancer picked it.
    pub reason: &'static str,
    /// The endpoint the balancer compared it with and passed over, if any.
    pub passed_over: Option<&'a Arc<Endpoint>>,
    /// Attempts made, the first included.
    pub attempts: u32,
}

/// Runs the attempts of one call to `route` that must end by `deadline`.
pub struct RetryDriver<'a> {
    pub route: &'a ServiceRoute,
    pub deadline: Option<Instant>,
}

impl<'a> RetryDriver<'a> {
    /// Attempts the call on endpoints from `candidates` until one answers or no retry is
    /// allowed.
    pub async fn run<A: Attempt>(
        &self,
        candidates: Candidates<'a>,
        mut attempt: A,
    ) -> Result<Delivered<'a, A::Answer>, RequestError> {
        let started = Instant::now();
        let route = self.route;
        let policy = &route.policy.retry;
        route.retry_budget.deposit();
        let max_attempts = match candidates {
            Candidates::Balanced { .. } => policy.effective_max_attempts(),
            Candidates::Named(_) => 1,
        };
        let mut backoff = Backoff::new(
            policy.effective_backoff_base(),
            policy.effective_backoff_max(),
        );
        let mut tried = TriedEndpoints::default();
        let mut number = 1;
        loop {
            let (index, endpoint, reason, passed_over) = self.pick(&candidates, &tried)?;
            let answered = match self.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, attempt.send(endpoint, number))
                    .await
                    .map_err(|_| self.deadline_exceeded(endpoint, number, started))?,
                None => attempt.send(endpoint, number).await,
            };
            let failure = match answered {
                Ok(answer) => {
                    return Ok(Delivered {
                        answer,
                        endpoint,
                        reason,
                        passed_over,
                        attempts: number,
                    });
                }
                Err(failure) => failure,
            };
            let retry = failure.retry_safe
                && number < max_attempts
                && self.deadline.is_none_or(|d| Instant::now() < d)
                && route.retry_budget.try_withdraw();
            if !retry {
                return match failure.answer {
                    Some(answer) => Ok(Delivered {
                        answer,
                        endpoint,
                        reason,
                        passed_over,
                        attempts: number,
                    }),
                    None => Err(failure.error),
                };
            }
            tracing::debug!(node = %endpoint.node.id, error = %failure.error, attempt = number, "retrying on another node");
            // Its answer, if any, ends here: the node's in-flight count drops before the pause.
            drop(failure);
            tried.insert(index);
            let pause = Instant::now() + backoff.next_delay();
            match self.deadline {
                Some(deadline) if deadline <= pause => {
                    tokio::time::sleep_until(deadline).await;
                    return Err(self.deadline_exceeded(endpoint, number, started));
                }
                _ => tokio::time::sleep_until(pause).await,
            }
            number += 1;
        }
    }

    /// The endpoint for the next attempt: its index among the candidates, the endpoint,
    /// why, and the endpoint passed over.
    #[allow(clippy::type_complexity)]
    fn pick(
        &self,
        candidates: &Candidates<'a>,
        tried: &TriedEndpoints,
    ) -> Result<
        (
            usize,
            &'a Arc<Endpoint>,
            &'static str,
            Option<&'a Arc<Endpoint>>,
        ),
        RequestError,
    > {
        let (balancer, ctx, scope) = match candidates {
            Candidates::Named(endpoint) => {
                return Ok((0, endpoint, "the message named this node", None));
            }
            Candidates::Balanced {
                balancer,
                ctx,
                scope,
            } => (*balancer, ctx, scope),
        };
        // An endpoint the call has tried is taken again only when no other is ready.
        let pick = balancer
            .pick_excluding(ctx, &|i| tried.contains(i))
            .or_else(|| balancer.pick(ctx))
            .ok_or_else(|| RequestError::NoUsableNode {
                service: self.route.name.clone(),
                scope: scope.to_string(),
                known: self.route.known_nodes,
            })?;
        let endpoints = balancer.endpoints();
        let passed_over = pick
            .compared_with
            .filter(|&i| i != pick.index)
            .and_then(|i| endpoints.get(i));
        Ok((pick.index, &endpoints[pick.index], pick.reason, passed_over))
    }

    /// The call ran out of time waiting for `endpoint`, counted in its metrics.
    fn deadline_exceeded(&self, endpoint: &Endpoint, attempts: u32, started: Instant) -> RequestError {
        self.route
            .metrics_of(&endpoint.node.id)
            .record(tonic::Code::DeadlineExceeded as i32, started.elapsed());
        RequestError::DeadlineExceeded {
            node: endpoint.node.id.clone(),
            service: self.route.name.clone(),
            attempts,
        }
    }
}
