//! The one error type of gm.

use std::path::PathBuf;

/// Everything a gm caller can get wrong, and what went wrong underneath.
#[derive(Debug, thiserror::Error)]
pub enum GmError {
    /// A tensor had the wrong shape.
    #[error("{context}: expected shape {expected}, got {actual:?}")]
    Shape {
        context: String,
        expected: String,
        actual: Vec<i64>,
    },

    /// A configuration value is out of range or inconsistent.
    #[error("invalid config value `{key}`: {message}")]
    Config { key: String, message: String },

    /// A TOML file could not be parsed (unknown keys land here and name the key).
    #[error("cannot parse config {path}: {message}")]
    ConfigParse { path: String, message: String },

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A data file is malformed, truncated or corrupt.
    #[error("bad data in {path}: {message}")]
    Data { path: String, message: String },

    /// A checkpoint is missing a tensor, has a wrong one, or was written by another model.
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: String, message: String },

    /// A loss or statistic became NaN or infinite.
    #[error("non-finite {what} at step {step}: {value}")]
    NonFinite { what: String, step: u64, value: f64 },

    /// Training produced a NaN or an infinity; nothing non-finite was saved.
    #[error("training diverged: {what} became NaN or infinite between steps {from_step} and {to_step}; last good checkpoint: {last_checkpoint}")]
    Diverged {
        what: String,
        from_step: u64,
        to_step: u64,
        last_checkpoint: String,
    },

    /// A value is outside the support of a distribution or a bijector's domain.
    #[error("{0}")]
    Domain(String),

    /// The operation is not defined for this object (e.g. the entropy of a mixture).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// An error raised inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with [`GmError`].
pub type Result<T, E = GmError> = std::result::Result<T, E>;

impl GmError {
    /// A shape error with context.
    pub fn shape(context: impl Into<String>, expected: impl Into<String>, actual: &[i64]) -> Self {
        GmError::Shape {
            context: context.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }

    /// A config error naming the key.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        GmError::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// An I/O error with the path that failed.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GmError::Io {
            path: path.into(),
            source,
        }
    }

    /// A data error with the path that failed.
    pub fn data(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Self {
        GmError::Data {
            path: path.as_ref().display().to_string(),
            message: message.into(),
        }
    }
}
