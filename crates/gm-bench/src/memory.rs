//! Peak memory of a phase of a run (training, evaluation), from the kernel's own accounting.
//!
//! On Linux the process's resident-set high-water mark (`VmHWM` in `/proc/self/status`) is reset
//! by writing `5` to `/proc/self/clear_refs`, so the peak of each phase can be read in turn.
//! Tensors on the CPU live in that resident set; on a GPU this is the host side only. Elsewhere
//! (or where the reset is refused) the functions return `None` rather than a wrong number.

use std::io::Write as _;

/// Resets the peak to the current resident set. Returns whether the reset took effect.
pub fn reset_peak() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut f| f.write_all(b"5"))
        .is_ok()
}

/// The peak resident set since the last [`reset_peak`] (or the process's start), in bytes.
pub fn peak_bytes() -> Option<u64> {
    status_field("VmHWM:")
}

/// The current resident set, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_field("VmRSS:")
}

fn status_field(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Runs `f` and returns its value with the peak resident set while it ran above the resident
/// set when it started, in MiB: what `f` itself needed, whatever the process already held (data
/// sets, a classifier, earlier runs' cached allocations). `None` where it cannot be measured.
pub fn with_peak<T>(f: impl FnOnce() -> T) -> (T, Option<f64>) {
    let baseline = resident_bytes();
    let measurable = reset_peak();
    let value = f();
    let peak = match (measurable, peak_bytes(), baseline) {
        (true, Some(peak), Some(base)) => Some(peak.saturating_sub(base)),
        _ => None,
    };
    (value, peak.map(|b| b as f64 / (1024.0 * 1024.0)))
}

/// Asks the C allocator to keep freed memory for reuse instead of handing it back to the kernel
/// after every training step. Returns whether the allocator took the settings (glibc on Linux).
///
/// A step allocates and frees activations of several megabytes each. With glibc's defaults
/// those are mapped and unmapped per allocation, so every step pays page faults and the kernel's
/// zeroing of fresh pages again (about a tenth of a convolutional U-Net's step on the 2-core
/// development machine, measured with `perf`). Blocks of up to 32 MiB now come from the heap,
/// which keeps up to 512 MiB of freed memory. The peak resident set is unchanged; what is kept
/// after a peak is reused by the next step. `gm` and `gm-speed` call this at start; a library
/// user may call it too (a PyTorch process gets the same with
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912`).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; called before any other thread
        // allocates (at the start of `main`).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20) == 1
                && libc::mallopt(libc::M_TOP_PAD, 16 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_sees_a_transient_allocation_and_resets() {
        if !reset_peak() {
            // Not Linux, or the reset is refused: nothing to measure, and nothing is claimed.
            assert!(with_peak(|| ()).1.is_none());
            return;
        }
        let ((), peak) = with_peak(|| {
            // 256 MiB, touched so that it is resident, then freed.
            let block = vec![1u8; 256 << 20];
            std::hint::black_box(&block);
        });
        let peak = peak.unwrap();
        // Other tests of this binary may allocate meanwhile, so only bounds that they cannot
        // break are asserted: the block counts, and a quiet phase after a reset does not.
        assert!(peak >= 250.0, "peak {peak} MiB above the start");
        let ((), quiet) = with_peak(|| ());
        assert!(
            quiet.unwrap() < peak - 200.0,
            "after a reset the peak is {quiet:?} MiB"
        );
    }
}
