//! The `gm` command end to end on a tiny suite: `bench-all` side by side, a report whose every
//! referenced file exists, the capabilities and provenance each result records, and `gm train`,
//! `gm sample`, `gm eval` and `gm list` on one checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `gm`; returns its exit code, stdout and stderr.
fn gm(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gm"))
        .args(args)
        .env("GM_DEVICE", "cpu")
        .output()
        .expect("gm runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn text(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Every `src="…"` and `href="…"` of an HTML page, relative ones only.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for key in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(key) {
            let rest = &html[i + key.len()..];
            let end = rest.find('"').unwrap();
            let target = &rest[..end];
            if !target.starts_with('#') && !target.contains("://") {
                found.push(target.to_string());
            }
        }
    }
    found
}

#[test]
fn a_tiny_bench_side_by_side_writes_a_complete_report() {
    let dir = root("bench");
    let suite = dir.join("suite.toml");
    std::fs::write(
        &suite,
        "[evaluation.quick]\ntoy_samples = 300\nimage_samples = 100\nlikelihood_examples = 1000\n\n[[entry]]\nmodel = \"realnvp\"\nconfig = \"flow/realnvp_toy\"\ndatasets = [\"two_moons\"]\nsteps = { quick = 3, default = 3, full = 3 }\n\n\
         [[entry]]\nmodel = \"mlp\"\nconfig = \"gan/toy_mlp\"\ndatasets = [\"two_moons\"]\nsteps = { quick = 3, default = 3, full = 3 }\n",
    )
    .unwrap();
    let out = dir.join("out");
    let (code, stdout, stderr) = gm(&[
        "bench-all",
        "--suite",
        &text(&suite),
        "--out",
        &text(&out),
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("in 2 processes side by side"), "{stderr}");
    // The terminal gets the main tables.
    assert!(
        stdout.contains("Summary by family") && stdout.contains("flow/realnvp/two_moons"),
        "{stdout}"
    );

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(report["code_version"]
        .as_str()
        .unwrap()
        .contains("gm-core:"));
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["status"], "ok", "{r}");
        let p = &r["provenance"];
        assert_eq!(p["device"], "Cpu");
        let cores = std::thread::available_parallelism().unwrap().get() as i64;
        assert_eq!(
            p["threads"],
            (cores / 2).max(1),
            "each of 2 processes gets half the cores"
        );
        assert!(p["date"].as_str().unwrap().starts_with("20"));
        assert!(p["code_version"].as_str().unwrap().contains("gm-bench:"));
        assert!(r["phases"]["likelihood"].as_f64().unwrap() >= 0.0);
        assert!(r["cost"]["sample_latency_seconds"].as_f64().unwrap() > 0.0);
    }
    let flow = results.iter().find(|r| r["family"] == "flow").unwrap();
    let caps = &flow["capabilities"];
    assert_eq!(caps["likelihood"], "exact density");
    assert_eq!(caps["latent_inference"], true);
    assert_eq!(caps["invertible"], true, "{caps}");
    assert!(caps["reconstruction_error"].as_f64().unwrap() < 1e-4);
    assert_eq!(caps["one_pass_sampling"], true);
    let gan = results.iter().find(|r| r["family"] == "gan").unwrap();
    assert_eq!(gan["capabilities"]["likelihood"], "none");
    assert_eq!(gan["capabilities"]["latent_inference"], false);
    assert!(gan["capabilities"]["invertible"].is_null());

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    for needle in [
        "Summary by family",
        "Legend",
        "two_moons",
        "charts/",
        "latent inference",
    ] {
        assert!(html.contains(needle), "index.html lacks {needle}");
    }
    for (open, close) in [
        ("<table", "</table>"),
        ("<tr", "</tr>"),
        ("<figure", "</figure>"),
        ("<p>", "</p>"),
    ] {
        assert_eq!(
            html.matches(open).count(),
            html.matches(close).count(),
            "{open} unbalanced"
        );
    }
    let refs = references(&html);
    assert!(refs.iter().any(|r| r.ends_with(".svg")) && refs.iter().any(|r| r.ends_with(".png")));
    for r in refs {
        assert!(out.join(&r).is_file(), "index.html refers to missing {r}");
        if r.ends_with(".svg") {
            let svg = std::fs::read_to_string(out.join(&r)).unwrap();
            assert!(
                svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{r}"
            );
        }
    }

    // A second invocation reuses both results (same config, same code).
    let (code, _, stderr) = gm(&["bench-all", "--suite", &text(&suite), "--out", &text(&out)]);
    assert_eq!(code, 0, "{stderr}");
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for (a, b) in results.iter().zip(again["results"].as_array().unwrap()) {
        assert_eq!(
            a["provenance"]["date"], b["provenance"]["date"],
            "a finished run was redone"
        );
        assert_eq!(a["nll_nats"], b["nll_nats"]);
    }
    let (code, _, stderr) = gm(&[
        "bench-all",
        "--suite",
        &text(&suite),
        "--out",
        &text(&out),
        "--jobs",
        "2",
        "--shard",
        "1/2",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--shard"), "{stderr}");
}

#[test]
fn train_sample_eval_and_list_work_on_one_checkpoint() {
    let dir = root("train");
    let run = dir.join("run");
    let (code, _, stderr) = gm(&[
        "train",
        "flow/realnvp_toy",
        "--steps",
        "4",
        "--dataset",
        "two_moons",
        "--out",
        &text(&run),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let checkpoint = run.join("checkpoint.safetensors");
    assert!(checkpoint.is_file() && run.join("config.toml").is_file());

    let picture = dir.join("grid.png");
    let (code, _, stderr) = gm(&[
        "sample",
        &text(&checkpoint),
        "--n",
        "50",
        "--out",
        &text(&picture),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(image_size(&picture) > 0, "{stderr}");

    // The checkpoint alone suffices: the run file travels in its metadata.
    std::fs::remove_file(run.join("config.toml")).unwrap();
    let (code, stdout, stderr) = gm(&[
        "eval",
        &text(&checkpoint),
        "--out",
        &text(&dir.join("eval")),
        "--examples",
        "200",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let result: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(result["steps"], 4);
    assert_eq!(result["likelihood_examples"], 200);
    assert!(result["nll_nats"].as_f64().unwrap().is_finite());
    assert!(result["kl_nats"].as_f64().unwrap().is_finite());

    let (code, _, stderr) = gm(&["sample", &text(&dir.join("missing.safetensors"))]);
    assert_ne!(code, 0);
    assert!(stderr.contains("missing.safetensors"), "{stderr}");
    let (code, _, stderr) = gm(&["train", "flow/no_such_run"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no_such_run"), "{stderr}");

    let (code, stdout, _) = gm(&["list"]);
    assert_eq!(code, 0);
    for needle in [
        "families:",
        "flow",
        "diffusion",
        "two_moons",
        "mnist_binary",
        "vae/mnist_mlp",
    ] {
        assert!(stdout.contains(needle), "gm list lacks {needle}: {stdout}");
    }
    let (code, stdout, _) = gm(&["list", "--profile", "quick"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("flow/realnvp/two_moons"), "{stdout}");
}

fn image_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn results_are_keyed_by_the_code_of_their_family() {
    use gm_bench::provenance::{result_code_version, training_code_version};
    let flow = training_code_version("flow");
    assert!(
        flow.starts_with("gm-core:") && flow.contains("gm-flow:"),
        "{flow}"
    );
    assert!(
        !flow.contains("gm-vae") && !flow.contains("gm-bench"),
        "{flow}"
    );
    assert!(training_code_version("masked_diffusion").contains("gm-diffusion:"));
    // The VQ-VAE with its code prior: both family crates and the gm-bench module that trains it.
    let vq = training_code_version("vq_vae_prior");
    for part in [
        "gm-core:",
        "gm-vae:",
        "gm-autoregressive:",
        "gm-bench/vq_prior:",
    ] {
        assert!(vq.contains(part), "{vq} lacks {part}");
    }
    assert!(result_code_version("vae").ends_with(&format!(
        "gm-bench:{}",
        gm_bench::provenance::SOURCE_DIGESTS[6].1
    )));
    // A family the table does not know is keyed by every crate's code.
    let unknown = training_code_version("test");
    for (name, _) in &gm_bench::provenance::SOURCE_DIGESTS[..6] {
        assert!(unknown.contains(name), "{unknown}");
    }
    for (_, digest) in gm_bench::provenance::SOURCE_DIGESTS {
        assert_eq!(digest.len(), 12, "the build script hashed the sources");
    }
    // The code enters both keys: another digest of the family's crate retrains, another digest
    // of gm-bench only re-evaluates.
    use gm_bench::runner::{config_hash, result_hash, result_key, training_key};
    let entry = gm_bench::suite::suite(gm_bench::suite::Profile::Quick)
        .unwrap()
        .into_iter()
        .find(|e| e.id == "flow/realnvp/two_moons")
        .unwrap();
    assert_eq!(config_hash(&entry), training_key(&entry, &flow));
    assert_ne!(
        training_key(&entry, &flow),
        training_key(&entry, &flow.replace("gm-flow:", "gm-flow:0"))
    );
    let evaluated = result_code_version("flow");
    assert_eq!(result_hash(&entry), result_key(&entry, &evaluated));
    assert_ne!(
        result_key(&entry, &evaluated),
        result_key(&entry, &format!("{evaluated}0"))
    );
}

/// Capabilities come from the model's behaviour: a flow's likelihood repeats exactly and its
/// decoder inverts its encoder; a diffusion model's stratified bound changes with the seed; a
/// GAN has neither likelihood nor encoder.
#[test]
fn capabilities_are_measured_not_declared() {
    use gm_bench::runner::measure_capabilities;
    let data =
        gm_core::data::load_named("two_moons", gm_core::tch::Device::Cpu, 256, 256, 0).unwrap();
    let registry = gm_bench::suite::registry();
    let build = |name: &str| {
        let run = registry.load_run(name).unwrap();
        gm_core::device::seed_everything(0);
        run.model
            .build(&data.info(), gm_core::tch::Device::Cpu)
            .unwrap()
    };
    let flow = measure_capabilities(
        build("flow/realnvp_toy").as_ref(),
        &data.test.x,
        &data,
        None,
    );
    assert_eq!(flow.likelihood, "exact density", "{flow:?}");
    assert!(
        flow.latent_inference && flow.invertible == Some(true),
        "{flow:?}"
    );
    assert!(flow.likelihood_estimator.is_none());

    let diffusion = measure_capabilities(
        build("diffusion/toy_mlp").as_ref(),
        &data.test.x,
        &data,
        Some(1000),
    );
    assert_eq!(diffusion.likelihood, "stochastic bound", "{diffusion:?}");
    assert!(diffusion
        .likelihood_estimator
        .as_deref()
        .unwrap()
        .contains("stratified"));
    assert!(
        diffusion.latent_inference && diffusion.reconstruction_error.is_some(),
        "{diffusion:?}"
    );
    assert!(!diffusion.one_pass_sampling);

    let gan = measure_capabilities(build("gan/toy_mlp").as_ref(), &data.test.x, &data, None);
    assert_eq!(gan.likelihood, "none");
    assert!(
        !gan.latent_inference && gan.invertible.is_none() && gan.error.is_none(),
        "{gan:?}"
    );
}

/// A profile's overrides patch the run file (and so its hash); misspelt paths are refused.
#[test]
fn profile_overrides_patch_the_run_file_and_refuse_misspellings() {
    use gm_bench::suite::{registry, suite_from, Profile};
    let suite = |overrides: &str| {
        format!(
            "[[entry]]\nmodel = \"unet\"\nconfig = \"diffusion/mnist_unet\"\nsteps = {{ quick = 10, default = 20, full = 30 }}\noverrides = {{ quick = {{ {overrides} }} }}\n"
        )
    };
    let patched = suite_from(
        &suite("\"model.sampler.steps\" = 7, \"model.denoiser.channels\" = 8"),
        "t",
        Profile::Quick,
        &registry(),
    )
    .unwrap();
    let table: toml::Table = toml::from_str(&patched[0].config_text).unwrap();
    assert_eq!(table["model"]["sampler"]["steps"].as_integer(), Some(7));
    assert_eq!(table["model"]["denoiser"]["channels"].as_integer(), Some(8));
    // Other profiles keep the run file's values.
    let plain = suite_from(
        &suite("\"model.sampler.steps\" = 7"),
        "t",
        Profile::Default,
        &registry(),
    )
    .unwrap();
    let table: toml::Table = toml::from_str(&plain[0].config_text).unwrap();
    assert_eq!(table["model"]["sampler"]["steps"].as_integer(), Some(50));
    for (bad, named) in [
        ("\"model.sampler.stepz\" = 7", "stepz"),
        ("\"model.nothing.steps\" = 7", "nothing"),
        ("\"model.sampler.steps\" = -3", "steps"),
    ] {
        let err = suite_from(&suite(bad), "t", Profile::Quick, &registry())
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{bad}: {err}");
    }
}

/// The suite files shipped beside the built-in one parse for every profile.
#[test]
fn shipped_suite_files_parse() {
    use gm_bench::suite::{registry, suite_from, Profile};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("suites");
    for file in std::fs::read_dir(&dir).unwrap() {
        let path = file.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for profile in [Profile::Quick, Profile::Default, Profile::Full] {
            let entries =
                suite_from(&text, &path.display().to_string(), profile, &registry()).unwrap();
            assert!(!entries.is_empty(), "{}", path.display());
        }
    }
}
