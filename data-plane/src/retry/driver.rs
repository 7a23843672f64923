//! The one retry driver, for forwarded calls and RouteMessage alike. It owns a call's
//! attempts: it picks each endpoint (the balancer's choice among ready endpoints the call
//! has not tried yet, so a node that just failed gets no second attempt while its breaker
//! is still closed; a node with its maximum of calls in flight is not ready either, and a
//! call that finds every node full fails fast with an "upstream overflow"), bounds every
//! attempt by the call's deadline, and after a failure
//! decides whether another attempt follows — only when the failure says a retry is safe,
//! attempts are left (the policy's `max_attempts`), the deadline has not passed and the
//! service's [`RetryBudget`](super::RetryBudget) pays for it — pausing a jittered,
//! doubling backoff first. When the service has no usable node, or its attempts end on
//! such a retryable failure, the call goes on to the next service of its policy's
//! fallback chain ([`FallbackChain`]: free when nothing was sent, else a retry like any
//! other), with that service's own attempts. What one attempt does (the HTTP/2 exchange,
//! accounting) is the caller's [`Attempt`], which is also how tests script endpoints.

use std::sync::Arc;

use meridian_shared::Backoff;
use tokio::time::Instant;

use super::TriedEndpoints;
use crate::balance::{Balancer, PickContext};
use crate::clock;
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

    /// Whether the attempt ends itself at the call's deadline (with a `DeadlineExceeded`
    /// failure that is not retry-safe); if not, the driver bounds it with a timer.
    const ENDS_AT_DEADLINE: bool = false;

    /// Attempt number `number` (from 1) on `endpoint`, a node of `route`: the service
    /// called, or a fallback service of its chain.
    fn send(
        &mut self,
        route: &ServiceRoute,
        endpoint: &Arc<Endpoint>,
        number: u32,
    ) -> impl Future<Output = Result<Self::Answer, Failure<Self::Answer>>> + Send;

    /// Admits the call under fallback service `route`'s own limits, before its first
    /// attempt there (the service called admitted it before the driver ran). A fallback
    /// that refuses is passed over like one without a usable node.
    fn admit_fallback(&mut self, route: &ServiceRoute) -> Result<(), RequestError> {
        let _ = route;
        Ok(())
    }
}

/// Where the fallback services of a call come from: the routes of the proxy's table and
/// where their endpoints are looked for (as for the service called).
pub trait FallbackChain<'a>: Sync {
    /// The route of fallback `service` and its candidates; `None` when the proxy's table
    /// does not hold it (the chain then goes on to the next one).
    fn link(&'a self, service: &str) -> Option<(&'a ServiceRoute, Candidates<'a>)>;
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
    /// The service whose node answered: the one called, or a fallback service.
    pub route: &'a ServiceRoute,
    /// Which link of the fallback chain answered: 0 for the service called, 1 for its
    /// first fallback service, and so on.
    pub fallback_depth: u32,
}

/// Runs the attempts of one call to `route` that must end by `deadline`.
pub struct RetryDriver<'a> {
    pub route: &'a ServiceRoute,
    pub deadline: Option<Instant>,
}

/// One service of a call's fallback chain and where its endpoints come from.
struct Link<'a> {
    route: &'a ServiceRoute,
    candidates: Candidates<'a>,
    /// 0 for the service called, then 1, 2... along the policy's fallback services.
    depth: usize,
}

