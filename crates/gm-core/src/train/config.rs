//! Configs as TOML through serde: unknown keys are rejected (every config struct says
//! `deny_unknown_fields`) and values are checked by [`Config::validate`].

use crate::{GmError, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

/// A serde config with defaults and a validity check.
pub trait Config: Serialize + DeserializeOwned + Default {
    /// Checks value ranges and consistency; the error names the offending key.
    fn validate(&self) -> Result<()>;

    /// Parses TOML text and validates it.
    fn from_toml_str(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| GmError::ConfigParse {
            path: "<string>".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GmError::io(path, e))?;
        let config: Self = toml::from_str(&text).map_err(|e| GmError::ConfigParse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The config as TOML text.
    fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| GmError::config("<config>", e.to_string()))
    }
}

/// Checks `lo <= value <= hi` (and that it is a number; infinite bounds admit infinities only
/// where they are given), naming the key.
pub fn check_range(key: &str, value: f64, lo: f64, hi: f64) -> Result<()> {
    if value.is_nan() || value < lo || value > hi {
        return Err(GmError::config(
            key,
            format!("{value} is outside [{lo}, {hi}]"),
        ));
    }
    Ok(())
}

/// Checks `0 < value < ∞`, naming the key.
pub fn check_positive(key: &str, value: f64) -> Result<()> {
    if !value.is_finite() || value <= 0.0 {
        return Err(GmError::config(
            key,
            format!("must be a positive finite number, got {value}"),
        ));
    }
    Ok(())
}

/// Prefixes the key of a config error with `section.`; other errors pass unchanged. Nested
/// configs validate with their own key names and their parent adds where they sit.
pub fn with_section(section: &str, error: GmError) -> GmError {
    match error {
        GmError::Config { key, message } => GmError::Config {
            key: format!("{section}.{key}"),
            message,
        },
        other => other,
    }
}

/// Runs a sub-config's validation and prefixes the key of its error with `section.`.
pub fn in_section(section: &str, result: Result<()>) -> Result<()> {
    result.map_err(|e| with_section(section, e))
}
