//! Toy densities integrate to 1, and their samples follow them.

use gm_core::data::toy::ToyDataset;
use gm_core::testing::assert_density_integrates_2d;
use tch::{Device, Kind};

#[test]
fn toy_densities_integrate_to_one() {
    for set in ToyDataset::ALL {
        let (lo, hi) = set.bounds();
        // The checkerboard's density jumps at cell edges, so the trapezoid rule converges only
        // linearly there and needs a fine grid; the smooth sets are accurate on coarser ones
        // (grid spacing well under their noise scale), which keeps the quadrature cheap.
        let n = match set {
            ToyDataset::Checkerboard => 1201,
            ToyDataset::EightGaussians => 401,
            ToyDataset::TwoMoons => 301,
            ToyDataset::TwoSpirals => 241,
        };
        let integral =
            assert_density_integrates_2d(|x| set.log_prob(x).unwrap(), lo - 1.0, hi + 1.0, n, 0.01);
        eprintln!("{}: {integral}", set.name());
    }
}

/// Samples are likely under the density: the Monte Carlo entropy from samples agrees with the
/// entropy computed by integrating -p ln p on a grid.
#[test]
fn sample_entropy_matches_grid_entropy() {
    tch::manual_seed(0);
    for set in [ToyDataset::EightGaussians, ToyDataset::TwoMoons] {
        let (lo, hi) = set.bounds();
        let n = 301;
        let axis = tch::Tensor::linspace(lo - 1.0, hi + 1.0, n, (Kind::Double, Device::Cpu));
        let grid = tch::Tensor::meshgrid_indexing(&[&axis, &axis], "ij");
        let pts = tch::Tensor::stack(&[grid[0].reshape([-1]), grid[1].reshape([-1])], 1);
        let lp = set.log_prob(&pts).unwrap();
        let integrand = (lp.exp() * -&lp).nan_to_num(0.0, 0.0, 0.0).reshape([n, n]);
        let h_grid =
            tch::Tensor::trapezoid_x(&tch::Tensor::trapezoid_x(&integrand, &axis, 1), &axis, 0)
                .double_value(&[]);
        let (h_mc, se) = set.entropy(20_000, Device::Cpu).unwrap();
        assert!(
            (h_mc - h_grid).abs() < 5.0 * se + 0.01,
            "{}: sample entropy {h_mc} ± {se} vs grid {h_grid}",
            set.name()
        );
    }
}
