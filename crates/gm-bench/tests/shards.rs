//! A sweep past one machine: `--shard K/N` runs a deterministic share of the suite, the shares
//! cover every entry exactly once, and `gm report DIR…` merges their folders into one report.

use gm_bench::suite::Shard;
use std::process::Command;

#[test]
fn shards_cover_every_entry_exactly_once() {
    for count in 1..=6 {
        let shards: Vec<Shard> = (1..=count)
            .map(|k| format!("{k}/{count}").parse().unwrap())
            .collect();
        for position in 0..40 {
            let owners = shards.iter().filter(|s| s.contains(position)).count();
            assert_eq!(
                owners, 1,
                "entry {position} of {count} shards has {owners} owners"
            );
        }
    }
    for bad in ["0/3", "4/3", "3", "a/b", "1/0", ""] {
        let err = bad.parse::<Shard>().unwrap_err().to_string();
        assert!(err.contains("shard"), "{bad}: {err}");
    }
}

fn gm(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(args)
        .env("GM_DEVICE", "cpu")
        .output()
        .expect("gm runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Two shards of a two-entry suite each run one entry; `gm report` over both folders reports
/// both, with their pictures, and refuses folders that hold nothing.
#[test]
fn shards_run_apart_and_merge_into_one_report() {
    let root = std::env::temp_dir().join(format!("gm-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let suite = root.join("suite.toml");
    std::fs::write(
        &suite,
        "[[entry]]\nmodel = \"a\"\nconfig = \"flow/realnvp_toy\"\ndatasets = [\"two_moons\"]\nsteps = { quick = 3, default = 3, full = 3 }\n\n[[entry]]\nmodel = \"b\"\nconfig = \"flow/maf_toy\"\ndatasets = [\"two_moons\"]\nsteps = { quick = 3, default = 3, full = 3 }\n",
    )
    .unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (suite_arg, d1, d2, merged) = (
        path(&suite),
        path(&root.join("one")),
        path(&root.join("two")),
        path(&root.join("merged")),
    );
    for (shard, dir) in [("1/2", &d1), ("2/2", &d2)] {
        let (code, err) = gm(&[
            "bench-all",
            "--suite",
            &suite_arg,
            "--shard",
            shard,
            "--out",
            dir,
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("1 of 2 runs"), "{err}");
    }
    let (code, err) = gm(&["report", "--suite", &suite_arg, "--out", &merged, &d1, &d2]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("merged/report.json")).unwrap()).unwrap();
    let mut ids: Vec<String> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["flow/a/two_moons", "flow/b/two_moons"]);
    for r in json["results"].as_array().unwrap() {
        let png = r["samples_png"].as_str().unwrap();
        assert!(
            root.join("merged").join(png).exists(),
            "{png} was not copied"
        );
    }
    let (code, err) = gm(&[
        "report",
        "--suite",
        &suite_arg,
        "--out",
        &merged,
        &path(&root.join("nothing")),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("holds a finished result"), "{err}");
    let (code, err) = gm(&[
        "bench-all",
        "--suite",
        &suite_arg,
        "--shard",
        "3/2",
        "--out",
        &d1,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("shard"), "{err}");
}
