//! The demand each proxy last reported per rate-limited (service, tier), and the shares
//! that follow from it for one proxy's `ReportLoad` answer.
//!
//! Only tiers of the federation's current policies are kept, so what a proxy can make
//! this replica hold is bounded by the policies (services × tiers × proxies). A proxy's
//! demand is smoothed over its last reports (an exponentially weighted mean, half from
//! the newest) and is forgotten once older than [`STALE_AFTER_INTERVALS`] report
//! intervals: a proxy that stopped reporting falls back to an equal share.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_shared::domain::ServicePolicy;
use tokio::time::Instant;

use super::apportion;
use crate::discovery::proxies::ProxyRegistry;

/// Report intervals after which a proxy's demand no longer counts.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// Weight of the newest report in a proxy's smoothed demand.
const NEWEST_WEIGHT: f64 = 0.5;
/// How long the federation's proxy list is reused before it is read again.
const PROXY_LIST_TTL: Duration = Duration::from_secs(2);

/// (federation, service, tier).
type TierKey = (String, String, String);

/// Proxy ids per federation, as the registry listed them, and when.
type ProxyListing = (Instant, HashMap<String, BTreeSet<String>>);

#[derive(Debug, Clone, Copy)]
struct Demand {
    calls_per_second: f64,
    at: Instant,
}

/// This replica's view of every proxy's demand, shared by its `ReportLoad` streams.
pub struct RateShareBook {
    demand: Mutex<HashMap<TierKey, BTreeMap<String, Demand>>>,
    registry: Arc<ProxyRegistry>,
    listed: tokio::sync::Mutex<Option<ProxyListing>>,
}

impl RateShareBook {
    pub fn new(registry: Arc<ProxyRegistry>) -> Self {
        RateShareBook {
            demand: Mutex::new(HashMap::new()),
            registry,
            listed: tokio::sync::Mutex::new(None),
        }
    }

    /// Takes in one proxy's report of `interval`. Entries naming no rate-limited tier of
    /// the federation's `policies` are ignored.
    pub fn record(
        &self,
        federation: &str,
        proxy: &str,
        interval: Duration,
        demand: &[pb::TierDemand],
        policies: &[&ServicePolicy],
        now: Instant,
    ) {
        let seconds = interval.as_secs_f64().max(0.001);
        let mut book = self.lock();
        for entry in demand {
            let known = policies.iter().any(|p| {
                p.name == entry.service && p.rate_limit.tiers.iter().any(|t| t.name == entry.tier)
            });
            if !known {
                continue;
            }
            let rate = entry.admitted.saturating_add(entry.refused) as f64 / seconds;
            let key = (
                federation.to_owned(),
                entry.service.clone(),
                entry.tier.clone(),
            );
            let proxies = book.entry(key).or_default();
            let smoothed = match proxies.get(proxy) {
                Some(before) => {
                    NEWEST_WEIGHT * rate + (1.0 - NEWEST_WEIGHT) * before.calls_per_second
                }
                None => rate,
            };
            proxies.insert(
                proxy.to_owned(),
                Demand {
                    calls_per_second: smoothed,
                    at: now,
                },
            );
        }
    }

    /// `proxy`'s share of every rate-limited tier of `policies` (its federation's), and
    /// how many proxies they were apportioned over. A tier's proxies are those the
    /// registry lists for the federation, `proxy` itself, and any with a fresh report.
    pub async fn shares(
        &self,
        federation: &str,
        proxy: &str,
        policies: &[&ServicePolicy],
        stale_after: Duration,
        now: Instant,
    ) -> (Vec<pb::RateShare>, u32) {
        let mut members = self.listed_proxies(federation).await;
        members.insert(proxy.to_owned());
        let mut book = self.lock();
        // Forget what went stale (and tiers nobody reports any more).
        book.retain(|_, proxies| {
            proxies.retain(|_, d| now.saturating_duration_since(d.at) <= stale_after);
            !proxies.is_empty()
        });
        let mut all_members = members.clone();
        for ((fed, _, _), proxies) in book.iter() {
            if fed == federation {
                all_members.extend(proxies.keys().cloned());
            }
        }
        let order: Vec<&String> = all_members.iter().collect();
        let mut shares = Vec::new();
        for policy in policies {
            for tier in &policy.rate_limit.tiers {
                let key = (
                    federation.to_owned(),
                    policy.name.clone(),
                    tier.name.clone(),
                );
                let reported = book.get(&key);
                let demands: Vec<Option<f64>> = order
                    .iter()
                    .map(|p| reported.and_then(|r| r.get(*p)).map(|d| d.calls_per_second))
                    .collect();
                let apportioned = apportion(&demands);
                let mine = order
                    .iter()
                    .position(|p| *p == proxy)
                    .map(|i| apportioned[i])
                    .unwrap_or(0.0);
                shares.push(pb::RateShare {
                    service: policy.name.clone(),
                    tier: tier.name.clone(),
                    share: mine,
                });
            }
        }
        let count = u32::try_from(order.len()).unwrap_or(u32::MAX);
        (shares, count)
    }

    /// The proxies the registry lists for `federation` (every replica's), read at most
    /// once per [`PROXY_LIST_TTL`].
    async fn listed_proxies(&self, federation: &str) -> BTreeSet<String> {
        let mut listed = self.listed.lock().await;
        let fresh = listed
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < PROXY_LIST_TTL);
        if !fresh {
            let mut by_federation: HashMap<String, BTreeSet<String>> = HashMap::new();
            for record in self.registry.list().await {
                by_federation
                    .entry(record.federation)
                    .or_default()
                    .insert(record.proxy_id);
            }
            *listed = Some((Instant::now(), by_federation));
        }
        listed
            .as_ref()
            .and_then(|(_, by)| by.get(federation).cloned())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TierKey, BTreeMap<String, Demand>>> {
        self.demand.lock().expect("rate demand lock poisoned")
    }
}
