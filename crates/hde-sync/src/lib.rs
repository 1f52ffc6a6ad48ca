//! The synchronisation primitives of the HDE crates: loom's under `--cfg hde_loom`, std's
//! otherwise, in one place (as tokio keeps its `src/loom`).
//!
//! The layers take the primitives of their shared state (baseline stores, the selector's
//! statistics, the node's ledger, the encoding pipeline) only from here, so `cargo xtask loom`
//! model-checks every shared structure with loom while their dependencies, which never see the
//! `hde_loom` cfg in their own code, build as usual.
//!
//! ```
//! use hde_sync::{lock, Arc, Mutex};
//!
//! let shared = Arc::new(Mutex::new(0u32));
//! *lock(&shared) += 1;
//! assert_eq!(*lock(&shared), 1);
//! ```

#[cfg(hde_loom)]
pub use loom::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

#[cfg(not(hde_loom))]
pub use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Condvar, Mutex, MutexGuard,
};

/// Locks `m`, recovering the data if a thread panicked while holding it. Every critical
/// section of the HDE crates leaves its data consistent before anything that can panic, so a
/// poisoned lock holds whole data; a panic is reported where it happened, not again at every
/// later lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Waits on `cv`, recovering the guard like [`lock`].
pub fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(all(test, not(hde_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_gives_its_data() {
        let m = Arc::new(Mutex::new(vec![1u8]));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("a holder panics");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), vec![1u8]);
    }
}
