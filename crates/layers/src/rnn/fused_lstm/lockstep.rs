//! Phases of work on rayon's threads, each phase waiting for the one before: the time steps of
//! a recurrence, with one step's work split across the cores.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::prelude::*;

/// Runs `chunk(phase, part)` for every phase in `0..phases` and part in `0..parts`; a chunk
/// starts only after every chunk of the previous phase has finished (its writes are visible).
///
/// Up to `parts` rayon tasks walk the phases in order. Task `i` first claims part `i` of each
/// phase, then any part nobody has claimed yet: while every task runs, a part stays on one
/// thread (and its data in that core's cache), and when fewer threads are free than there are
/// parts (a busy or one-thread pool), the tasks that run take the other parts. A task only ever
/// waits for chunks that a running task has claimed, so the phases cannot deadlock. A chunk that
/// panics releases the waiting tasks, and rayon passes the panic on.
pub(super) fn lockstep(phases: usize, parts: usize, chunk: impl Fn(usize, usize) + Sync) {
    if parts <= 1 {
        for phase in 0..phases {
            chunk(phase, 0);
        }
        return;
    }
    let claimed: Vec<AtomicBool> = (0..phases * parts)
        .map(|_| AtomicBool::new(false))
        .collect();
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    (0..parts).into_par_iter().for_each(|me| {
        for phase in 0..phases {
            let first = phase * parts;
            let mut spins = 0u32;
            while done.load(Ordering::Acquire) < first {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                spins += 1;
                if spins < 1 << 14 {
                    spin_loop();
                } else {
                    // The other claimant is descheduled: give its core back.
                    std::thread::yield_now();
                }
            }
            for i in 0..parts {
                let part = (me + i) % parts;
                if !claimed[first + part].swap(true, Ordering::AcqRel) {
                    let guard = Failed(&failed);
                    chunk(phase, part);
                    std::mem::forget(guard);
                    done.fetch_add(1, Ordering::Release);
                }
            }
        }
    });
}

/// Raises the flag when dropped, which only happens when a chunk unwinds.
struct Failed<'a>(&'a AtomicBool);

impl Drop for Failed<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::lockstep;

    /// Every chunk runs once, after every chunk of the phase before, with as many threads as
    /// parts, fewer (one), and more.
    #[test]
    fn phases_run_in_order_on_any_pool() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for parts in [1, 2, 3, 4] {
                let phases = 50;
                let finished: Vec<AtomicUsize> = (0..phases).map(|_| AtomicUsize::new(0)).collect();
                let runs = Mutex::new(vec![0usize; phases * parts]);
                pool.install(|| {
                    lockstep(phases, parts, |phase, part| {
                        if phase > 0 {
                            assert_eq!(
                                finished[phase - 1].load(Ordering::SeqCst),
                                parts,
                                "phase {phase} started before phase {} finished",
                                phase - 1
                            );
                        }
                        // Some work, so that the tasks overlap.
                        let mut x = 0u64;
                        for i in 0..(part as u64 + 1) * 200 {
                            x = x.wrapping_mul(31).wrapping_add(i);
                        }
                        std::hint::black_box(x);
                        runs.lock().unwrap()[phase * parts + part] += 1;
                        finished[phase].fetch_add(1, Ordering::SeqCst);
                    })
                });
                let runs = runs.into_inner().unwrap();
                assert!(
                    runs.iter().all(|&n| n == 1),
                    "{threads} threads, {parts} parts: {runs:?}"
                );
            }
        }
    }

    /// A panicking chunk reaches the caller instead of leaving the other tasks waiting.
    #[test]
    fn a_panicking_chunk_does_not_hang() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| {
                lockstep(10, 2, |phase, part| {
                    assert!(!(phase == 3 && part == 1), "planted failure");
                })
            })
        }));
        assert!(result.is_err());
    }
}
