//! Atomic checkpoints of named tensors plus JSON metadata, in one safetensors file.
//!
//! The file is written to `<path>.tmp`, flushed to disk, then renamed over `<path>`: a crash
//! mid-save leaves the previous checkpoint intact. The metadata travels inside the same file as
//! a byte tensor named [`META_KEY`], so weights and metadata can never disagree.

use crate::{GmError, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The name of the tensor that holds the JSON metadata.
pub const META_KEY: &str = "__gm_meta__";

/// Writes `tensors` and `meta` to `path` atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    meta: &serde_json::Value,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| GmError::io(parent, e))?;
    }
    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(tensors.len() + 1);
    for (name, t) in tensors {
        if name == META_KEY {
            return Err(GmError::Checkpoint {
                path: path.display().to_string(),
                message: format!("{META_KEY} is reserved"),
            });
        }
        let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
        if t.is_floating_point()
            && t.numel() > 0
            && t.f_isfinite()?.f_all()?.f_int64_value(&[])? == 0
        {
            return Err(GmError::Checkpoint {
                path: path.display().to_string(),
                message: format!("refusing to save: tensor {name:?} holds NaN or infinite values"),
            });
        }
        named.push((name.clone(), t));
    }
    // The checksum covers every tensor's name, dtype, shape and bytes: a flipped bit in a
    // weight is caught when loading.
    let mut meta = meta.clone();
    if let serde_json::Value::Object(map) = &mut meta {
        map.insert("checksum".into(), checksum(&named)?.into());
    }
    let meta_bytes = serde_json::to_vec(&meta).map_err(|e| GmError::Checkpoint {
        path: path.display().to_string(),
        message: format!("metadata is not serialisable: {e}"),
    })?;
    named.push((META_KEY.to_string(), Tensor::f_from_slice(&meta_bytes)?));
    let tmp = tmp_path(path);
    let written = write_and_sync(&named, &tmp);
    if written.is_err() {
        // A failed save leaves nothing behind; the previous checkpoint is untouched.
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    std::fs::rename(&tmp, path).map_err(|e| GmError::io(path, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

fn write_and_sync(named: &[(String, Tensor)], tmp: &Path) -> Result<()> {
    Tensor::write_safetensors(named, tmp)?;
    // Flush the data before the rename makes it visible under the real name.
    let file = std::fs::File::open(tmp).map_err(|e| GmError::io(tmp, e))?;
    file.sync_all().map_err(|e| GmError::io(tmp, e))
}

/// SHA-256 (hex) over the names, dtypes, shapes and bytes of `tensors` (CPU, contiguous), in
/// name order.
pub fn checksum(tensors: &[(String, Tensor)]) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = Sha256::new();
    for (name, t) in sorted {
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
        let flat = t
            .f_to_device(Device::Cpu)?
            .f_contiguous()?
            .f_reshape([-1])?;
        if flat.numel() > 0 {
            let bytes = if flat.kind() == Kind::Bool {
                flat.f_to_kind(Kind::Uint8)?
            } else {
                flat.f_view_dtype(Kind::Uint8)?
            };
            hasher.update(Vec::<u8>::try_from(&bytes)?);
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The temporary file a save of `path` writes before renaming it.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads a file written by [`save_tensors`].
pub fn load_tensors(path: &Path) -> Result<(StateDict, serde_json::Value)> {
    if !path.exists() {
        return Err(GmError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint"),
        ));
    }
    let tensors = Tensor::read_safetensors(path).map_err(|e| GmError::Checkpoint {
        path: path.display().to_string(),
        message: format!("not a readable safetensors file: {e}"),
    })?;
    let mut map: HashMap<String, Tensor> = tensors.into_iter().collect();
    let meta = match map.remove(META_KEY) {
        Some(bytes) => {
            let bytes: Vec<u8> = Vec::<u8>::try_from(&bytes.f_to_kind(Kind::Uint8)?)?;
            serde_json::from_slice(&bytes).map_err(|e| GmError::Checkpoint {
                path: path.display().to_string(),
                message: format!("bad metadata: {e}"),
            })?
        }
        None => serde_json::Value::Null,
    };
    let bad = |message: String| GmError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    if let Some(expected) = meta.get("checksum").and_then(|c| c.as_str()) {
        let named: Vec<(String, Tensor)> = map
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect();
        let actual = checksum(&named)?;
        if actual != expected {
            return Err(bad(format!(
                "the tensor data do not match the checksum written with them (the file is corrupt): expected {expected}, found {actual}"
            )));
        }
    }
    let mut names: Vec<&String> = map.keys().collect();
    names.sort();
    for name in names {
        let t = &map[name];
        if t.is_floating_point() && t.numel() > 0 {
            let finite = t.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
            if !finite {
                return Err(bad(format!(
                    "tensor {name:?} holds NaN or infinite values; a checkpoint is never written from non-finite state, so the file is damaged"
                )));
            }
        }
    }
    Ok((
        StateDict {
            tensors: map,
            path: path.display().to_string(),
        },
        meta,
    ))
}

/// Named tensors being restored; each is taken once, with its shape checked.
#[derive(Debug, Default)]
pub struct StateDict {
    tensors: HashMap<String, Tensor>,
    path: String,
}

impl StateDict {
    pub fn from_tensors(tensors: Vec<(String, Tensor)>) -> Self {
        StateDict {
            tensors: tensors.into_iter().collect(),
            path: "<memory>".into(),
        }
    }

    /// Removes and returns `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| GmError::Checkpoint {
                path: self.path.clone(),
                message: format!("missing tensor {name:?}"),
            })?;
        if t.size() != shape {
            return Err(GmError::Checkpoint {
                path: self.path.clone(),
                message: format!(
                    "tensor {name:?} has shape {:?}, expected {shape:?}",
                    t.size()
                ),
            });
        }
        Ok(t)
    }

    /// Removes and returns `name` whatever its shape.
    pub fn take_any(&mut self, name: &str) -> Result<Tensor> {
        self.tensors
            .remove(name)
            .ok_or_else(|| GmError::Checkpoint {
                path: self.path.clone(),
                message: format!("missing tensor {name:?}"),
            })
    }

    /// The names of the tensors not yet taken that start with `prefix`, sorted.
    pub fn names_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .tensors
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        names.sort();
        names
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Fails if tensors remain that no part of the model claimed (a checkpoint of another model).
    pub fn finish(self, path: &Path) -> Result<()> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut left: Vec<&String> = self.tensors.keys().collect();
        left.sort();
        Err(GmError::Checkpoint {
            path: path.display().to_string(),
            message: format!("tensors not used by this model: {left:?}"),
        })
    }
}
