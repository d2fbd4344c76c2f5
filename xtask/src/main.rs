//! `cargo xtask`: the one entry point that needs no manual set-up.
//!
//! It finds libtorch (the `LIBTORCH` variable, or a private Python virtual environment in the
//! user's cache folder that it creates with `pip install torch==2.13.0`), sets the environment
//! that `torch-sys` and the test binaries need, and runs cargo with it.

mod data;
mod libtorch;
mod speed;
mod text;

use clap::{Parser, Subcommand};
use std::process::{Command, ExitCode};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "gm task runner", version)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Find or install libtorch (PyTorch 2.13.0) and print where it is.
    Setup,
    /// Print `export` lines for the libtorch environment: `eval "$(cargo xtask env)"`.
    Env,
    /// Obtain the 10,000 MNIST digits as IDX files (or check the ones in GM_DATA_DIR) and the
    /// byte-level text corpus (GM_TEXT_DIR).
    Data,
    /// Run the whole test suite; further arguments go to `cargo test` (e.g. `-p gm-flow`).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Train and evaluate every model family and write target/gm-report/.
    BenchAll {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Time gm's training steps against PyTorch twins of the same models (eager and
    /// torch.compile), interleaved, and print the table (also in target/speed/).
    Speed(speed::SpeedArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("xtask: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode, String> {
    match task {
        Task::Setup => {
            let torch = libtorch::ensure()?;
            eprintln!("libtorch ready at {}", torch.root.display());
            for (k, v) in torch.env()? {
                eprintln!("  {k}={v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Task::Env => {
            let torch = libtorch::ensure()?;
            for (k, v) in torch.env()? {
                println!("export {k}={}", shell_quote(&v));
            }
            println!(
                "export GM_DATA_DIR={}",
                shell_quote(&data::data_dir()?.to_string_lossy())
            );
            println!(
                "export GM_TEXT_DIR={}",
                shell_quote(&text::text_dir()?.to_string_lossy())
            );
            Ok(ExitCode::SUCCESS)
        }
        Task::Data => {
            let dir = data::ensure()?;
            eprintln!("MNIST IDX files ready in {}", dir.display());
            let dir = text::ensure()?;
            eprintln!("text corpus ready in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Task::Test { args } => {
            let torch = libtorch::ensure()?;
            // The tests read real digits and text: a fresh machine gets them here, as bench-all does.
            let data_dir = data::ensure()?;
            let text_dir = text::ensure()?;
            let mut cmd = cargo();
            cmd.arg("test");
            let names_package = args.iter().any(|a| {
                a == "-p" || a == "--package" || a.starts_with("--package=") || a == "--workspace"
            });
            if !names_package {
                cmd.arg("--workspace").arg("--exclude").arg("xtask");
            }
            cmd.args(&args);
            // libtorch's random generator is global to the process; tests that seed it must not
            // run concurrently with each other, or their "fixed" seeds would interleave.
            if std::env::var_os("RUST_TEST_THREADS").is_none() {
                cmd.env("RUST_TEST_THREADS", "1");
            }
            cmd.env("GM_DATA_DIR", data_dir);
            cmd.env("GM_TEXT_DIR", text_dir);
            run_with_env(cmd, &torch)
        }
        Task::Speed(args) => {
            let torch = libtorch::ensure()?;
            speed::run(args, &torch)?;
            Ok(ExitCode::SUCCESS)
        }
        Task::BenchAll { args } => {
            let torch = libtorch::ensure()?;
            let dir = data::ensure()?;
            let text_dir = text::ensure()?;
            let mut cmd = cargo();
            cmd.args([
                "run",
                "--release",
                "--package",
                "gm-bench",
                "--bin",
                "gm",
                "--",
                "bench-all",
            ]);
            cmd.args(&args);
            cmd.env("GM_DATA_DIR", dir);
            cmd.env("GM_TEXT_DIR", text_dir);
            run_with_env(cmd, &torch)
        }
    }
}

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()))
}

fn run_with_env(mut cmd: Command, torch: &libtorch::Libtorch) -> Result<ExitCode, String> {
    for (k, v) in torch.env()? {
        cmd.env(k, v);
    }
    if std::env::var_os("GM_DATA_DIR").is_none() {
        cmd.env("GM_DATA_DIR", data::data_dir()?);
    }
    if std::env::var_os("GM_TEXT_DIR").is_none() {
        cmd.env("GM_TEXT_DIR", text::text_dir()?);
    }
    let status = run_forwarding_interrupts(cmd)?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// The process group of the running child, 0 when none.
static CHILD_GROUP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Runs `cmd` in a process group of its own and forwards an interrupt or termination signal sent
/// to xtask to that whole group (cargo and what it started, e.g. `gm`), so that stopping xtask
/// alone never leaves a benchmark running as an orphan. xtask then waits for the group to stop.
fn run_forwarding_interrupts(mut cmd: Command) -> Result<std::process::ExitStatus, String> {
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let group = CHILD_GROUP.load(std::sync::atomic::Ordering::SeqCst);
            if group != 0 {
                let _ = Command::new("kill")
                    .args(["-INT", "--", &format!("-{group}")])
                    .status();
            }
        });
    });
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    CHILD_GROUP.store(child.id(), std::sync::atomic::Ordering::SeqCst);
    let status = child.wait().map_err(|e| format!("waiting for cargo: {e}"));
    CHILD_GROUP.store(0, std::sync::atomic::Ordering::SeqCst);
    status
}

/// Quotes a value for a POSIX shell `export` line.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The user's cache folder: `$XDG_CACHE_HOME`, else `~/.cache`.
pub(crate) fn cache_home() -> Result<std::path::PathBuf, String> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// The user's data folder: `$XDG_DATA_HOME`, else `~/.local/share`.
pub(crate) fn data_home() -> Result<std::path::PathBuf, String> {
    xdg_dir("XDG_DATA_HOME", ".local/share")
}

fn xdg_dir(var: &str, fallback: &str) -> Result<std::path::PathBuf, String> {
    if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(dir.into());
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("neither {var} nor HOME is set; set one of them"))?;
    Ok(std::path::PathBuf::from(home).join(fallback))
}
