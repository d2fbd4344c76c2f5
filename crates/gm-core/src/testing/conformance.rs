//! The conformance harness: the laws every model of every family obeys, checked through
//! nothing but its [`ModelSpec`] and the [`GenerativeModel`] interface. Each family's tests call
//! [`check_conformance`] for every shipped config (shrunk to a tiny size where needed).
//!
//! 1. **Save and load under another seed**: a model trained a little and saved, loaded into a
//!    model built with another seed, gives bit-identical log-likelihoods, states and samples
//!    (same sampling seed). A model whose `state()` misses something that defines it fails.
//! 2. **Exact resume**: `N` steps straight equal `N/2` steps, a checkpoint, a fresh model built
//!    with another seed, and `N/2` more steps, bit for bit on CPU.
//! 3. **Batch independence**: changing the other examples of a batch leaves an example's
//!    log-likelihood unchanged, and a batch scores as its two halves do (within the estimator's
//!    own noise, measured, for stochastic estimates).
//! 4. **Bad input refused**: a NaN, an infinity, a value outside a discrete data space, an
//!    empty batch or an out-of-range label is an error naming what was found, and the model's
//!    state is unchanged.
//! 5. **Data-space fit**: [`assert_refuses_data`] checks that a spec refuses a data set it
//!    cannot describe.

use crate::data::ValueKind;
use crate::model::{Batch, GenerativeModel, SampleOptions};
use crate::spec::{DataInfo, ModelSpec};
use crate::train::{TrainConfig, Trainer};
use crate::GmError;
use tch::{Device, Kind, Tensor};

/// One spec to check, with data of its data set's shape.
pub struct ConformanceCase<'a> {
    /// Names the case in failure messages.
    pub name: &'a str,
    pub spec: &'a dyn ModelSpec,
    pub data: &'a DataInfo,
    /// Valid examples `[n] ++ event_shape`, `n ≥ 4 · batch_size` is best (at least `2 · batch`).
    pub x: &'a Tensor,
    /// Labels `[n]` where the data set has classes.
    pub labels: Option<&'a Tensor>,
    pub batch_size: i64,
    /// Training steps of the resume check (even, ≥ 2).
    pub steps: u64,
}

fn build(case: &ConformanceCase, seed: u64) -> Box<dyn GenerativeModel> {
    crate::device::seed_torch(seed);
    let model = case
        .spec
        .build(case.data, Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: the spec does not build: {e}", case.name));
    assert_eq!(
        model.family(),
        case.spec.family(),
        "{}: the model reports another family than its spec",
        case.name
    );
    model
}

/// A deep copy of a model's state, sorted by name.
pub fn state_snapshot(model: &dyn GenerativeModel) -> Vec<(String, Tensor)> {
    let mut s: Vec<(String, Tensor)> = model
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    s.sort_by(|a, b| a.0.cmp(&b.0));
    s
}

/// Two states hold the same names and bit-identical tensors.
pub fn assert_states_identical(a: &[(String, Tensor)], b: &[(String, Tensor)], what: &str) {
    let names_a: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).collect();
    let names_b: Vec<&str> = b.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names_a, names_b,
        "{what}: the states hold different tensors"
    );
    for ((name, ta), (_, tb)) in a.iter().zip(b) {
        assert_eq!(ta.size(), tb.size(), "{what}: {name} changed shape");
        assert_eq!(ta.kind(), tb.kind(), "{what}: {name} changed dtype");
        assert!(ta.equal(tb), "{what}: tensor {name} differs");
    }
}

fn states_differ(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() != b.len()
        || a.iter()
            .zip(b)
            .any(|((na, ta), (nb, tb))| na != nb || ta.size() != tb.size() || !ta.equal(tb))
}

fn rows(x: &Tensor, start: i64, len: i64) -> Tensor {
    x.narrow(0, start, len)
}

fn batch_of(case: &ConformanceCase, start: i64, len: i64) -> Batch {
    Batch {
        x: rows(case.x, start, len),
        labels: case.labels.map(|l| rows(l, start, len)),
    }
}

