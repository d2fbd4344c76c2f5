//! No panic on user input, whatever it is: every shipped model of every family, driven only
//! through the public interface with random shapes, dtypes, values, labels and sampling options.
//! Errors are fine; a panic fails the test and names the call.

use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Shipped run file `name`'s model, built for its data set. Builds take a lock, so that two
/// builds never interleave their seeding and drawing; another worker's draws may still fall
/// between them, so weights can differ from run to run, as the random inputs do (proptest
/// seeds its runners at random): this test looks for panics, which do not depend on either.
fn model(name: &str) -> (DataInfo, Box<dyn GenerativeModel>) {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let registry = gm_bench::suite::registry();
    let run = registry.load_run(name).unwrap();
    let info = gm_core::data::named_info(&run.dataset).unwrap();
    gm_core::tch::manual_seed(0);
    let model = run.model.build(&info, Device::Cpu).unwrap();
    (info, model)
}

#[derive(Debug, Clone)]
struct Input {
    event_ok: bool,
    batch: i64,
    shape: Vec<i64>,
    kind: usize,
    value: usize,
    labels: usize,
    n: i64,
    temperature: usize,
}

fn input() -> impl Strategy<Value = Input> {
    (
        prop::bool::weighted(0.75),
        0i64..4,
        prop::collection::vec(0i64..5, 0..4),
        0usize..6,
        0usize..8,
        0usize..5,
        -1i64..3,
        0usize..4,
    )
        .prop_map(
            |(event_ok, batch, shape, kind, value, labels, n, temperature)| Input {
                event_ok,
                batch,
                shape,
                kind,
                value,
                labels,
                n,
                temperature,
            },
        )
}

const KINDS: [Kind; 6] = [
    Kind::Float,
    Kind::Double,
    Kind::Int64,
    Kind::Uint8,
    Kind::Bool,
    Kind::Half,
];
const VALUES: [f64; 8] = [0.0, 1.0, f64::NAN, f64::INFINITY, 1e30, -1.0, 0.5, 255.0];
const TEMPERATURES: [f64; 4] = [1.0, 0.0, -1.0, f64::NAN];

fn tensors(input: &Input, info: &DataInfo) -> (Tensor, Option<Tensor>) {
    let mut shape = vec![input.batch];
    if input.event_ok {
        shape.extend(info.event_shape.iter().copied());
    } else {
        shape.extend(input.shape.iter().copied());
    }
    let x = Tensor::full(
        shape.as_slice(),
        VALUES[input.value],
        (Kind::Double, Device::Cpu),
    );
    let x = if KINDS[input.kind] == Kind::Double || VALUES[input.value].is_finite() {
        x.to_kind(KINDS[input.kind])
    } else {
        x
    };
    let labels = match input.labels {
        0 => None,
        1 => Some(Tensor::zeros([input.batch], (Kind::Int64, Device::Cpu))),
        2 => Some(Tensor::full([input.batch], 99, (Kind::Int64, Device::Cpu))),
        3 => Some(Tensor::zeros([input.batch + 1], (Kind::Int64, Device::Cpu))),
        _ => Some(Tensor::zeros([input.batch], (Kind::Float, Device::Cpu))),
    };
    (x, labels)
}

fn no_panic<T>(what: &str, f: impl FnOnce() -> gm_core::Result<T>) -> Result<(), TestCaseError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => Ok(()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("{what} panicked: {msg}")))
        }
    }
}

/// Each shipped model through [`check_model`], on as many threads as the machine has cores
/// (libtorch itself on one each): the models are independent, and one after another they take
/// most of the suite's time budget. Each worker takes the next model from a shared list.
#[test]
fn no_public_call_panics_on_any_input() {
    gm_core::tch::set_num_threads(1);
    let mut names: Vec<String> = gm_bench::suite::registry()
        .shipped_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    // The slow ones first, so that no worker starts one while the others are finishing.
    names.sort_by_key(|name| !samples_sequentially(name));
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let failures: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut failures = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(name) = names.get(i) else { break };
                        let start = Instant::now();
                        if let Err(e) = check_model(name) {
                            failures.push(format!("{name}: {e}"));
                        }
                        // Which models cost the time, for whoever keeps the suite in budget.
                        eprintln!(
                            "no_panics: {name} in {:.1} s",
                            start.elapsed().as_secs_f64()
                        );
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a worker of the no-panic test panicked"))
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Models that sample by hundreds of network passes (one per pixel, token or solver step).
fn samples_sequentially(name: &str) -> bool {
    [
        "autoregressive/",
        "diffusion/",
        "flow_matching/",
        "masked_diffusion/",
    ]
    .iter()
    .any(|family| name.starts_with(family))
}

/// Sequential samplers get fewer cases, so that the suite stays within its time budget; the
/// Diagonal BiLSTM, whose every pixel is a step of two LSTMs over all rows (about 70 s for 20
/// cases), fewer still.
fn cases_for(name: &str) -> u32 {
    if name.contains("pixelrnn_diagonal") {
        8
    } else if samples_sequentially(name) {
        20
    } else {
        48
    }
}

/// Random inputs through every public call of shipped model `name`; an error describes the
/// first call that panicked.
fn check_model(name: &str) -> Result<(), String> {
    let (info, model) = model(name);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases_for(name),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let model = std::cell::RefCell::new(model);
    let result = runner.run(&input(), |input| {
        let (x, labels) = tensors(&input, &info);
        let mut m = model.borrow_mut();
        let batch = Batch {
            x: x.shallow_clone(),
            labels: labels.as_ref().map(|l| l.shallow_clone()),
        };
        no_panic(&format!("{name} train_step {input:?}"), || {
            m.train_step(&batch)
        })?;
        no_panic(&format!("{name} log_likelihood {input:?}"), || {
            gm_core::tch::no_grad(|| m.log_likelihood(&x))
        })?;
        no_panic(&format!("{name} log_likelihood_given {input:?}"), || {
            gm_core::tch::no_grad(|| m.log_likelihood_given(&x, labels.as_ref()))
        })?;
        no_panic(&format!("{name} encode {input:?}"), || m.encode(&x))?;
        let mut options = SampleOptions::new().temperature(TEMPERATURES[input.temperature]);
        options.labels = labels.as_ref().map(|l| l.shallow_clone());
        no_panic(&format!("{name} sample_with {input:?}"), || {
            m.sample_with(input.n, &options)
        })?;
        Ok(())
    });
    result.map_err(|e| e.to_string())
}
