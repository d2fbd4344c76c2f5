//! Rust work on libtorch's own CPU threads.
//!
//! libtorch runs its parallel CPU kernels on an OpenMP team, whose idle members spin for a while
//! after each parallel region before they sleep. Work of our own spread over freshly spawned
//! threads therefore competes with those spinning threads for the same cores (measured: the
//! fused Adam update got slower on two spawned threads, not faster). Handing the work to the
//! team itself, the way a compiled `#pragma omp parallel` does, puts it on the threads that are
//! already waiting for work.
//!
//! The one entry point used, `GOMP_parallel`, is looked up at run time in the libraries the
//! process has loaded (libtorch brings its OpenMP runtime: GNU libgomp, or an LLVM/Intel runtime
//! exporting the same GNU entry points). Team members claim the parts of the work from a shared
//! counter, so nothing depends on the team's size or on other runtime calls. Where no runtime is
//! found the work runs on the calling thread; were two runtimes loaded, it could run on the
//! other's threads. Either way the result is the same, only the time differs.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

type Body = unsafe extern "C" fn(*mut c_void);
type GompParallel = unsafe extern "C" fn(Body, *mut c_void, u32, u32);

/// `GOMP_parallel` of the process's OpenMP runtime, if one is loaded.
fn gomp_parallel() -> Option<GompParallel> {
    static PARALLEL: OnceLock<Option<GompParallel>> = OnceLock::new();
    *PARALLEL.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: the symbol is the GNU OpenMP ABI's, with this C signature; the handle of
            // the running program is never unloaded, so the pointer stays valid (the handle is
            // leaked on purpose).
            unsafe {
                let this = libloading::os::unix::Library::this();
                let parallel = *this.get::<GompParallel>(b"GOMP_parallel\0").ok()?;
                std::mem::forget(this);
                Some(parallel)
            }
        }
        #[cfg(not(unix))]
        {
            None
        }
    })
}

/// Whether [`run_on_team`] can hand work to an OpenMP team in this process.
#[cfg(test)]
fn team_available() -> bool {
    gomp_parallel().is_some()
}

/// Calls `work(part, parts)` exactly once for every `part` in `0..parts` (at least 1), on a team
/// of at most `threads` members of libtorch's OpenMP runtime (the calling thread among them), and
/// returns when all calls have finished. Each member claims parts until none is left, so the
/// parts are covered whatever the team's actual size (a nested region's team has one member),
/// and more parts than threads balance the load between members that run at different speeds;
/// without an OpenMP runtime, or for one part or one thread, the calls run on this thread.
/// `work` must not panic (it would abort the process inside the runtime) and must not call
/// libtorch.
pub fn run_on_team(threads: usize, parts: usize, work: &(dyn Fn(usize, usize) + Sync)) {
    let parts = parts.max(1);
    let threads = threads.clamp(1, parts);
    let claim_all = |next: &AtomicUsize| loop {
        let part = next.fetch_add(1, Ordering::Relaxed);
        if part >= parts {
            break;
        }
        work(part, parts);
    };
    let next = AtomicUsize::new(0);
    let parallel = match gomp_parallel() {
        Some(p) if threads > 1 => p,
        _ => return claim_all(&next),
    };
    struct Shared<'a> {
        claim_all: &'a (dyn Fn(&AtomicUsize) + Sync),
        next: &'a AtomicUsize,
    }
    unsafe extern "C" fn body(data: *mut c_void) {
        // SAFETY: `data` points to the `Shared` below, alive until `GOMP_parallel` returns.
        let shared = unsafe { &*(data as *const Shared) };
        (shared.claim_all)(shared.next);
    }
    let shared = Shared {
        claim_all: &claim_all,
        next: &next,
    };
    // SAFETY: `body` only reads `shared`, which outlives the call; `GOMP_parallel` runs it on
    // every member of the team (this thread included) and returns after all of them.
    unsafe {
        parallel(
            body,
            &shared as *const Shared as *mut c_void,
            threads.min(u32::MAX as usize) as u32,
            0,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every part runs exactly once, whatever the team's size; on Linux the runtime libtorch
    /// brings is found (otherwise the fused update would silently run on one thread).
    #[test]
    fn every_part_runs_once_on_the_team() {
        if cfg!(target_os = "linux") {
            // Load libtorch (and its OpenMP runtime) the way any use of gm-core does.
            let _ = tch::get_num_threads();
            assert!(team_available(), "no GOMP_parallel in the process");
        }
        for (threads, parts) in [(1, 1), (1, 4), (2, 2), (2, 16), (3, 3), (8, 8), (8, 2)] {
            let seen: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
            let counts = Mutex::new(Vec::new());
            run_on_team(threads, parts, &|part, parts| {
                counts.lock().unwrap().push(parts);
                seen[part].fetch_add(1, Ordering::SeqCst);
            });
            assert!(counts.into_inner().unwrap().iter().all(|&p| p == parts));
            for (i, s) in seen.iter().enumerate() {
                let want = usize::from(i < parts);
                assert_eq!(s.load(Ordering::SeqCst), want, "part {i} of {parts}");
            }
        }
    }
}
