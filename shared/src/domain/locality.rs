//! Where things are: federations, and regions with their coordinates and zones.

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::conversion::required;
use super::{ConversionError, Labels};

/// A named set of regions serving one set of services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Federation {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: Labels,
    /// CIDRs node addresses must be in; empty: any but loopback, link-local and the like.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_networks: Vec<String>,
}

impl From<Federation> for pb::Federation {
    fn from(f: Federation) -> Self {
        pb::Federation {
            name: f.name,
            description: f.description,
            labels: f.labels.into_iter().collect(),
            allowed_networks: f.allowed_networks,
        }
    }
}

impl From<pb::Federation> for Federation {
    fn from(f: pb::Federation) -> Self {
        Federation {
            name: f.name,
            description: f.description,
            labels: f.labels.into_iter().collect(),
            allowed_networks: f.allowed_networks,
        }
    }
}

/// A point on Earth in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct GeoPoint {
    pub latitude: f64,
    pub longitude: f64,
}

impl From<GeoPoint> for pb::GeoPoint {
    fn from(p: GeoPoint) -> Self {
        pb::GeoPoint {
            latitude: p.latitude,
            longitude: p.longitude,
        }
    }
}

impl From<pb::GeoPoint> for GeoPoint {
    fn from(p: pb::GeoPoint) -> Self {
        GeoPoint {
            latitude: p.latitude,
            longitude: p.longitude,
        }
    }
}

/// A location holding zones (failure domains).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Region {
    pub name: String,
    pub federation: String,
    pub location: GeoPoint,
    pub zones: Vec<String>,
    #[serde(default)]
    pub labels: Labels,
}

impl From<Region> for pb::Region {
    fn from(r: Region) -> Self {
        pb::Region {
            name: r.name,
            federation: r.federation,
            location: Some(r.location.into()),
            zones: r.zones,
            labels: r.labels.into_iter().collect(),
        }
    }
}

impl TryFrom<pb::Region> for Region {
    type Error = ConversionError;

    fn try_from(r: pb::Region) -> Result<Self, Self::Error> {
        Ok(Region {
            location: required(r.location, "region.location")?.into(),
            name: r.name,
            federation: r.federation,
            zones: r.zones,
            labels: r.labels.into_iter().collect(),
        })
    }
}