impl<'a> RetryDriver<'a> {
    /// Attempts the call on endpoints from `candidates` until one answers or no retry is
    /// allowed.
    pub async fn run<A: Attempt>(
        &self,
        candidates: Candidates<'a>,
        attempt: A,
    ) -> Result<Delivered<'a, A::Answer>, RequestError> {
        self.run_with_fallbacks(candidates, attempt, None).await
    }

    /// Like [`RetryDriver::run`], going on along the route's fallback chain (its policy's
    /// `fallback_services`, resolved by `fallbacks`): to the next service when one has no
    /// usable node (free: nothing was sent), or when a failure another node may retry
    /// ends its attempts (a retry, paid from the failed service's budget). A call to a
    /// named node never falls back.
    ///
    /// Not an `async fn`: one would hold `attempt` twice (its argument and its local),
    /// and its future is part of every call's.
    #[allow(clippy::manual_async_fn)] // see above
    pub fn run_with_fallbacks<A: Attempt>(
        &self,
        candidates: Candidates<'a>,
        mut attempt: A,
        fallbacks: Option<&'a dyn FallbackChain<'a>>,
    ) -> impl Future<Output = Result<Delivered<'a, A::Answer>, RequestError>> {
        async move {
            let started = clock::now();
            self.route.retry_budget.deposit();
            let policy = &self.route.policy.retry;
            let mut backoff = Backoff::new(
                policy.effective_backoff_base(),
                policy.effective_backoff_max(),
            );
            let mut link = Link {
                route: self.route,
                candidates,
                depth: 0,
            };
            let mut tried = TriedEndpoints::default();
            let mut on_link = 0;
            let mut number = 1;
            // The last failure, when the call went on to a fallback service.
            let mut fell_back_from: Option<RequestError> = None;
            // The last refusal of a fallback service's limits.
            let mut refused: Option<RequestError> = None;
            loop {
                let (index, endpoint, reason, passed_over) = match self.pick(&link, &tried) {
                    Ok(picked) => picked,
                    Err(no_node) => {
                        match self.link_after(&link, fallbacks, &mut attempt, &mut refused) {
                            Some(next) => {
                                (link, tried, on_link) = (next, TriedEndpoints::default(), 0);
                                continue;
                            }
                            None => return Err(fell_back_from.or(refused).unwrap_or(no_node)),
                        }
                    }
                };
                on_link += 1;
                // The attempt's future is built where it is awaited: held in a local first, it
                // would take its space in the driver's future twice.
                let answered = match self.deadline {
                    Some(deadline) if !A::ENDS_AT_DEADLINE => tokio::time::timeout_at(
                        deadline,
                        attempt.send(link.route, endpoint, number),
                    )
                    .await
                    .map_err(|_| self.deadline_exceeded(link.route, endpoint, number, started))?,
                    _ => attempt.send(link.route, endpoint, number).await,
                };
                // Made after the await, so the future does not hold it across one.
                let delivered = |answer| Delivered {
                    answer,
                    endpoint,
                    reason,
                    passed_over,
                    attempts: number,
                    route: link.route,
                    fallback_depth: link.depth as u32,
                };
                let failure = match answered {
                    Ok(answer) => return Ok(delivered(answer)),
                    Err(failure) => failure,
                };
                let may_go_on =
                    failure.retry_safe && self.deadline.is_none_or(|d| clock::now() < d);
                let retry_here = may_go_on && on_link < max_attempts(&link);
                let next = (may_go_on && !retry_here)
                    .then(|| self.link_after(&link, fallbacks, &mut attempt, &mut refused))
                    .flatten();
                let go_on =
                    (retry_here || next.is_some()) && link.route.retry_budget.try_withdraw();
                if !go_on {
                    return match failure.answer {
                        Some(answer) => Ok(delivered(answer)),
                        None => Err(failure.error),
                    };
                }
                let Failure { error, answer, .. } = failure;
                // Its answer, if any, ends here: the node's in-flight count drops before the pause.
                drop(answer);
                match next {
                    Some(next) => {
                        tracing::debug!(node = %endpoint.node.id, %error, attempt = number, fallback = %next.route.name, "falling back to the next service of the chain");
                        fell_back_from = Some(error);
                        (link, tried, on_link) = (next, TriedEndpoints::default(), 0);
                    }
                    None => {
                        tracing::debug!(node = %endpoint.node.id, %error, attempt = number, "retrying on another node");
                        tried.insert(index);
                    }
                }
                let pause = Instant::now() + backoff.next_delay();
                // The timer is boxed: only retries pause, and every call's future would
                // otherwise carry it.
                match self.deadline {
                    Some(deadline) if deadline <= pause => {
                        Box::pin(tokio::time::sleep_until(deadline)).await;
                        return Err(self.deadline_exceeded(link.route, endpoint, number, started));
                    }
                    _ => Box::pin(tokio::time::sleep_until(pause)).await,
                }
                number += 1;
            }
        }
    }

    /// The next service of the chain after `link` that the proxy's table holds and whose
    /// limits admit the call (`attempt.admit_fallback`; the last refusal is left in
    /// `refused`); `None` at the end of the chain, or for a call to a named node.
    fn link_after<A: Attempt>(
        &self,
        link: &Link<'a>,
        fallbacks: Option<&'a dyn FallbackChain<'a>>,
        attempt: &mut A,
        refused: &mut Option<RequestError>,
    ) -> Option<Link<'a>> {
        if matches!(link.candidates, Candidates::Named(_)) {
            return None;
        }
        let fallbacks = fallbacks?;
        let chain = &self.route.policy.fallback_services;
        (link.depth + 1..=chain.len()).find_map(|depth| {
            let (route, candidates) = fallbacks.link(&chain[depth - 1])?;
            if let Err(refusal) = attempt.admit_fallback(route) {
                tracing::debug!(service = %self.route.name, fallback = %route.name, error = %refusal, "fallback service passed over: its limits refused the call");
                *refused = Some(refusal);
                return None;
            }
            Some(Link {
                route,
                candidates,
                depth,
            })
        })
    }

    /// The endpoint for the next attempt: its index among the candidates, the endpoint,
    /// why, and the endpoint passed over.
    #[allow(clippy::type_complexity)]
    fn pick(
        &self,
        link: &Link<'a>,
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
        let (balancer, ctx, scope) = match &link.candidates {
            Candidates::Named(endpoint) if endpoint.is_full() => {
                return Err(RequestError::UpstreamOverflow {
                    service: link.route.name.clone(),
                    scope: format!("(the named node {})", endpoint.node.id),
                    full: 1,
                    limit: endpoint.max_requests(),
                });
            }
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
            .ok_or_else(|| no_pick(link.route, balancer.endpoints(), scope))?;
        let endpoints = balancer.endpoints();
        let passed_over = pick
            .compared_with
            .filter(|&i| i != pick.index)
            .and_then(|i| endpoints.get(i));
        Ok((pick.index, &endpoints[pick.index], pick.reason, passed_over))
    }

    /// The call ran out of time waiting for `endpoint` of `route`, counted in its metrics.
    fn deadline_exceeded(
        &self,
        route: &ServiceRoute,
        endpoint: &Endpoint,
        attempts: u32,
        started: Instant,
    ) -> RequestError {
        route
            .metrics_of(&endpoint.node.id)
            .record(tonic::Code::DeadlineExceeded as i32, clock::since(started));
        RequestError::DeadlineExceeded {
            node: endpoint.node.id.clone(),
            service: self.route.name.clone(),
            attempts,
        }
    }
}

