//! The dynamic configuration RPCs: read it, validate a candidate, and replace it, keeping
//! the old configuration whenever the new one is invalid or the store moved on.

use std::sync::Arc;

use meridian_proto::v1 as pb;
use meridian_shared::domain::EventKind;
use tonic::Status;

use crate::auth::Caller;
use crate::ctl::config_keys;
use crate::dynconfig::DynamicConfig;
use crate::errors::{decode_status, store_status};
use crate::events::EventLog;
use crate::keys::{self, Keys};
use crate::store::{Compare, Store, Txn};

pub async fn get(store: &Arc<dyn Store>, keys: &Keys) -> Result<pb::ConfigResponse, Status> {
    let (config, revision) = read(store, keys).await?;
    Ok(pb::ConfigResponse {
        config: Some(config.into()),
        revision: revision as u64,
        applied: true,
    })
}

pub fn validate(request: pb::ValidateConfigRequest) -> pb::ValidateConfigResponse {
    let config = DynamicConfig::from(request.config.unwrap_or_default());
    let errors: Vec<pb::FieldError> = config
        .problems()
        .into_iter()
        .map(|e| pb::FieldError {
            field: e.field.to_owned(),
            message: e.message,
        })
        .collect();
    pb::ValidateConfigResponse {
        valid: errors.is_empty(),
        errors,
    }
}

pub async fn update(
    store: &Arc<dyn Store>,
    keys: &Keys,
    events: &EventLog,
    request: pb::UpdateConfigRequest,
    caller: &Caller,
) -> Result<pb::ConfigResponse, Status> {
    let config = DynamicConfig::from(
        request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?,
    );
    let problems = config.problems();
    if !problems.is_empty() {
        let listed: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        return Err(Status::invalid_argument(format!(
            "invalid configuration, nothing changed: {}",
            listed.join("; ")
        )));
    }
    let (current, current_revision) = read(store, keys).await?;
    if request.expected_revision != 0 && request.expected_revision != current_revision as u64 {
        return Err(Status::failed_precondition(format!(
            "the configuration changed since revision {} (it is at {current_revision} now); read it again",
            request.expected_revision
        )));
    }
    if request.dry_run {
        return Ok(pb::ConfigResponse {
            config: Some(config.into()),
            revision: current_revision as u64,
            applied: false,
        });
    }
    let txn = Txn::new()
        .when(Compare::ModRevision {
            key: keys.config(),
            revision: current_revision,
        })
        .put(keys.config(), keys::encode(&config));
    let result = store.txn(txn).await.map_err(store_status)?;
    if !result.succeeded {
        return Err(Status::aborted(
            "the configuration changed while it was being updated; retry",
        ));
    }
    events
        .record(
            EventKind::ConfigUpdated,
            "config".into(),
            describe_change(current, &config),
            caller.actor(),
        )
        .await;
    Ok(pb::ConfigResponse {
        config: Some(config.into()),
        revision: result.revision as u64,
        applied: true,
    })
}

/// What an update changed, key by key, for the event history.
fn describe_change(old: DynamicConfig, new: &DynamicConfig) -> String {
    let changed = config_keys::changes(&old.into(), &new.clone().into());
    if changed.is_empty() {
        "dynamic configuration written again, unchanged".into()
    } else {
        format!("dynamic configuration updated: {}", changed.join(", "))
    }
}

async fn read(store: &Arc<dyn Store>, keys: &Keys) -> Result<(DynamicConfig, i64), Status> {
    match store.get(&keys.config()).await.map_err(store_status)? {
        Some(kv) => Ok((
            keys::decode(&kv.key, &kv.value).map_err(decode_status)?,
            kv.mod_revision,
        )),
        None => Ok((DynamicConfig::default(), 0)),
    }
}
