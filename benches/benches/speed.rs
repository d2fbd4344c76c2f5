//! Criterion benches of the speed cases that `cargo xtask speed` compares with PyTorch (see
//! `lib.rs`): one training step, or one sampling call, per case.
//!
//! Run with `eval "$(cargo xtask env)" && cargo bench -p gm-benches --bench speed`.

use criterion::{criterion_group, criterion_main, Criterion};
use gm_benches::{build_case, CASES};
use gm_core::tch::{self, Device};

fn bench_cases(c: &mut Criterion) {
    let mut group = c.benchmark_group("speed");
    group.sample_size(10);
    for (name, _) in CASES {
        let mut case = build_case(name, Device::Cpu).expect("case");
        tch::set_num_threads(case.threads());
        group.bench_function(*name, |b| b.iter(|| case.run().expect("step")));
    }
    group.finish();
}

criterion_group!(benches, bench_cases);
criterion_main!(benches);