/// Attempts a link may take: its policy's `max_attempts`, or 1 for a named node.
fn max_attempts(link: &Link<'_>) -> u32 {
    match link.candidates {
        Candidates::Balanced { .. } => link.route.policy.retry.effective_max_attempts(),
        Candidates::Named(_) => 1,
    }
}

/// Why no endpoint of `route` was picked: an upstream overflow when some were left out
/// only for being full, else no usable node.
fn no_pick(route: &ServiceRoute, endpoints: &[Arc<Endpoint>], scope: &Scope<'_>) -> RequestError {
    let (full, limit) = endpoints
        .iter()
        .filter(|e| e.is_full() && e.breaker.is_ready())
        .fold((0, 0), |(full, limit), e| {
            (full + 1, limit.max(e.max_requests()))
        });
    match full {
        0 => RequestError::NoUsableNode {
            service: route.name.clone(),
            scope: scope.to_string(),
            known: route.known_nodes,
        },
        _ => RequestError::UpstreamOverflow {
            service: route.name.clone(),
            scope: scope.to_string(),
            full,
            limit,
        },
    }
}

#[cfg(test)]
mod tests {
    //! The driver against scripted endpoints, in paused time: what each endpoint does is
    //! written down, and the clock moves only when every task waits on it.

    use std::collections::HashMap;
    use std::time::Duration;