fn ll(
    model: &dyn GenerativeModel,
    x: &Tensor,
    labels: Option<&Tensor>,
    seed: u64,
) -> Option<Vec<f64>> {
    crate::device::seed_torch(seed);
    tch::no_grad(|| model.log_likelihood_given(x, labels))
        .unwrap_or_else(|e| panic!("log_likelihood failed on valid data: {e}"))
        .map(|t| Vec::<f64>::try_from(&t.to_kind(Kind::Double)).expect("a [batch] tensor"))
}

fn temp_file(case: &ConformanceCase, what: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let safe: String = case
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::env::temp_dir().join(format!(
        "gm-conformance-{}-{safe}-{what}-{nanos}.safetensors",
        std::process::id()
    ))
}

/// Runs every check of the module documentation on `case`, panicking with the case's name and
/// the law that failed.
pub fn check_conformance(case: &ConformanceCase) {
    let n = case.x.size()[0];
    assert!(
        n >= 2 * case.batch_size && case.steps >= 2 && case.steps % 2 == 0,
        "{}: the harness needs at least two batches of data and an even number of steps",
        case.name
    );
    check_save_load(case);
    check_resume(case);
    check_batch_independence(case);
    check_bad_input(case);
}

fn check_save_load(case: &ConformanceCase) {
    let name = case.name;
    let mut a = build(case, 1);
    let a_fresh = state_snapshot(a.as_ref());
    for step in 0..2 {
        crate::device::seed_torch(100 + step);
        let b = batch_of(case, step as i64 * case.batch_size, case.batch_size);
        a.train_step(&b)
            .unwrap_or_else(|e| panic!("{name}: train_step failed on valid data: {e}"));
    }
    let path = temp_file(case, "save");
    a.save(&path)
        .unwrap_or_else(|e| panic!("{name}: save failed: {e}"));
    let mut b = build(case, 2);
    assert!(
        states_differ(&a_fresh, &state_snapshot(b.as_ref())),
        "{name}: two seeds built identical models, so the save/load check could not fail"
    );
    b.load(&path)
        .unwrap_or_else(|e| panic!("{name}: load failed: {e}"));
    let _ = std::fs::remove_file(&path);
    assert_states_identical(
        &state_snapshot(a.as_ref()),
        &state_snapshot(b.as_ref()),
        &format!("{name}: state after save and load"),
    );
    let x = rows(case.x, 0, case.batch_size);
    let labels = case.labels.map(|l| rows(l, 0, case.batch_size));
    let (la, lb) = (
        ll(a.as_ref(), &x, labels.as_ref(), 7),
        ll(b.as_ref(), &x, labels.as_ref(), 7),
    );
    assert_eq!(
        la, lb,
        "{name}: log-likelihoods differ after loading into a model built with another seed: the state misses something that defines the model"
    );
    let options = SampleOptions::new().seed(11);
    match (a.sample_with(4, &options), b.sample_with(4, &options)) {
        (Ok(sa), Ok(sb)) => {
            assert_eq!(
                sa.size()[1..],
                case.data.event_shape[..],
                "{name}: samples are not [n] ++ event_shape"
            );
            assert!(
                sa.equal(&sb),
                "{name}: samples with the same seed differ after save and load"
            );
        }
        (Err(GmError::Unsupported(_)), Err(GmError::Unsupported(_))) => {}
        (ra, rb) => panic!(
            "{name}: sampling failed: {:?} / {:?}",
            ra.err().map(|e| e.to_string()),
            rb.err().map(|e| e.to_string())
        ),
    }
}

