//! The runner survives failing entries, resumes finished ones, and the report says what happened.

use gm_bench::report::{self, Report};
use gm_bench::runner::{config_hash, run_entry};
use gm_bench::suite::{suite, Entry, Profile};
use gm_core::data::load_named;
use gm_core::tch::Device;
use gm_core::train::TrainConfig;
use gm_core::GmError;

fn entry(id: &str, build: gm_bench::suite::Builder) -> Entry {
    Entry {
        id: id.into(),
        family: "test".into(),
        model: "m".into(),
        dataset: "two_moons".into(),
        train: TrainConfig {
            steps: 5,
            batch_size: 16,
            seed: 0,
            log_every: 1,
            checkpoint_every: 0,
        },
        config_text: "x = 1".into(),
        build,
    }
}

fn out_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gm-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn failures_are_recorded_not_fatal() {
    let data = load_named("two_moons", Device::Cpu, 64, 64, 0).unwrap();
    let out = out_dir("fail");
    let erroring = entry(
        "test/error/two_moons",
        Box::new(|_, _| Err(GmError::Unsupported("no such model".into()))),
    );
    let panicking = entry("test/panic/two_moons", Box::new(|_, _| panic!("boom")));
    let a = run_entry(&erroring, &data, &out, Device::Cpu);
    let b = run_entry(&panicking, &data, &out, Device::Cpu);
    assert_eq!(a.status, "failed");
    assert!(a.error.as_deref().unwrap().contains("no such model"));
    assert_eq!(b.status, "failed");
    assert!(b.error.as_deref().unwrap().contains("boom"));
    let r = Report {
        profile: "test".into(),
        device: "Cpu".into(),
        threads: 1,
        total_seconds: 0.0,
        results: vec![a, b],
    };
    report::write(&r, &out).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("Failed runs") && md.contains("test/panic/two_moons"),
        "{md}"
    );
    assert!(std::fs::read_to_string(out.join("index.html"))
        .unwrap()
        .contains("failed"));
}

#[test]
fn a_real_entry_trains_and_is_reused() {
    let data = load_named("two_moons", Device::Cpu, 256, 256, 0).unwrap();
    let out = out_dir("ok");
    let mut entries = suite(Profile::Quick).unwrap();
    let mut e = entries.remove(
        entries
            .iter()
            .position(|e| e.id == "flow/realnvp/two_moons")
            .unwrap(),
    );
    e.train.steps = 3;
    e.train.batch_size = 64;
    e.train.log_every = 1;
    e.config_text.push_str("\n# shortened for the test\n");
    let first = run_entry(&e, &data, &out, Device::Cpu);
    assert_eq!(first.status, "ok", "{:?}", first.error);
    assert_eq!(first.nll_kind.as_deref(), Some("exact"));
    assert_eq!(first.curve.len(), 3);
    assert!(first.gap_nats.unwrap().is_finite());
    assert!(out.join(first.samples_png.as_deref().unwrap()).exists());
    // A second run of the same config reuses the finished result.
    let again = run_entry(&e, &data, &out, Device::Cpu);
    assert_eq!(again.nll_nats, first.nll_nats);
    assert_eq!(again.train_seconds, first.train_seconds);
    // Changing the config changes the hash, hence the run folder.
    let h1 = config_hash(&e);
    e.config_text.push('#');
    assert_ne!(h1, config_hash(&e));
}

#[test]
fn every_profile_builds_a_suite() {
    for p in ["quick", "default", "full"] {
        let entries = suite(p.parse().unwrap()).unwrap();
        assert!(entries.len() >= 14);
        let mut ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), entries.len(), "entry ids are unique");
    }
    assert!("fast".parse::<Profile>().is_err());
}
