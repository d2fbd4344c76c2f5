//! `cargo xtask speed`: gm's training steps against PyTorch twins of the same models.
//!
//! It builds the `gm-speed` harness (`benches/speed.rs`) in release mode and starts it beside
//! `benches/twins/driver.py` in eager mode and, unless `--no-compile`, in `torch.compile` mode,
//! all with the Python environment that `cargo xtask` installed libtorch from, each in
//! `--processes` processes (a process's speed depends on its own luck: where its memory lands,
//! what its heap went through; two processes of the same binary differ by up to about 10%, so no
//! single process should decide a ratio, the reason pyperf also spreads its runs over processes).
//! Every process builds every case once; then the blocks are interleaved: each round times one
//! block in every process, in an order that rotates, so that drift in the machine's speed (other
//! jobs, heat) falls on all of them alike, after one untimed block each. The table gives median
//! step times over the blocks, the twins' time over gm's (the median of the ratios of each twin
//! block to each gm block of the same round, which pairs blocks timed seconds apart), and the
//! share of the machine's matrix-multiply limit gm reaches (the step's matrix-multiply and
//! convolution FLOPs, counted by PyTorch's FLOP counter on the twin, at the throughput measured
//! for 1024³ products).

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// Options of `cargo xtask speed`.
#[derive(clap::Args, Debug)]
pub struct SpeedArgs {
    /// `cpu` or `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Interleaved rounds per case; the table shows medians over them.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Processes per implementation. A process's speed depends on its own luck (where its
    /// memory lands, its heap's history) by up to about 10% for the same binary, so each side
    /// is timed in several and every round averages them.
    #[arg(long, default_value_t = 3)]
    processes: usize,
    /// Seconds one timed block should last (the step count is set from gm's first step).
    #[arg(long, default_value_t = 0.4)]
    block_seconds: f64,
    /// Only these cases (comma separated); all by default.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// Leave out the torch.compile column (compiling takes minutes).
    #[arg(long)]
    no_compile: bool,
    /// Where speed.json and speed.md go.
    #[arg(long, default_value = "target/speed")]
    out: PathBuf,
}

/// Every case of the table, as named by the harness and the twins.
const CASES: &[&str] = &[
    "flow_tiny_b128",
    "realnvp_b256",
    "vae_mlp_b128",
    "vae_conv_b128",
    "glow_train_b64",
    "glow_sample_64",
    "pixelcnn_b64",
    "dcgan_b64",
    "unet_b64",
];

/// The implementations, in the order of the table's columns.
const SIDES: [&str; 3] = ["gm", "PyTorch eager", "torch.compile"];

/// One process of one implementation, answering the line protocol.
struct Worker {
    label: String,
    /// Index into [`SIDES`].
    side: usize,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Worker {
    fn start(side: usize, process: usize, mut cmd: Command) -> Result<Worker, String> {
        let label = format!("{} (process {})", SIDES[side], process + 1);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {label}: {e}"))?;
        let input = child.stdin.take().ok_or("no stdin")?;
        let output = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        Ok(Worker {
            label,
            side,
            child,
            input,
            output,
        })
    }

    /// Sends one command and reads its JSON answer; a refusal comes back as `Err`.
    fn ask(&mut self, command: &str) -> Result<Value, String> {
        self.send(command)?;
        self.receive()
    }

    /// Sends one command without waiting for the answer, so that several processes can work on
    /// theirs at once.
    fn send(&mut self, command: &str) -> Result<(), String> {
        writeln!(self.input, "{command}")
            .and_then(|_| self.input.flush())
            .map_err(|e| format!("{} stopped: {e}", self.label))
    }

    /// Reads the answer to the command sent last.
    fn receive(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .map_err(|e| format!("{} stopped: {e}", self.label))?;
        if line.is_empty() {
            return Err(format!("{} exited (see its messages above)", self.label));
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| format!("{} answered {line:?}: {e}", self.label))?;
        if value["ok"].as_bool() != Some(true) {
            return Err(value["error"].as_str().unwrap_or("failed").to_string());
        }
        Ok(value)
    }

    /// Seconds per unit of work over a block of `steps`.
    fn time(&mut self, case: &str, steps: u64) -> Result<f64, String> {
        let reply = self.ask(&format!("time {case} {steps}"))?;
        let seconds = reply["seconds"]
            .as_f64()
            .ok_or("no seconds in the answer")?;
        Ok(seconds / steps as f64)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "quit");
        let _ = self.input.flush();
        let _ = self.child.wait();
    }
}

