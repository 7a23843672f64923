//! `meridianctl status`: is the control plane up and serving?

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{CtlArgs, CtlError, Output};

pub(super) async fn run(channel: Channel, args: &CtlArgs) -> Result<(), CtlError> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let status = response
        .status()
        .as_str_name()
        .trim_start_matches("SERVICE_")
        .to_owned();
    match args.output {
        Output::Table => println!("control plane {}: {status}", args.control_plane),
        Output::Json => println!(
            "{}",
            serde_json::json!({ "control_plane": args.control_plane, "status": status })
        ),
    }
    Ok(())
}
