//! No panic on user input, whatever it is: every shipped model of every family, driven only
//! through the public interface with random shapes, dtypes, values, labels and sampling options.
//! Errors are fine; a panic fails the test and names the call.

use gm_core::model::{Batch, GenerativeModel, SampleOptions};
use gm_core::spec::DataInfo;
use gm_core::tch::{Device, Kind, Tensor};
use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Every shipped run file's model, built for its data set.
fn models() -> Vec<(String, DataInfo, Box<dyn GenerativeModel>)> {
    let registry = gm_bench::suite::registry();
    registry
        .shipped_names()
        .into_iter()
        .map(|name| {
            let run = registry.load_run(name).unwrap();
            let info = gm_core::data::named_info(&run.dataset).unwrap();
            gm_core::tch::manual_seed(0);
            let model = run.model.build(&info, Device::Cpu).unwrap();
            (name.to_string(), info, model)
        })
        .collect()
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

#[test]
fn no_public_call_panics_on_any_input() {
    gm_core::tch::set_num_threads(1);
    let mut models = models();
    for (name, info, model) in models.iter_mut() {
        // A runner per model: one runner counts its cases across runs.
        // Models that sample by hundreds of network passes (one per pixel, token or solver
        // step) get fewer cases, so that the suite stays within its time budget.
        let sequential = name.starts_with("autoregressive/") || name.starts_with("diffusion/");
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: if sequential { 20 } else { 48 },
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let model = std::cell::RefCell::new(model);
        let result = runner.run(&input(), |input| {
            let (x, labels) = tensors(&input, info);
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
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
}
