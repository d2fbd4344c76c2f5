//! Digests of the workspace's source code, compiled into `gm` so that a benchmark result is
//! keyed by the code that produced it: a change to a family's crate (or to gm-core) retrains
//! that family's runs, a change to gm-bench re-evaluates them, and nothing stale is reported as
//! current. One digest per crate, over its `src/` files and manifest, in path order.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The crates whose code decides a run's training or evaluation.
const CRATES: [&str; 7] = [
    "gm-core",
    "gm-flow",
    "gm-vae",
    "gm-gan",
    "gm-diffusion",
    "gm-autoregressive",
    "gm-bench",
];

/// The gm-bench modules whose code decides a result's numbers.
const EVALUATION_MODULES: [&str; 6] = [
    "runner.rs",
    "metrics.rs",
    "image_metrics.rs",
    "classifier.rs",
    "images.rs",
    "memory.rs",
];

/// The locked versions of `tch` and `torch-sys` (`name version` lines), or nothing outside the
/// workspace.
fn libtorch_binding_versions(lock: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(lock) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut found = String::new();
    for (i, line) in lines.iter().enumerate() {
        if *line == "name = \"tch\"" || *line == "name = \"torch-sys\"" {
            found.push_str(line);
            found.push(' ');
            found.push_str(lines.get(i + 1).unwrap_or(&""));
            found.push('\n');
        }
    }
    found
}

fn files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let crates_dir = manifest
        .parent()
        .expect("crates/ holds gm-bench")
        .to_path_buf();
    for name in CRATES {
        let root = crates_dir.join(name);
        let mut files = vec![root.join("Cargo.toml")];
        files_under(&root.join("src"), &mut files);
        // gm-bench's digest is its evaluation protocol: the modules that compute a result, not
        // the report's layout or the command line.
        if name == "gm-bench" {
            files.retain(|f| {
                EVALUATION_MODULES
                    .iter()
                    .any(|m| f.file_name().is_some_and(|n| n == *m))
            });
        }
        // Training also depends on the libtorch binding's version.
        let mut lock_versions = String::new();
        if name == "gm-core" {
            lock_versions = libtorch_binding_versions(&crates_dir.join("..").join("Cargo.lock"));
        }
        let digest = digest_of(&root, files, &lock_versions);
        let var = format!("GM_SOURCE_{}", name.to_uppercase().replace('-', "_"));
        println!("cargo:rustc-env={var}={digest}");
        println!("cargo:rerun-if-changed={}", root.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            root.join("Cargo.toml").display()
        );
    }
    // Family `vq_vae_prior` is trained by a gm-bench module: its runs are keyed by that file too.
    let bench = crates_dir.join("gm-bench");
    let vq_prior = digest_of(&bench, vec![bench.join("src").join("vq_prior.rs")], "");
    println!("cargo:rustc-env=GM_SOURCE_GM_BENCH_VQ_PRIOR={vq_prior}");
    println!(
        "cargo:rerun-if-changed={}",
        crates_dir.join("..").join("Cargo.lock").display()
    );
}

/// The first 6 bytes (hex) of the SHA-256 of `extra` and each file's path under `root`, length
/// and bytes, in path order; "unknown" when none can be read.
fn digest_of(root: &Path, mut files: Vec<PathBuf>, extra: &str) -> String {
    files.sort();
    let mut hasher = Sha256::new();
    hasher.update(extra.as_bytes());
    let mut any = false;
    for file in &files {
        if let Ok(bytes) = std::fs::read(file) {
            any = true;
            let relative = file.strip_prefix(root).unwrap_or(file);
            hasher.update(relative.to_string_lossy().as_bytes());
            hasher.update([0u8]);
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    // Outside the workspace (a published crate) the sources are not there to hash.
    if any {
        hasher.finalize()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    } else {
        "unknown".to_string()
    }
}