    use meridian_shared::domain::{Node, RetryPolicy, ServicePolicy};
    use tonic::Code;

    use super::*;
    use crate::endpoint::UpstreamSettings;
    use crate::table::{ProxyIdentity, ProxyTable, TableData, TableSource};

    const SERVICE: &str = "demo.v1.Echo";

    /// What a scripted endpoint does with an attempt.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Answers after this long.
        Answer(Duration),
        /// Refuses the connection: the call never reached it.
        Refuse,
        /// Answers UNAVAILABLE itself; `retry_safe` when the call is idempotent.
        Unavailable { retry_safe: bool },
        /// Never answers.
        Hang,
    }

    /// Endpoints that follow a script, and the attempts they saw (node, number, when).
    #[derive(Default)]
    struct Scripted {
        steps: HashMap<String, Step>,
        seen: Vec<(String, u32, Instant)>,
    }

    impl Scripted {
        fn new(steps: &[(&str, Step)]) -> Self {
            Scripted {
                steps: steps.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect(),
                seen: Vec::new(),
            }
        }

        fn nodes_seen(&self) -> Vec<&str> {
            self.seen.iter().map(|(node, _, _)| node.as_str()).collect()
        }
    }

    impl Attempt for &mut Scripted {
        /// The node that answered.
        type Answer = String;

        async fn send(
            &mut self,
            _route: &ServiceRoute,
            endpoint: &Arc<Endpoint>,
            number: u32,
        ) -> Result<String, Failure<String>> {
            let node = endpoint.node.id.clone();
            self.seen.push((node.clone(), number, Instant::now()));
            match self.steps[&node] {
                Step::Answer(after) => {
                    tokio::time::sleep(after).await;
                    Ok(node)
                }
                Step::Refuse => Err(Failure {
                    error: RequestError::Upstream {
                        node,
                        service: SERVICE.into(),
                        attempts: number,
                        reason: "connection refused".into(),
                    },
                    answer: None,
                    retry_safe: true,
                }),
                Step::Unavailable { retry_safe } => Err(Failure {
                    error: RequestError::Answered(tonic::Status::unavailable("overloaded")),
                    answer: Some(node),
                    retry_safe,
                }),
                Step::Hang => std::future::pending().await,
            }
        }
    }

    /// A table whose service has `nodes` and `retry` as its retry policy.
    fn table(nodes: &[&str], retry: RetryPolicy) -> ProxyTable {
        let mut data = TableData {
            version: 1,
            federation: "prod".into(),
            ..Default::default()
        };
        for (i, id) in nodes.iter().enumerate() {
            let node = Node {
                id: (*id).to_owned(),
                address: format!("127.0.0.1:{}", 1 + i),
                region: "eu-west".into(),
                zone: "eu-west-a".into(),
                services: vec![SERVICE.into()],
                ..Default::default()
            };
            data.nodes.insert((*id).to_owned(), node);
        }
        let policy = ServicePolicy {
            name: SERVICE.into(),
            retry,
            ..Default::default()
        };
        data.services.insert(SERVICE.into(), policy);
        let identity = ProxyIdentity {
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            ..Default::default()
        };
        ProxyTable::build(
            data,
            &identity,
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        )
    }

    fn route(table: &ProxyTable) -> &ServiceRoute {
        table.service(SERVICE).expect("the service is in the table")
    }

    fn everywhere(route: &ServiceRoute) -> Candidates<'_> {
        Candidates::Balanced {
            balancer: &*route.all,
            ctx: PickContext::default(),
            scope: Scope::Federation,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_goes_on_to_nodes_it_has_not_tried_until_one_answers() {
        for _ in 0..20 {
            let table = table(&["a", "b", "c"], RetryPolicy::default());
            let route = route(&table);
            let mut script = Scripted::new(&[
                ("a", Step::Refuse),
                ("b", Step::Refuse),
                ("c", Step::Answer(Duration::from_millis(5))),
            ]);
            let driver = RetryDriver {
                route,
                deadline: None,
            };
            let delivered = driver.run(everywhere(route), &mut script).await.unwrap();
            assert_eq!(delivered.answer, "c");
            assert_eq!(delivered.endpoint.node.id, "c");
            let seen = script.nodes_seen();
            assert_eq!(delivered.attempts as usize, seen.len());
            let mut distinct = seen.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                seen.len(),
                "a node was tried twice: {seen:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_the_policys_maximum_with_the_last_failure() {
        let table = table(
            &["a", "b", "c"],
            RetryPolicy {
                max_attempts: 2,
                ..Default::default()
            },
        );
        let route = route(&table);
        let mut script = Scripted::new(&[
            ("a", Step::Refuse),
            ("b", Step::Refuse),
            ("c", Step::Refuse),
        ]);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let error = driver
            .run(everywhere(route), &mut script)
            .await
            .unwrap_err();
        assert_eq!(script.seen.len(), 2);
        let status = error.into_status();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("after 2 attempt(s)")
                && status.message().contains("connection refused"),
            "{}",
            status.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_pause_a_jittered_backoff_within_the_policys_ceilings() {
        let policy = RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 150,
            ..Default::default()
        };
        let mut pauses = Vec::new();
        for _ in 0..20 {
            let table = table(&["a", "b", "c"], policy.clone());
            let route = route(&table);
            let mut script = Scripted::new(&[
                ("a", Step::Refuse),
                ("b", Step::Refuse),
                ("c", Step::Refuse),
            ]);
            let driver = RetryDriver {
                route,
                deadline: None,
            };
            driver
                .run(everywhere(route), &mut script)
                .await
                .unwrap_err();
            let at: Vec<Instant> = script.seen.iter().map(|(_, _, at)| *at).collect();
            assert_eq!(at.len(), 3);
            let (first, second) = (at[1] - at[0], at[2] - at[1]);
            assert!(first <= Duration::from_millis(100), "{first:?}");
            assert!(second <= Duration::from_millis(150), "{second:?}");
            pauses.extend([first, second]);
        }
        assert!(
            pauses.iter().any(|p| *p >= Duration::from_millis(10)),
            "no backoff between attempts: {pauses:?}"
        );
        pauses.sort();
        pauses.dedup();
        assert!(pauses.len() > 10, "pauses are not jittered: {pauses:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_that_never_answers_ends_the_call_at_its_deadline() {
        let table = table(&["a"], RetryPolicy::default());
        let route = route(&table);
        let mut script = Scripted::new(&[("a", Step::Hang)]);
        let started = Instant::now();
        let driver = RetryDriver {
            route,
            deadline: Some(started + Duration::from_secs(1)),
        };
        let error = driver
            .run(everywhere(route), &mut script)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        let status = error.into_status();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("node a of service demo.v1.Echo"),
            "{}",
            status.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_after_the_deadline_even_during_a_backoff() {
        let table = table(
            &["a", "b"],
            RetryPolicy {
                backoff_base_ms: 60_000,
                backoff_max_ms: 60_000,
                ..Default::default()
            },
        );
        let route = route(&table);
        let mut script = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(1);
        let driver = RetryDriver {
            route,
            deadline: Some(deadline),
        };
        let error = driver
            .run(everywhere(route), &mut script)
            .await
            .unwrap_err();
        // One attempt, then either a pause cut short by the deadline or (a pause of
        // under 1 ms) a second attempt; never a wait past the deadline.
        assert!(Instant::now() <= deadline, "waited past the deadline");
        assert!(script.seen.len() <= 2);
        assert!(
            matches!(error.code(), Code::DeadlineExceeded | Code::Unavailable),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_retry_budget_stops_retries() {
        // A floor of one retry per second and the smallest share of calls: the first call
        // may retry once, the next one (in the same second) may not.
        let table = table(
            &["a", "b"],
            RetryPolicy {
                budget_percent: 1,
                budget_min_per_second: 1,
                ..Default::default()
            },
        );
        let route = route(&table);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let mut first = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        driver.run(everywhere(route), &mut first).await.unwrap_err();
        assert_eq!(first.seen.len(), 2, "the floor pays one retry");
        let mut second = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        driver
            .run(everywhere(route), &mut second)
            .await
            .unwrap_err();
        assert_eq!(second.seen.len(), 1, "the budget is spent");
        // Granted: the first call's retry; refused: its third attempt and the second call's.
        assert_eq!(route.retry_budget.counts(), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_nodes_unavailable_answer_is_returned_as_is_when_no_retry_follows() {
        let two_attempts = RetryPolicy {
            max_attempts: 2,
            ..Default::default()
        };
        let table = table(&["a", "b"], two_attempts);
        let route = route(&table);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        // Not idempotent: the node's answer goes back after one attempt.
        let unsafe_retry = Step::Unavailable { retry_safe: false };
        let mut script = Scripted::new(&[("a", unsafe_retry), ("b", unsafe_retry)]);
        let delivered = driver.run(everywhere(route), &mut script).await.unwrap();
        assert_eq!(delivered.attempts, 1);
        assert_eq!(script.seen.len(), 1);
        // Idempotent: retried on the other node, whose answer goes back when no attempt is
        // left.
        let safe_retry = Step::Unavailable { retry_safe: true };
        let mut script = Scripted::new(&[("a", safe_retry), ("b", safe_retry)]);
        let delivered = driver.run(everywhere(route), &mut script).await.unwrap();
        assert_eq!(delivered.attempts, 2);
        assert_ne!(script.seen[0].0, script.seen[1].0);
        assert_eq!(delivered.answer, script.seen[1].0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_named_node_gets_a_single_attempt() {
        let table = table(&["a", "b"], RetryPolicy::default());
        let route = route(&table);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let mut script = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        let named = table.endpoint("a").unwrap();
        driver
            .run(Candidates::Named(named), &mut script)
            .await
            .unwrap_err();
        assert_eq!(script.nodes_seen(), ["a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_node_is_passed_over_and_with_every_node_full_the_call_fails_fast() {
        let table = table(&["a", "b"], RetryPolicy::default());
        let route = route(&table);
        let endpoints = route.all.endpoints();
        for endpoint in endpoints {
            endpoint.set_max_requests(1);
        }
        let a = endpoints.iter().find(|e| e.node.id == "a").unwrap();
        let _a_busy = a.start_request();
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        for _ in 0..20 {
            let mut script = Scripted::new(&[
                ("a", Step::Answer(Duration::ZERO)),
                ("b", Step::Answer(Duration::ZERO)),
            ]);
            let delivered = driver.run(everywhere(route), &mut script).await.unwrap();
            assert_eq!(delivered.answer, "b", "a is full");
        }
        let b = endpoints.iter().find(|e| e.node.id == "b").unwrap();
        let _b_busy = b.start_request();
        let mut script = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        let status = driver
            .run(everywhere(route), &mut script)
            .await
            .unwrap_err()
            .into_status();
        assert!(script.seen.is_empty(), "a full node was called");
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("upstream overflow")
                && status
                    .message()
                    .contains("2 node(s) full, at most 1 call(s) each"),
            "{}",
            status.message()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_breaker_open_the_call_fails_fast_saying_so() {
        let table = table(&["a", "b"], RetryPolicy::default());
        let route = route(&table);
        for endpoint in route.all.endpoints() {
            for _ in 0..crate::endpoint::BreakerSettings::default().threshold {
                endpoint.breaker.record_failure();
            }
        }
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let mut script = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        let status = driver
            .run(everywhere(route), &mut script)
            .await
            .unwrap_err()
            .into_status();
        assert!(
            script.seen.is_empty(),
            "a node whose breaker is open was called"
        );
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("no usable node for service demo.v1.Echo anywhere in the federation: 2 node(s) known"),
            "{}",
            status.message()
        );
    }

    const BACKUP: &str = "demo.v1.EchoBackup";

    /// A table where SERVICE (on `nodes`) falls back to BACKUP (on `backups`), each with
    /// `max_attempts`; the nodes' breakers never open during a test.
    fn chained_table(nodes: &[&str], backups: &[&str], max_attempts: u32) -> ProxyTable {
        let mut data = TableData {
            version: 1,
            federation: "prod".into(),
            ..Default::default()
        };
        let all = nodes
            .iter()
            .map(|n| (n, SERVICE))
            .chain(backups.iter().map(|n| (n, BACKUP)));
        for (i, (id, service)) in all.enumerate() {
            let node = Node {
                id: (*id).to_owned(),
                address: format!("127.0.0.1:{}", 1 + i),
                region: "eu-west".into(),
                zone: "eu-west-a".into(),
                services: vec![service.into()],
                ..Default::default()
            };
            data.nodes.insert((*id).to_owned(), node);
        }
        for (name, chain) in [(SERVICE, vec![BACKUP.to_owned()]), (BACKUP, Vec::new())] {
            let policy = ServicePolicy {
                name: name.into(),
                retry: RetryPolicy {
                    max_attempts,
                    ..Default::default()
                },
                fallback_services: chain,
                ..Default::default()
            };
            data.services.insert(name.into(), policy);
        }
        ProxyTable::build(
            data,
            &ProxyIdentity::default(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        )
    }

    /// Fallback services out of one table, any node.
    struct TableChain<'a>(&'a ProxyTable);

    impl<'a> FallbackChain<'a> for TableChain<'a> {
        fn link(&'a self, service: &str) -> Option<(&'a ServiceRoute, Candidates<'a>)> {
            let route = self.0.service(service)?;
            Some((route, everywhere(route)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_without_a_usable_node_falls_back_to_the_next_of_its_chain() {
        let table = chained_table(&["a"], &["backup-1"], 2);
        let route = route(&table);
        for _ in 0..crate::endpoint::BreakerSettings::default().threshold {
            route.all.endpoints()[0].breaker.record_failure();
        }
        let chain = TableChain(&table);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let mut script = Scripted::new(&[
            ("a", Step::Answer(Duration::ZERO)),
            ("backup-1", Step::Answer(Duration::ZERO)),
        ]);
        let delivered = driver
            .run_with_fallbacks(everywhere(route), &mut script, Some(&chain))
            .await
            .unwrap();
        assert_eq!(delivered.answer, "backup-1");
        assert_eq!(delivered.route.name, BACKUP);
        assert_eq!(delivered.fallback_depth, 1);
        assert_eq!(delivered.attempts, 1, "nothing was sent to the primary");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_failing_retryably_after_its_attempts_falls_back_and_one_that_cannot_does_not() {
        let table = chained_table(&["a", "b"], &["backup-1"], 2);
        let route = route(&table);
        let chain = TableChain(&table);
        let driver = RetryDriver {
            route,
            deadline: None,
        };
        let mut script = Scripted::new(&[
            ("a", Step::Refuse),
            ("b", Step::Refuse),
            ("backup-1", Step::Answer(Duration::ZERO)),
        ]);
        let delivered = driver
            .run_with_fallbacks(everywhere(route), &mut script, Some(&chain))
            .await
            .unwrap();
        assert_eq!(delivered.answer, "backup-1");
        assert_eq!(
            delivered.attempts, 3,
            "two on the primary, then the fallback"
        );
        assert_eq!(delivered.fallback_depth, 1);

        // A node that answered a call that cannot be replayed ends it: no fallback.
        let mut script = Scripted::new(&[
            ("a", Step::Unavailable { retry_safe: false }),
            ("b", Step::Unavailable { retry_safe: false }),
            ("backup-1", Step::Answer(Duration::ZERO)),
        ]);
        let delivered = driver
            .run_with_fallbacks(everywhere(route), &mut script, Some(&chain))
            .await
            .unwrap();
        assert_ne!(delivered.answer, "backup-1");
        assert_eq!(delivered.fallback_depth, 0);
        assert_eq!(script.seen.len(), 1);

        // Without a chain the attempts end on the primary.
        let mut script = Scripted::new(&[("a", Step::Refuse), ("b", Step::Refuse)]);
        driver
            .run(everywhere(route), &mut script)
            .await
            .expect_err("no fallback without a chain");
    }
}
