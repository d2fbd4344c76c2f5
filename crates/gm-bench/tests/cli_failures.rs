//! `gm bench-all` never says it succeeded when it did not: every failure below exits non-zero
//! and says why.

use std::process::Command;

fn out_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn gm(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gm"));
    cmd.args(args).env("GM_DEVICE", "cpu");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().expect("gm runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn nothing_matched_is_an_error() {
    let out = out_dir("nomatch");
    let (code, err) = gm(
        &[
            "bench-all",
            "--only",
            "no/such/entry",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("no entry of profile quick matches"), "{err}");
    assert!(!out.join("report.md").exists(), "no report claims anything");
}

#[test]
fn unloadable_data_fails_the_run_and_the_command() {
    let out = out_dir("nodata");
    let empty = out_dir("empty-data");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err) = gm(
        &[
            "bench-all",
            "--only",
            "vae/mlp",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("GM_DATA_DIR", empty.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot load data set mnist_binary"), "{err}");
    assert!(
        err.contains("1 of 1 runs failed: vae/mlp/mnist_binary"),
        "{err}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Failed runs") && report.contains("vae/mlp/mnist_binary"));
    assert!(!out.join(".gm-bench.lock").exists(), "the lock is released");
}

#[test]
fn a_second_invocation_on_one_folder_is_refused() {
    let out = out_dir("locked");
    std::fs::create_dir_all(&out).unwrap();
    // This test process is alive: its id in the lock means the folder is taken.
    std::fs::write(out.join(".gm-bench.lock"), std::process::id().to_string()).unwrap();
    let (code, err) = gm(
        &[
            "bench-all",
            "--only",
            "flow/nsf/two_moons",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("another gm bench-all"), "{err}");
    // A stale lock (a process that is gone) is taken over: the run then fails only for data.
    std::fs::write(out.join(".gm-bench.lock"), "4000000000").unwrap();
    let empty = out_dir("empty-data2");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err) = gm(
        &[
            "bench-all",
            "--only",
            "vae/conv",
            "--out",
            out.to_str().unwrap(),
        ],
        &[("GM_DATA_DIR", empty.to_str().unwrap())],
    );
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("another gm bench-all"), "{err}");
}

#[test]
fn bad_profiles_devices_and_suites_are_errors() {
    let out = out_dir("bad");
    let o = out.to_str().unwrap();
    let (code, err) = gm(&["bench-all", "--profile", "fast", "--out", o], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown profile \"fast\""), "{err}");
    let (code, err) = gm(&["bench-all", "--out", o], &[("GM_DEVICE", "mps")]);
    assert_ne!(code, 0);
    assert!(err.contains("Metal"), "{err}");
    let (code, err) = gm(
        &["bench-all", "--suite", "/no/such/suite.toml", "--out", o],
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("/no/such/suite.toml"), "{err}");
}