fn check_resume(case: &ConformanceCase) {
    let name = case.name;
    let config = |steps: u64| TrainConfig {
        steps,
        batch_size: case.batch_size,
        seed: 5,
        log_every: 1,
        checkpoint_every: 0,
    };
    let mut straight = build(case, 3);
    Trainer::new(config(case.steps))
        .expect("valid train config")
        .fit(straight.as_mut(), case.x, case.labels, |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: training failed: {e}"));
    let path = temp_file(case, "resume");
    let mut first = build(case, 3);
    Trainer::new(config(case.steps / 2))
        .expect("valid train config")
        .with_checkpoint(&path)
        .fit(first.as_mut(), case.x, case.labels, |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: training the first half failed: {e}"));
    drop(first);
    let mut resumed = build(case, 4);
    Trainer::new(config(case.steps))
        .expect("valid train config")
        .with_checkpoint(&path)
        .fit(resumed.as_mut(), case.x, case.labels, |_, _| {})
        .unwrap_or_else(|e| panic!("{name}: resuming failed: {e}"));
    let _ = std::fs::remove_file(&path);
    assert_states_identical(
        &state_snapshot(straight.as_ref()),
        &state_snapshot(resumed.as_ref()),
        &format!(
            "{name}: {} steps straight against {} + {} with a restart",
            case.steps,
            case.steps / 2,
            case.steps / 2
        ),
    );
}

fn check_batch_independence(case: &ConformanceCase) {
    let name = case.name;
    let mut model = build(case, 6);
    crate::device::seed_torch(60);
    model
        .train_step(&batch_of(case, 0, case.batch_size))
        .unwrap_or_else(|e| panic!("{name}: train_step failed: {e}"));
    let m = model.as_ref();
    let size = 2 * case.batch_size.min(case.x.size()[0] / 2).max(1);
    let half = size / 2;
    let x = rows(case.x, 0, size);
    let labels = case.labels.map(|l| rows(l, 0, size));
    let Some(full) = ll(m, &x, labels.as_ref(), 9) else {
        return; // no likelihood
    };
    // (a) Other examples changed, the same random draws: example i's value must not move.
    let n = case.x.size()[0];
    let other_start = if n >= 2 * size { size } else { n - half };
    let x_mod = Tensor::cat(
        &[rows(&x, 0, half), rows(case.x, other_start, half).flip([0])],
        0,
    );
    let l_mod = labels.as_ref().map(|l| {
        Tensor::cat(
            &[
                rows(l, 0, half),
                rows(case.labels.expect("labels"), other_start, half).flip([0]),
            ],
            0,
        )
    });
    let changed = ll(m, &x_mod, l_mod.as_ref(), 9).expect("a likelihood");
    for i in 0..half as usize {
        let tol = 1e-6 * (1.0 + full[i].abs());
        assert!(
            (full[i] - changed[i]).abs() <= tol,
            "{name}: example {i}'s log-likelihood moved from {} to {} when other examples of its batch changed",
            full[i],
            changed[i]
        );
    }
    // (b) A batch scores as its halves, within the estimator's own noise (zero for exact ones).
    let again = ll(m, &x, labels.as_ref(), 10).expect("a likelihood");
    let noise = full
        .iter()
        .zip(&again)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    let mut halves = ll(
        m,
        &rows(&x, 0, half),
        labels.as_ref().map(|l| rows(l, 0, half)).as_ref(),
        9,
    )
    .expect("a likelihood");
    halves.extend(
        ll(
            m,
            &rows(&x, half, half),
            labels.as_ref().map(|l| rows(l, half, half)).as_ref(),
            9,
        )
        .expect("a likelihood"),
    );
    for i in 0..size as usize {
        let tol = 4.0 * noise + 1e-4 * (1.0 + full[i].abs());
        assert!(
            (full[i] - halves[i]).abs() <= tol,
            "{name}: example {i} scores {} in a batch of {size} but {} in a half batch (tolerance {tol:e})",
            full[i],
            halves[i]
        );
    }
}

/// The bad batches of a data space: (what, batch, text the error must contain).
fn bad_batches(
    case: &ConformanceCase,
    label_classes: i64,
) -> Vec<(&'static str, Batch, &'static str)> {
    let good = batch_of(case, 0, case.batch_size);
    let with_value = |v: f64| {
        let x = good.x.to_kind(Kind::Float).copy();
        let _ = x.reshape([-1]).get(0).fill_(v);
        Batch {
            x,
            labels: good.labels.as_ref().map(|l| l.shallow_clone()),
        }
    };
    let mut cases = vec![
        ("a NaN", with_value(f64::NAN), "NaN"),
        ("an infinity", with_value(f64::INFINITY), "infinite"),
        (
            "a negative infinity",
            with_value(f64::NEG_INFINITY),
            "infinite",
        ),
        (
            "an empty batch",
            Batch {
                x: rows(&good.x, 0, 0),
                labels: good.labels.as_ref().map(|l| rows(l, 0, 0)),
            },
            "non-empty",
        ),
    ];
    if let ValueKind::Discrete { levels } = case.data.values {
        cases.push((
            "a value above the top level",
            with_value(levels as f64),
            "outside",
        ));
        cases.push(("a negative value", with_value(-1.0), "outside"));
        cases.push(("a fractional value", with_value(0.5), "outside"));
    }
    if label_classes > 0 {
        if let Some(l) = &good.labels {
            let bad = l.copy();
            let _ = bad.get(0).fill_(label_classes);
            cases.push((
                "a label out of range",
                Batch {
                    x: good.x.shallow_clone(),
                    labels: Some(bad),
                },
                "labels",
            ));
        }
    }
    cases
}

fn check_bad_input(case: &ConformanceCase) {
    let name = case.name;
    let mut model = build(case, 8);
    crate::device::seed_torch(80);
    model
        .train_step(&batch_of(case, 0, case.batch_size))
        .unwrap_or_else(|e| panic!("{name}: train_step failed: {e}"));
    for (what, batch, needle) in bad_batches(case, model.label_classes()) {
        let before = state_snapshot(model.as_ref());
        let result = model.train_step(&batch);
        let label_case = what.contains("label");
        match result {
            Ok(_) => panic!("{name}: train_step accepted a batch with {what}"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(needle),
                    "{name}: the error for a batch with {what} does not say {needle:?}: {msg}"
                );
            }
        }
        assert_states_identical(
            &before,
            &state_snapshot(model.as_ref()),
            &format!("{name}: state after a refused batch with {what}"),
        );
        // Labels only matter to conditional models' likelihoods; data always do.
        if !label_case {
            let refused =
                tch::no_grad(|| model.log_likelihood_given(&batch.x, batch.labels.as_ref()));
            if let Ok(Some(_)) = refused {
                panic!("{name}: log_likelihood accepted a batch with {what}");
            }
        }
    }
}

/// `n` valid examples of a data set described by `info`, drawn after seeding libtorch with 42:
/// two-moons points for continuous 2D data, standard Normal values for other continuous
/// shapes, and uniform integers `0..levels` for discrete data.
pub fn example_data(info: &DataInfo, n: i64) -> Tensor {
    crate::device::seed_torch(42);
    let shape: Vec<i64> = std::iter::once(n)
        .chain(info.event_shape.iter().copied())
        .collect();
    match info.values {
        ValueKind::Continuous if info.event_shape == [2] => crate::data::toy::ToyDataset::TwoMoons
            .sample(n, Device::Cpu)
            .expect("two-moons points"),
        ValueKind::Continuous => Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)),
        ValueKind::Discrete { levels } => {
            Tensor::randint(levels as i64, shape.as_slice(), (Kind::Float, Device::Cpu))
        }
    }
}

