//! Where the proxy is, and how far every region of its federation is from it, computed
//! once per table version from the regions' coordinates (great-circle distance).

use std::collections::HashMap;

use meridian_shared::domain::{GeoPoint, Region};

/// Mean Earth radius, km.
const EARTH_RADIUS_KM: f64 = 6371.0;

#[derive(Debug, Clone, Default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    /// Distance in km from the proxy's region to each region; the proxy's own is 0.
    pub distance_km: HashMap<String, f64>,
}

impl Locality {
    /// The locality of a proxy in `region`/`zone` among `regions`. Regions missing from
    /// the table (or the proxy's own region missing) get infinite distance, so they sort
    /// last.
    pub fn new(region: &str, zone: &str, regions: &[Region]) -> Self {
        let home = regions
            .iter()
            .find(|r| r.name == region)
            .map(|r| r.location);
        let distance_km = regions
            .iter()
            .map(|r| {
                let d = match home {
                    Some(_) if r.name == region => 0.0,
                    Some(home) => great_circle_km(home, r.location),
                    None => f64::INFINITY,
                };
                (r.name.clone(), d)
            })
            .collect();
        Locality {
            region: region.to_owned(),
            zone: zone.to_owned(),
            distance_km,
        }
    }

    /// Distance to `region`; infinite when unknown.
    pub fn distance(&self, region: &str) -> f64 {
        if region == self.region {
            return 0.0;
        }
        self.distance_km
            .get(region)
            .copied()
            .unwrap_or(f64::INFINITY)
    }
}

/// Haversine distance between two points, km.
pub fn great_circle_km(a: GeoPoint, b: GeoPoint) -> f64 {
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dublin_to_washington_is_about_5400_km() {
        let dublin = GeoPoint {
            latitude: 53.35,
            longitude: -6.26,
        };
        let washington = GeoPoint {
            latitude: 38.9,
            longitude: -77.04,
        };
        let d = great_circle_km(dublin, washington);
        assert!((5350.0..5500.0).contains(&d), "{d}");
        assert_eq!(great_circle_km(dublin, dublin), 0.0);
    }
}