/// One row of the table.
#[derive(Default)]
struct Row {
    case: String,
    params: Option<i64>,
    twin_params: Option<i64>,
    threads: Option<i64>,
    flops: Option<f64>,
    /// Steps per timed block.
    steps: Option<u64>,
    /// Seconds per step of every timed block: per round, per side, one per process.
    blocks: Vec<[Vec<f64>; 3]>,
    /// Median seconds per step of gm, eager, compiled.
    medians: [Option<f64>; 3],
    /// Eager's and compiled's time over gm's (see [`paired_ratio`]).
    ratios: [Option<f64>; 2],
    notes: Vec<String>,
}

/// Side `side`'s time over gm's: the median, over every round, of the ratio of each of the
/// side's blocks to each of gm's blocks of the same round. Paired within a round, so a slow
/// spell of a shared machine, which lasts longer than a round, falls on both sides of each
/// ratio; every process of each side weighs alike, so no one process's luck decides it; and a
/// median, so an odd slow block moves it by little (a mean over a round's processes let one
/// such block pull the whole round).
fn paired_ratio(blocks: &[[Vec<f64>; 3]], side: usize) -> Option<f64> {
    median(
        blocks
            .iter()
            .flat_map(|round| {
                round[side]
                    .iter()
                    .flat_map(move |twin| round[0].iter().map(move |gm| twin / gm))
            })
            .collect(),
    )
}

fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// The Python with torch beside the libtorch in use: the virtual environment xtask installed,
/// `GM_PYTHON` if set, else `python3`.
fn python_for(torch_root: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("GM_PYTHON").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    for dir in torch_root.ancestors().take(6) {
        let candidate = dir.join("bin").join("python");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("python3")
}

pub fn run(args: SpeedArgs, torch: &crate::libtorch::Libtorch) -> Result<(), String> {
    let env = torch.env()?;
    let root = workspace_root()?;
    let cases: Vec<String> = if args.cases.is_empty() {
        CASES.iter().map(|c| c.to_string()).collect()
    } else {
        for c in &args.cases {
            if !CASES.contains(&c.as_str()) {
                return Err(format!("unknown case {c:?}; expected some of {CASES:?}"));
            }
        }
        args.cases.clone()
    };
    if args.rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }
    if args.processes == 0 {
        return Err("--processes must be at least 1".into());
    }
    eprintln!("building the gm-speed harness (release) ...");
    let mut build = crate::cargo();
    build.args([
        "build",
        "--release",
        "--package",
        "gm-benches",
        "--bin",
        "gm-speed",
    ]);
    build.envs(env.iter().cloned());
    let status = build
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if !status.success() {
        return Err("building gm-speed failed (see above)".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let gm_cmd_for = || {
        let mut cmd = Command::new(target.join("release").join("gm-speed"));
        cmd.args(["--device", &args.device])
            .envs(env.iter().cloned());
        cmd
    };
    let python = python_for(&torch.root);
    let driver = root.join("benches").join("twins").join("driver.py");
    let twin = |mode: &str| {
        let mut cmd = Command::new(&python);
        cmd.arg(&driver)
            .args(["--device", &args.device, "--mode", mode])
            .env("PYTHONWARNINGS", "ignore");
        cmd
    };
    let sides = if args.no_compile { 2 } else { 3 };
    // Processes side by side in the order gm, eager, compiled, gm, ...: the rotation of each
    // round then keeps the sides interleaved.
    let mut workers = Vec::with_capacity(sides * args.processes);
    for process in 0..args.processes {
        workers.push(Worker::start(0, process, gm_cmd_for())?);
        workers.push(Worker::start(1, process, twin("eager"))?);
        if !args.no_compile {
            workers.push(Worker::start(2, process, twin("compile"))?);
        }
    }
    // Wait until the twins have imported torch: measuring while they start would undercount.
    for worker in workers.iter_mut().filter(|w| w.side > 0) {
        worker.ask("list")?;
    }
    // gm's first process measures the machine and sets the block length.
    let gm_first = 0;
    // The machine's throughput is the best of a measurement before each case: a single one
    // taken while another tenant of the machine ran read as little as half of it.
    let mut gflops: f64 = 0.0;
    let mut rows = Vec::new();
    for case in &cases {
        gflops = gflops.max(
            workers[gm_first].ask("matmul")?["gflops"]
                .as_f64()
                .unwrap_or(0.0),
        );
        eprintln!("{case}: setting up (torch.compile may take minutes) ...");
        let mut row = Row {
            case: case.clone(),
            ..Default::default()
        };
        // Every process sets the case up at once (compiling is the slow part); a side whose
        // processes do not all succeed is left out of the case.
        let mut ready = [true; 3];
        let mut sent = vec![false; workers.len()];
        for (i, worker) in workers.iter_mut().enumerate() {
            match worker.send(&format!("setup {case}")) {
                Ok(()) => sent[i] = true,
                Err(e) => {
                    row.notes.push(e);
                    ready[worker.side] = false;
                }
            }
        }
        for (i, worker) in workers.iter_mut().enumerate() {
            if !sent[i] {
                continue;
            }
            match worker.receive() {
                Ok(reply) => match worker.side {
                    0 => {
                        row.params = reply["params"].as_i64();
                        row.threads = reply["threads"].as_i64();
                    }
                    1 => {
                        row.twin_params = reply["params"].as_i64();
                        row.flops = reply["flops"].as_f64().filter(|f| *f > 0.0);
                    }
                    _ => {}
                },
                Err(e) => {
                    row.notes.push(format!("{}: {e}", worker.label));
                    ready[worker.side] = false;
                }
            }
        }
        if !ready[0] {
            rows.push(row);
            continue;
        }
        // A block of about `block_seconds` of gm's time, the same step count for every side,
        // set from a first block of gm (its untimed block) rather than from one step alone: a
        // single step caught in a slow moment made a run's blocks a third as long as meant.
        let first = match workers[gm_first].time(case, 1) {
            Ok(t) => t,
            Err(e) => {
                row.notes.push(format!("gm: {e}"));
                rows.push(row);
                continue;
            }
        };
        let steps_for = |per_step: f64| {
            ((args.block_seconds / per_step.max(1e-6)).round() as u64).clamp(1, 5000)
        };
        let steps = match workers[gm_first].time(case, steps_for(first)) {
            Ok(t) => steps_for(t),
            Err(e) => {
                row.notes.push(format!("gm: {e}"));
                rows.push(row);
                continue;
            }
        };
        row.steps = Some(steps);
        // One untimed block in every other process first: allocators, caches and anything
        // initialised lazily (PyTorch's eager twin has run no step before this) are then warm
        // everywhere.
        for (i, worker) in workers.iter_mut().enumerate() {
            if ready[worker.side] && i != gm_first {
                if let Err(e) = worker.time(case, steps) {
                    row.notes.push(format!("{}: {e}", worker.label));
                    ready[worker.side] = false;
                }
            }
        }
        let started = Instant::now();
        for round in 0..args.rounds {
            let mut blocks: [Vec<f64>; 3] = Default::default();
            let count = workers.len();
            for j in 0..count {
                let worker = &mut workers[(j + round) % count];
                if !ready[worker.side] {
                    continue;
                }
                match worker.time(case, steps) {
                    Ok(t) => blocks[worker.side].push(t),
                    Err(e) => {
                        row.notes.push(format!("{}: {e}", worker.label));
                        ready[worker.side] = false;
                    }
                }
            }
            row.blocks.push(blocks);
        }
        for (side, median_of) in row.medians.iter_mut().enumerate() {
            *median_of = median(row.blocks.iter().flat_map(|r| r[side].clone()).collect());
        }
        for (k, ratio) in row.ratios.iter_mut().enumerate() {
            *ratio = paired_ratio(&row.blocks, k + 1);
        }
        eprintln!(
            "{case}: {} rounds of {steps} steps in {} processes per side in {:.0} s",
            args.rounds,
            args.processes,
            started.elapsed().as_secs_f64()
        );
        rows.push(row);
    }
    drop(workers);
    eprintln!("matrix-multiply throughput: {gflops:.1} GFLOP/s (best of one measurement per case)");
    let table = render(&rows, gflops, &args);
    println!("{table}");
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    std::fs::write(args.out.join("speed.md"), &table)
        .map_err(|e| format!("cannot write speed.md: {e}"))?;
    let json = serde_json::json!({
        "device": args.device,
        "matmul_gflops": gflops,
        "rounds": args.rounds,
        "processes": args.processes,
        "rows": rows.iter().map(|r| serde_json::json!({
            "case": r.case,
            "params": r.params,
            "twin_params": r.twin_params,
            "threads": r.threads,
            "flops": r.flops,
            "gm_seconds": r.medians[0],
            "eager_seconds": r.medians[1],
            "compile_seconds": r.medians[2],
            "eager_over_gm": r.ratios[0],
            "compile_over_gm": r.ratios[1],
            "steps_per_block": r.steps,
            "block_seconds_per_step": r.blocks.iter().map(|round| serde_json::json!({
                "gm": round[0],
                "eager": round[1],
                "compile": round[2],
            })).collect::<Vec<_>>(),
            "notes": r.notes,
        })).collect::<Vec<_>>(),
    });
    std::fs::write(
        args.out.join("speed.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write speed.json: {e}"))?;
    eprintln!("wrote {}", args.out.join("speed.md").display());
    let failed: Vec<&Row> = rows.iter().filter(|r| r.medians[0].is_none()).collect();
    if !failed.is_empty() {
        return Err(format!(
            "gm could not run {}",
            failed
                .iter()
                .map(|r| r.case.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(())
}

/// The Markdown table.
fn render(rows: &[Row], gflops: f64, args: &SpeedArgs) -> String {
    let ms = |t: Option<f64>| t.map_or("–".to_string(), |t| format!("{:.2}", t * 1e3));
    let ratio = |r: Option<f64>| r.map_or("–".to_string(), |r| format!("{r:.2}×"));
    let mut out = format!(
        "Median step time (ms) of the blocks of {} interleaved rounds, each timing one block in each of {}\n\
         processes per implementation, on {}; matrix-multiply throughput {gflops:.1} GFLOP/s (the best of\n\
         one 1024³ measurement before each case), after one untimed block in every process.\n\
         Ratios are the twin's time over gm's (above 1: gm is faster): the median of the ratios of each of\n\
         the twin's blocks to each of gm's blocks of the same round, over all rounds (paired: a slow spell\n\
         of the machine falls on both sides of a ratio, so it may differ from the ratio of the medians;\n\
         every process weighs alike: one process's luck does not decide it). FLOP limit: the step's\n\
         matrix-multiply and convolution FLOPs at that throughput, as a share of gm's step time.\n\
         Threads: gm's; the twins run with PyTorch's default. Every block's time is in speed.json.\n\n\
         | case | gm | PyTorch eager | torch.compile | eager / gm | compile / gm | FLOP limit | threads |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        args.rounds, args.processes, args.device
    );
    let mut notes = Vec::new();
    for r in rows {
        let limit = match (r.flops, r.medians[0]) {
            (Some(f), Some(t)) if gflops > 0.0 => format!("{:.0}%", 100.0 * f / (gflops * 1e9) / t),
            _ => "–".to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.case,
            ms(r.medians[0]),
            ms(r.medians[1]),
            ms(r.medians[2]),
            ratio(r.ratios[0]),
            ratio(r.ratios[1]),
            limit,
            r.threads.map_or("–".into(), |t| t.to_string()),
        ));
        if let (Some(a), Some(b)) = (r.params, r.twin_params) {
            if a != b {
                notes.push(format!(
                    "{}: gm has {a} parameters, the twin {b}: the models differ",
                    r.case
                ));
            }
        }
        notes.extend(r.notes.iter().map(|n| format!("{}: {n}", r.case)));
    }
    if !notes.is_empty() {
        out.push_str("\nNotes:\n");
        for n in notes {
            out.push_str(&format!("- {n}\n"));
        }
    }
    out
}

fn workspace_root() -> Result<PathBuf, String> {
    // xtask's manifest sits in `<root>/xtask`.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot find the workspace root".to_string())
}
