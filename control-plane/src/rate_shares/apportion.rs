//! Dividing one tier's federation-wide rate among the proxies: by demand where it is
//! known, equally where it is not.
//!
//! With `n` proxies, each is worth an equal share `1/n`. A proxy without a fresh report
//! gets exactly that. The proxies that reported share the rest (`reported/n`) in
//! proportion to their demand (calls admitted + refused per second: a proxy whose calls
//! are refused still wants them), so a proxy taking 70 % of a tier's traffic gets 70 % of
//! its rate. No proxy goes below [`FLOOR_OF_EQUAL_SHARE`] of an equal share: a proxy
//! whose traffic is only starting would otherwise refuse everything until its next
//! report; the floor costs the busy proxies at most that fraction. When no reporting proxy
//! has demand, they split their part equally.

/// The least share of a proxy, as a fraction of an equal share.
pub const FLOOR_OF_EQUAL_SHARE: f64 = 0.1;

/// The share (0 to 1) of each proxy, in the order of `demands` (calls per second, `None`
/// for a proxy without a fresh report). The shares add up to 1 (an empty input gives an
/// empty output).
pub fn apportion(demands: &[Option<f64>]) -> Vec<f64> {
    let n = demands.len();
    if n == 0 {
        return Vec::new();
    }
    let equal = 1.0 / n as f64;
    let floor = equal * FLOOR_OF_EQUAL_SHARE;
    let demand = |d: &Option<f64>| d.filter(|d| d.is_finite() && *d > 0.0).unwrap_or(0.0);
    let reported: Vec<usize> = (0..n).filter(|&i| demands[i].is_some()).collect();
    let mut shares = vec![equal; n];
    let total: f64 = reported.iter().map(|&i| demand(&demands[i])).sum();
    if total <= 0.0 {
        return shares;
    }
    // Proxies held at the floor leave the proportional split; repeat until none more
    // falls below it (at most once per proxy).
    let mut pool = reported.len() as f64 * equal;
    let mut proportional = reported;
    loop {
        let total: f64 = proportional.iter().map(|&i| demand(&demands[i])).sum();
        let below: Vec<usize> = proportional
            .iter()
            .copied()
            .filter(|&i| total <= 0.0 || pool * demand(&demands[i]) / total < floor)
            .collect();
        if below.is_empty() || below.len() == proportional.len() {
            let count = proportional.len() as f64;
            for &i in &proportional {
                shares[i] = if total > 0.0 && below.is_empty() {
                    pool * demand(&demands[i]) / total
                } else {
                    pool / count
                };
            }
            return shares;
        }
        for &i in &below {
            shares[i] = floor;
            pool -= floor;
        }
        proportional.retain(|i| !below.contains(i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn assert_shares(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len(), "{actual:?}");
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() < 1e-9, "{actual:?} != {expected:?}");
        }
        let sum: f64 = actual.iter().sum();
        assert!((sum - 1.0).abs() < 1e-9, "shares add up to {sum}");
    }

    #[test]
    fn shares_follow_demand() {
        assert_shares(&apportion(&[Some(70.0), Some(30.0)]), &[0.7, 0.3]);
        assert_shares(
            &apportion(&[Some(50.0), Some(25.0), Some(25.0)]),
            &[0.5, 0.25, 0.25],
        );
        assert_shares(&apportion(&[Some(12.0)]), &[1.0]);
    }

    #[test]
    fn proxies_without_reports_get_an_equal_share() {
        assert_shares(&apportion(&[None, None]), &[0.5, 0.5]);
        assert_shares(&apportion(&[None, None, None, None]), &[0.25; 4]);
        // One of four is silent: it keeps 1/4, the three reporting share 3/4 by demand.
        assert_shares(
            &apportion(&[Some(60.0), Some(30.0), Some(10.0), None]),
            &[0.45, 0.225, 0.075, 0.25],
        );
    }

    #[test]
    fn reporting_proxies_without_demand_split_their_part_equally() {
        assert_shares(&apportion(&[Some(0.0), Some(0.0)]), &[0.5, 0.5]);
        assert_shares(&apportion(&[Some(0.0), None]), &[0.5, 0.5]);
    }

    #[test]
    fn an_idle_proxy_keeps_a_floor() {
        // 10 % of an equal share (0.05 of 2), the busy one gets the rest.
        assert_shares(&apportion(&[Some(100.0), Some(0.0)]), &[0.95, 0.05]);
        assert_shares(&apportion(&[Some(1_000.0), Some(1.0)]), &[0.95, 0.05]);
        // Above the floor, demand decides alone.
        assert_shares(&apportion(&[Some(90.0), Some(10.0)]), &[0.9, 0.1]);
    }

    #[test]
    fn nothing_to_apportion_among_no_proxies() {
        assert!(apportion(&[]).is_empty());
    }
}
