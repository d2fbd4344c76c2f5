//! Finding or installing libtorch.
//!
//! Order: the user's `LIBTORCH`; else a private virtual environment in
//! `$XDG_CACHE_HOME/gm/torch-<version>` (made once with `python3 -m venv` and
//! `pip install torch==<version>`, then reused). The PyPI wheel ships the full libtorch
//! (headers and shared libraries), so no separate download site is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The PyTorch release that `tch 0.26` is built against.
pub const TORCH_VERSION: &str = "2.13.0";

/// A usable libtorch installation.
pub struct Libtorch {
    /// The folder holding `include/` and `lib/`.
    pub root: PathBuf,
    /// Whether it was built with the C++11 ABI ("1") or not ("0"); `None` leaves torch-sys's default.
    pub cxx11_abi: Option<String>,
}

impl Libtorch {
    pub fn lib_dir(&self) -> PathBuf {
        self.root.join("lib")
    }

    /// The variables torch-sys reads at build time and the binaries need at run time.
    pub fn env(&self) -> Result<Vec<(String, String)>, String> {
        let mut vars = vec![(
            "LIBTORCH".to_string(),
            self.root.to_string_lossy().into_owned(),
        )];
        if let Some(abi) = &self.cxx11_abi {
            vars.push(("LIBTORCH_CXX11_ABI".to_string(), abi.clone()));
        }
        let lib = self.lib_dir().to_string_lossy().into_owned();
        // `cargo xtask` runs under cargo, which prepends its own target and toolchain folders;
        // those must not leak into the user's shell through `cargo xtask env`.
        let inherited = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        let kept: Vec<&str> = inherited
            .split(':')
            .filter(|p| !p.is_empty() && *p != lib)
            .filter(|p| {
                !p.contains("/target/debug")
                    && !p.contains("/target/release")
                    && !p.contains("/.rustup/toolchains/")
            })
            .collect();
        let path = std::iter::once(lib.as_str())
            .chain(kept)
            .collect::<Vec<_>>()
            .join(":");
        vars.push(("LD_LIBRARY_PATH".to_string(), path));
        Ok(vars)
    }
}

/// Returns a libtorch, installing one into the cache folder when none is configured.
pub fn ensure() -> Result<Libtorch, String> {
    if let Some(root) = std::env::var_os("LIBTORCH").filter(|v| !v.is_empty()) {
        let root = PathBuf::from(root);
        check_layout(&root).map_err(|e| format!("LIBTORCH={}: {e}", root.display()))?;
        let cxx11_abi = std::env::var("LIBTORCH_CXX11_ABI").ok();
        return Ok(Libtorch { root, cxx11_abi });
    }
    let home = crate::cache_home()?
        .join("gm")
        .join(format!("torch-{TORCH_VERSION}"));
    let marker = home.join("libtorch.txt");
    if let Some(found) = read_marker(&marker) {
        return Ok(found);
    }
    install(&home, &marker)
}

fn check_layout(root: &Path) -> Result<(), String> {
    let lib = root.join("lib");
    let has_lib = [
        "libtorch_cpu.so",
        "libtorch.so",
        "libtorch_cpu.dylib",
        "torch_cpu.dll",
    ]
    .iter()
    .any(|name| lib.join(name).exists());
    if !has_lib {
        return Err(format!("no libtorch_cpu library in {}", lib.display()));
    }
    if !root.join("include").join("torch").exists() {
        return Err(format!("no include/torch folder in {}", root.display()));
    }
    Ok(())
}

/// The marker holds the torch folder and the ABI flag; it is written only after a complete install.
fn read_marker(marker: &Path) -> Option<Libtorch> {
    let text = std::fs::read_to_string(marker).ok()?;
    let mut lines = text.lines();
    let root = PathBuf::from(lines.next()?);
    let abi = lines.next()?.trim().to_string();
    check_layout(&root).ok()?;
    Some(Libtorch {
        root,
        cxx11_abi: Some(abi),
    })
}

fn install(home: &Path, marker: &Path) -> Result<Libtorch, String> {
    let python = find_python().ok_or_else(|| {
        "no python3 with the venv module was found, so libtorch cannot be installed automatically.\n\
         Install Python 3 with pip, or download libtorch 2.13.0 yourself and set\n\
         LIBTORCH=/path/to/libtorch (the folder holding include/ and lib/)."
            .to_string()
    })?;
    let venv = home.join("venv");
    if venv.exists() {
        eprintln!(
            "xtask: removing an incomplete environment at {}",
            venv.display()
        );
        std::fs::remove_dir_all(&venv)
            .map_err(|e| format!("cannot remove {}: {e}", venv.display()))?;
    }
    std::fs::create_dir_all(home).map_err(|e| format!("cannot create {}: {e}", home.display()))?;
    eprintln!(
        "xtask: creating a Python virtual environment in {}",
        venv.display()
    );
    run_to_stderr(Command::new(&python).args(["-m", "venv"]).arg(&venv))?;
    let venv_python = venv.join("bin").join("python");
    eprintln!(
        "xtask: installing torch=={TORCH_VERSION} from PyPI for its libtorch (a few GB, about a minute on a fast link)"
    );
    run_to_stderr(
        Command::new(&venv_python)
            .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"])
            .arg(format!("torch=={TORCH_VERSION}")),
    )
    .map_err(|e| {
        format!("{e}\npip could not install torch=={TORCH_VERSION}; set LIBTORCH to a libtorch 2.13.0 folder instead")
    })?;
    let query = "import os, torch\n\
                 print(os.path.dirname(torch.__file__))\n\
                 print(int(torch._C._GLIBCXX_USE_CXX11_ABI))\n\
                 print(torch.__version__)";
    let out = Command::new(&venv_python)
        .args(["-c", query])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", venv_python.display()))?;
    if !out.status.success() {
        return Err("the installed torch package could not be imported".to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(root), Some(abi), Some(version)) = (lines.next(), lines.next(), lines.next()) else {
        return Err(format!("unexpected answer from the torch package: {text}"));
    };
    if !version.starts_with(TORCH_VERSION) {
        return Err(format!(
            "pip installed torch {version}, but tch 0.26 needs {TORCH_VERSION}"
        ));
    }
    check_layout(Path::new(root))?;
    std::fs::write(marker, format!("{root}\n{abi}\n"))
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    eprintln!("xtask: libtorch {version} installed at {root}");
    Ok(Libtorch {
        root: PathBuf::from(root),
        cxx11_abi: Some(abi.to_string()),
    })
}

fn find_python() -> Option<String> {
    let candidates = std::env::var("PYTHON")
        .into_iter()
        .chain(["python3".to_string(), "python".to_string()]);
    for candidate in candidates {
        let ok = Command::new(&candidate)
            .args([
                "-c",
                "import sys, venv; sys.exit(0 if sys.version_info >= (3, 10) else 1)",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(candidate);
        }
    }
    None
}

/// Runs a command whose output goes to our stderr, so that `cargo xtask env` keeps stdout clean.
fn run_to_stderr(cmd: &mut Command) -> Result<(), String> {
    let status = cmd
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}
