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
        parse_toml(text, "<string>")
    }

    /// Reads, parses and validates a TOML file.
    fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| GmError::io(path, e))?;
        parse_toml(&text, &path.display().to_string())
    }

    /// The config as TOML text.
    fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| GmError::config("<config>", e.to_string()))
    }
}

/// Parses a config from TOML text, refuses keys it would ignore, and validates it.
fn parse_toml<C: Config>(text: &str, origin: &str) -> Result<C> {
    let value: toml::Value = toml::from_str(text).map_err(|e| GmError::ConfigParse {
        path: origin.into(),
        message: e.to_string(),
    })?;
    from_toml_value(value, origin)
}

/// Deserializes a config from a TOML value, refuses keys it would ignore (see
/// [`check_no_ignored_keys`]), and validates it.
pub fn from_toml_value<C: Config>(value: toml::Value, origin: &str) -> Result<C> {
    let config: C =
        value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| GmError::ConfigParse {
                path: origin.into(),
                message: e.to_string(),
            })?;
    check_no_ignored_keys(&value, &config)?;
    config.validate()?;
    Ok(config)
}

/// Refuses keys of `input` that `config` does not hold. serde's `deny_unknown_fields` misses
/// keys beside a variant without fields (`kind = "bernoulli"` with `std = 1.0`); a config
/// serializes every field it has, so any key of the input missing from its serialized form was
/// ignored. The error names the key with its section.
pub fn check_no_ignored_keys<C: Serialize>(input: &toml::Value, config: &C) -> Result<()> {
    let normal =
        toml::Value::try_from(config).map_err(|e| GmError::config("<config>", e.to_string()))?;
    let mut ignored = Vec::new();
    collect_ignored(input, &normal, "", &mut ignored);
    match ignored.first() {
        None => Ok(()),
        Some(key) => Err(GmError::config(
            key.clone(),
            "unknown key: this setting takes no such value (it would be ignored)",
        )),
    }
}

fn collect_ignored(input: &toml::Value, normal: &toml::Value, prefix: &str, out: &mut Vec<String>) {
    match (input, normal) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            for (key, value) in a {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                match b.get(key) {
                    Some(inner) => collect_ignored(value, inner, &path, out),
                    None => out.push(path),
                }
            }
        }
        (toml::Value::Array(a), toml::Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                collect_ignored(x, y, &format!("{prefix}[{i}]"), out);
            }
        }
        _ => {}
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
