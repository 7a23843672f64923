//! `meridianctl regions list|set|delete`, and how a region prints (also used by
//! `meridianctl topology`).

use clap::Subcommand;
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, list_cell};
use super::{CtlError, Output, labels};

#[derive(Debug, Subcommand)]
pub enum RegionsCommand {
    /// List regions, of every federation or of one.
    List {
        /// Only regions of this federation.
        #[arg(long)]
        federation: Option<String>,
    },
    /// Create a region, or replace it whole: labels not given are removed. Removing a
    /// zone that a node still uses is refused.
    Set {
        /// The region's name, e.g. "eu-west".
        name: String,
        /// The federation it belongs to; it must exist.
        #[arg(long)]
        federation: String,
        /// Latitude in degrees, -90 to 90 (used to order regions by distance).
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in degrees, -180 to 180.
        #[arg(long, allow_negative_numbers = true)]
        lon: f64,
        /// The region's zones (failure domains), comma-separated, e.g. eu-west-a,eu-west-b.
        #[arg(long, value_delimiter = ',', required = true, value_name = "ZONE,...")]
        zones: Vec<String>,
        /// A label as KEY=VALUE, e.g. --label provider=aws; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = labels::parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Delete a region; refused while nodes are in it.
    Delete {
        /// The region's name.
        name: String,
    },
}

pub(super) async fn run(
    mut admin: Admin,
    command: RegionsCommand,
    format: Output,
) -> Result<(), CtlError> {
    match command {
        RegionsCommand::List { federation } => {
            let regions = admin
                .list_regions(pb::ListRegionsRequest {
                    federation: federation.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .regions;
            print_list(&regions, format)
        }
        RegionsCommand::Set {
            name,
            federation,
            lat,
            lon,
            zones,
            labels,
        } => {
            let region = pb::Region {
                name,
                federation,
                location: Some(pb::GeoPoint {
                    latitude: lat,
                    longitude: lon,
                }),
                zones,
                labels: labels::to_map(&labels),
            };
            let region = admin
                .upsert_region(pb::UpsertRegionRequest {
                    region: Some(region),
                })
                .await?
                .into_inner();
            print_list(std::slice::from_ref(&region), format)
        }
        RegionsCommand::Delete { name } => {
            admin
                .delete_region(pb::DeleteRegionRequest { name: name.clone() })
                .await?;
            super::print_deleted("region", &name, format)
        }
    }
}

fn print_list(regions: &[pb::Region], format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table => output::emit(&table(regions).render()),
        Output::Json => output::emit_json(&Value::Array(regions.iter().map(json).collect())),
    }
}

pub(super) fn table(regions: &[pb::Region]) -> Table {
    let mut table = Table::new(&["REGION", "FEDERATION", "LAT,LON", "ZONES", "LABELS"]);
    for r in regions {
        let location = r.location.map_or_else(
            || "-".to_owned(),
            |l| format!("{},{}", l.latitude, l.longitude),
        );
        table.push(vec![
            r.name.clone(),
            r.federation.clone(),
            location,
            list_cell(&r.zones),
            labels::cell(&r.labels),
        ]);
    }
    table
}

pub(crate) fn json(region: &pb::Region) -> Value {
    let location = region.location.map_or(
        Value::Null,
        |l| json!({ "latitude": l.latitude, "longitude": l.longitude }),
    );
    json!({
        "name": region.name,
        "federation": region.federation,
        "location": location,
        "zones": region.zones,
        "labels": labels::json(&region.labels),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::tests::parse;
    use crate::ctl::{Command, Noun};

    #[test]
    fn set_accepts_negative_coordinates_and_a_zone_list() {
        let args = parse(
            "regions set sa-east --federation prod --lat -23.5 --lon -46.6 \
             --zones sa-east-a,sa-east-b",
        )
        .expect("parses");
        let Command::Regions(Noun {
            verb: Some(RegionsCommand::Set {
                lat, lon, zones, ..
            }),
        }) = args.command
        else {
            panic!("parsed as {:?}", args.command);
        };
        assert_eq!((lat, lon), (-23.5, -46.6));
        assert_eq!(zones, ["sa-east-a", "sa-east-b"]);
    }
}
