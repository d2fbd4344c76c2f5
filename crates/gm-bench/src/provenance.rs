//! Where a result came from: the code that trained and evaluated it, the machine, the date.
//!
//! The build script digests each crate's sources. A run's *training* is keyed by the digests of
//! gm-core and of its family's crates (a change there retrains the family's runs, and nothing
//! else); its *result* adds gm-bench's digest (a change to the evaluation re-evaluates the
//! stored checkpoints without retraining them).

use serde::{Deserialize, Serialize};

/// The source digest of each crate, as the build script computed it.
pub const SOURCE_DIGESTS: [(&str, &str); 8] = [
    ("gm-core", env!("GM_SOURCE_GM_CORE")),
    ("gm-flow", env!("GM_SOURCE_GM_FLOW")),
    ("gm-vae", env!("GM_SOURCE_GM_VAE")),
    ("gm-gan", env!("GM_SOURCE_GM_GAN")),
    ("gm-diffusion", env!("GM_SOURCE_GM_DIFFUSION")),
    ("gm-autoregressive", env!("GM_SOURCE_GM_AUTOREGRESSIVE")),
    ("gm-bench", env!("GM_SOURCE_GM_BENCH")),
    // The gm-bench module that trains family `vq_vae_prior`.
    ("gm-bench/vq_prior", env!("GM_SOURCE_GM_BENCH_VQ_PRIOR")),
];

/// The crates that implement a registered family; `None` for a family this table does not
/// know (a test's stub model), whose runs are then keyed by every crate's code.
pub fn family_crates(family: &str) -> Option<&'static [&'static str]> {
    match family {
        "flow" => Some(&["gm-flow"]),
        "vae" | "vq_vae" => Some(&["gm-vae"]),
        "gan" => Some(&["gm-gan"]),
        "diffusion" | "flow_matching" | "masked_diffusion" => Some(&["gm-diffusion"]),
        "autoregressive" => Some(&["gm-autoregressive"]),
        // A VQ-VAE (gm-vae) with an autoregressive code prior, trained by a gm-bench module.
        "vq_vae_prior" => Some(&["gm-vae", "gm-autoregressive", "gm-bench/vq_prior"]),
        _ => None,
    }
}

fn digest_of(name: &str) -> &'static str {
    SOURCE_DIGESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, d)| *d)
        .unwrap_or("unknown")
}

/// The code a family's training depends on: `gm-core:<digest> gm-flow:<digest>`.
pub fn training_code_version(family: &str) -> String {
    match family_crates(family) {
        Some(names) => std::iter::once("gm-core")
            .chain(names.iter().copied())
            .map(|name| format!("{name}:{}", digest_of(name)))
            .collect::<Vec<_>>()
            .join(" "),
        None => SOURCE_DIGESTS
            .iter()
            .filter(|(n, _)| *n != "gm-bench")
            .map(|(n, d)| format!("{n}:{d}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The code a family's result depends on: its training code and gm-bench's evaluation.
pub fn result_code_version(family: &str) -> String {
    format!(
        "{} gm-bench:{}",
        training_code_version(family),
        digest_of("gm-bench")
    )
}

/// What every result records about how it was made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `gm <version>` and the source digests of the crates that made the result.
    pub code_version: String,
    /// The libtorch device, e.g. `Cpu` or `Cuda(0)`.
    pub device: String,
    /// libtorch's intra-op threads.
    pub threads: i32,
    /// When the result was computed (UTC, RFC 3339).
    pub date: String,
}

impl Provenance {
    /// The provenance of a result of `family` computed now on `device`.
    pub fn now(family: &str, device: gm_core::tch::Device) -> Self {
        Provenance {
            code_version: format!(
                "gm {} {}",
                env!("CARGO_PKG_VERSION"),
                result_code_version(family)
            ),
            device: format!("{device:?}"),
            threads: gm_core::tch::get_num_threads(),
            date: now_utc(),
        }
    }
}

/// The current time, UTC, to the second (RFC 3339).
pub fn now_utc() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
