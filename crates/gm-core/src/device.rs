//! Devices and seeds.
//!
//! One seed fixes both libtorch's generator and the Rust-side generator used for shuffling, so
//! the same seed gives the same numbers on CPU. Training derives a fresh seed per step from the
//! run seed ([`derive_seed`]); that keeps a resumed run identical to an uninterrupted one
//! without saving libtorch's generator state.

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::OnceLock;
use tch::Device;

use crate::{GmError, Result};

/// Loads `libtorch_cuda` when an NVIDIA driver is present.
///
/// The linker drops `libtorch_cuda` from binaries that reference none of its symbols (the
/// default "as-needed" behaviour), and then libtorch reports no CUDA even on a GPU machine.
/// Loading the library at run time registers its CUDA hooks; on a machine without a driver
/// nothing is loaded, so CPU-only runs do not pay for the large CUDA libraries.
pub fn load_cuda_backend() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        if !std::path::Path::new("/proc/driver/nvidia").exists()
            && !std::path::Path::new("/dev/nvidiactl").exists()
        {
            return false;
        }
        #[cfg(unix)]
        {
            use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
            // SAFETY: loading libtorch_cuda runs its static initialisers, which only register
            // CUDA kernels and hooks with the already-loaded libtorch.
            match unsafe { Library::open(Some("libtorch_cuda.so"), RTLD_NOW | RTLD_GLOBAL) } {
                Ok(lib) => {
                    // Keep it loaded for the life of the process.
                    std::mem::forget(lib);
                    true
                }
                Err(_) => false,
            }
        }
        #[cfg(not(unix))]
        {
            false
        }
    })
}

/// The device named by `GM_DEVICE` (`cpu`, `cuda`, `cuda:N`), else CUDA if available, else CPU.
pub fn default_device() -> Result<Device> {
    match std::env::var("GM_DEVICE") {
        Ok(name) if !name.is_empty() => parse_device(&name),
        _ => {
            load_cuda_backend();
            Ok(Device::cuda_if_available())
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `mps`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    let device = match name.as_str() {
        "cpu" => Device::Cpu,
        "mps" => {
            if !tch::utils::has_mps() {
                return Err(GmError::config(
                        "device",
                        "mps requested but this libtorch has no Metal (MPS) backend; expected cpu, cuda or cuda:N",
                    ));
            }
            Device::Mps
        }
        "cuda" | "gpu" => Device::Cuda(0),
        other => {
            match other.strip_prefix("cuda:") {
                Some(index) => Device::Cuda(index.parse().map_err(|_| {
                    GmError::config("device", format!("bad CUDA index in {other:?}"))
                })?),
                None => {
                    return Err(GmError::config(
                        "device",
                        format!("unknown device {other:?}; expected cpu, cuda or cuda:N"),
                    ))
                }
            }
        }
    };
    if let Device::Cuda(i) = device {
        load_cuda_backend();
        let count = tch::Cuda::device_count();
        if i as i64 >= count {
            return Err(GmError::config(
                "device",
                format!("cuda:{i} requested but {count} CUDA device(s) are visible"),
            ));
        }
    }
    Ok(device)
}

/// Seeds libtorch (CPU and every GPU) and returns a Rust generator seeded the same way.
pub fn seed_everything(seed: u64) -> ChaCha8Rng {
    seed_torch(seed);
    ChaCha8Rng::seed_from_u64(derive_seed(seed, u64::MAX))
}

/// Seeds libtorch's generators only.
pub fn seed_torch(seed: u64) {
    // libtorch takes a signed seed; reinterpreting the bits keeps every u64 distinct.
    tch::manual_seed(seed as i64);
    if tch::Cuda::is_available() {
        tch::Cuda::manual_seed_all(seed);
    }
}

/// A well-mixed seed for stream `stream` of run `seed` (SplitMix64 of both).
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    splitmix64(seed ^ splitmix64(stream))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// libtorch's intra-op thread count when the process started (one per core it may use).
pub fn default_threads() -> i32 {
    static DEFAULT: OnceLock<i32> = OnceLock::new();
    *DEFAULT.get_or_init(tch::get_num_threads)
}

/// The intra-op thread count gm trains a model with on the CPU: one thread for a small model of
/// small vectors (under 200,000 parameters, examples of at most 16 values), libtorch's default
/// otherwise.
///
/// Measured on 2 cores (`cargo xtask speed`): a NICE flow on 2-D points (18k parameters, batch
/// 128) steps in 2.1–2.3 ms with one thread and 2.2–2.8 ms with two, since its operations are
/// too small to split and the second thread only adds synchronisation; RealNVP (139k parameters,
/// batch 256) is as fast or faster on one; the MNIST models gain 1.3–1.7× from the second core.
/// The choice depends on the model alone, so a resumed run computes with the same count.
pub fn threads_for(parameters: i64, example_elements: i64) -> i32 {
    // Read (and so fix) the process's default before any caller sets a count.
    let default = default_threads();
    if parameters < 200_000 && example_elements <= 16 {
        1
    } else {
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn same_seed_same_numbers() {
        seed_everything(7);
        let a = Tensor::randn([5], (Kind::Float, Device::Cpu));
        seed_everything(7);
        let b = Tensor::randn([5], (Kind::Float, Device::Cpu));
        assert!(a.equal(&b));
        seed_everything(8);
        let c = Tensor::randn([5], (Kind::Float, Device::Cpu));
        assert!(!a.equal(&c));
    }

    #[test]
    fn derived_seeds_differ() {
        assert_ne!(derive_seed(1, 0), derive_seed(1, 1));
        assert_ne!(derive_seed(1, 0), derive_seed(2, 0));
        assert_eq!(derive_seed(3, 4), derive_seed(3, 4));
    }

    #[test]
    fn parse_device_names() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
    }
}
