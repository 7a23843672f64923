//! A whole topology read at one store revision (what `meridianctl topology` shows).

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{ConversionError, Federation, Node, Region, ServicePolicy};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Topology {
    pub revision: u64,
    pub federations: Vec<Federation>,
    pub regions: Vec<Region>,
    pub nodes: Vec<Node>,
    pub services: Vec<ServicePolicy>,
}

impl From<Topology> for pb::Topology {
    fn from(t: Topology) -> Self {
        pb::Topology {
            revision: t.revision,
            federations: t.federations.into_iter().map(Into::into).collect(),
            regions: t.regions.into_iter().map(Into::into).collect(),
            nodes: t.nodes.into_iter().map(Into::into).collect(),
            services: t.services.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::Topology> for Topology {
    type Error = ConversionError;

    fn try_from(t: pb::Topology) -> Result<Self, Self::Error> {
        Ok(Topology {
            revision: t.revision,
            federations: t.federations.into_iter().map(Into::into).collect(),
            regions: t
                .regions
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            nodes: t
                .nodes
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
            services: t
                .services
                .into_iter()
                .map(TryInto::try_into)
                .collect::<Result<_, _>>()?,
        })
    }
}
