//! Reading a TOML file into a typed configuration, keeping the path of a bad key.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::ConfigError;

/// Reads `path` into `T`. Unknown keys are refused (the structs deny them), so a typo is an
/// error rather than a silently ignored setting. Validation is the caller's next step,
/// after environment and flag overrides.
pub fn load_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

pub(crate) fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    let parse_error = |field: String, message: String| ConfigError::Parse {
        path: path.to_owned(),
        field,
        message,
    };
    let deserializer = toml::Deserializer::parse(text)
        .map_err(|e| parse_error(".".into(), e.message().to_owned()))?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        parse_error(field, e.into_inner().message().to_owned())
    })
}
