//! The synchronisation primitives of this crate, from loom under `--cfg hde_loom`, from std
//! otherwise. Crate code imports them only from here, so loom can model-check every shared
//! structure without the crate's dependencies noticing.

#[cfg(hde_loom)]
pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};

#[cfg(not(hde_loom))]
pub(crate) use std::sync::{Condvar, Mutex, MutexGuard};

/// Locks `m`, recovering the data if a thread panicked while holding it: every critical
/// section of this crate leaves the data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Waits on `cv`, recovering the guard like [`lock`].
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