/// Runs [`check_conformance`] on `spec` for the named data set with `n` rows of
/// [`example_data`] (and uniform labels where the set has classes), in batches of `batch_size`
/// over `steps` training steps: what every family's "every shipped config conforms" test does
/// for each of its run files.
pub fn check_conformance_on(
    name: &str,
    spec: &dyn ModelSpec,
    dataset: &str,
    n: i64,
    batch_size: i64,
    steps: u64,
) {
    let info = crate::data::named_info(dataset)
        .unwrap_or_else(|e| panic!("{name}: unknown data set {dataset}: {e}"));
    let x = example_data(&info, n);
    let labels = Tensor::randint(info.classes.max(1), [n], (Kind::Int64, Device::Cpu));
    check_conformance(&ConformanceCase {
        name,
        spec,
        data: &info,
        x: &x,
        labels: (info.classes > 0).then_some(&labels),
        batch_size,
        steps,
    });
}

/// `spec` refuses to build for `data`, with an error that contains `needle` (e.g. the key).
pub fn assert_refuses_data(spec: &dyn ModelSpec, data: &DataInfo, needle: &str) {
    match spec.build(data, Device::Cpu) {
        Ok(_) => panic!("{spec:?} built a model for data it cannot describe: {data:?}"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "the refusal does not mention {needle:?}: {e}"
        ),
    }
}
