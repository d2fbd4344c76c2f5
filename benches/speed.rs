//! `gm-speed`: times gm's speed cases for `cargo xtask speed`, which runs it beside the
//! PyTorch twins and interleaves their blocks. It reads one command per line on stdin and
//! answers each with one JSON line (the protocol of `twins/driver.py`):
//!
//! ```text
//! setup CASE     -> {"ok": true, "params": N, "threads": T}
//! time CASE N    -> {"ok": true, "seconds": S}     (N units of work back to back)
//! matmul         -> {"ok": true, "gflops": G}      (1024³ single-precision products)
//! quit
//! ```
//!
//! `--device cpu|cuda` picks the device; `--threads N` fixes libtorch's intra-op threads,
//! otherwise each case runs with the count gm chooses for its model.

use gm_benches::{build_case, SpeedCase};
use gm_core::tch::{self, Device, Kind, Tensor};
use serde_json::json;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::Instant;

fn main() {
    // As `gm` does (see `gm_bench::memory::keep_freed_memory`).
    gm_bench::memory::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let device = match value_of("--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(other) => {
            eprintln!("gm-speed: unknown device {other:?}; expected cpu or cuda");
            std::process::exit(2);
        }
    };
    if device != Device::Cpu {
        gm_core::device::load_cuda_backend();
    }
    gm_core::device::default_threads();
    let fixed_threads: Option<i32> = value_of("--threads").and_then(|t| t.parse().ok());
    let mut cases: HashMap<String, (SpeedCase, i32)> = HashMap::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            [] => continue,
            ["quit"] => break,
            ["matmul"] => {
                // The machine's throughput: with every thread the process may use.
                tch::set_num_threads(
                    fixed_threads.unwrap_or_else(gm_core::device::default_threads),
                );
                json!({"ok": true, "gflops": matmul_gflops(device)})
            }
            ["setup", name] => match setup(name, device, fixed_threads) {
                Ok((case, threads)) => {
                    let params = case.model.num_parameters();
                    cases.insert(name.to_string(), (case, threads));
                    json!({"ok": true, "params": params, "threads": threads})
                }
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            ["time", name, steps] => match (cases.get_mut(*name), steps.parse::<u32>()) {
                (Some((case, threads)), Ok(steps)) => {
                    tch::set_num_threads(*threads);
                    synchronize(device);
                    let start = Instant::now();
                    let result = (0..steps).try_for_each(|_| case.run());
                    synchronize(device);
                    match result {
                        Ok(()) => json!({"ok": true, "seconds": start.elapsed().as_secs_f64()}),
                        Err(e) => json!({"ok": false, "error": e.to_string()}),
                    }
                }
                _ => {
                    json!({"ok": false, "error": format!("no case {name} set up, or a bad count {steps}")})
                }
            },
            _ => json!({"ok": false, "error": format!("unknown command {line:?}")}),
        };
        if writeln!(out, "{reply}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
}

/// Builds and warms up a case; returns it with the thread count it runs with.
fn setup(
    name: &str,
    device: Device,
    fixed_threads: Option<i32>,
) -> gm_core::Result<(SpeedCase, i32)> {
    let mut case = build_case(name, device)?;
    let threads = fixed_threads.unwrap_or_else(|| case.threads());
    tch::set_num_threads(threads);
    for _ in 0..3 {
        case.run()?;
    }
    synchronize(device);
    Ok((case, threads))
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median single-precision matrix-multiply throughput (1024 × 1024 by 1024 × 1024).
fn matmul_gflops(device: Device) -> f64 {
    let a = Tensor::randn([1024, 1024], (Kind::Float, device));
    let b = Tensor::randn([1024, 1024], (Kind::Float, device));
    for _ in 0..3 {
        let _ = a.matmul(&b);
    }
    synchronize(device);
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let start = Instant::now();
            let _ = a.matmul(&b);
            synchronize(device);
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    2.0 * 1024f64.powi(3) / times[times.len() / 2] / 1e9
}
