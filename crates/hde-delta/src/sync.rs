//! The synchronisation primitives of this crate, from loom under `--cfg hde_loom`, from std
//! otherwise. Crate code imports them only from here, so loom can model-check every shared
//! structure without the crate's dependencies noticing.

#[cfg(hde_loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Mutex, MutexGuard,
};

#[cfg(not(hde_loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU32, Ordering},
    Arc, Mutex, MutexGuard,
};

/// Locks `m`, recovering the data if a thread panicked while holding it: every critical
/// section of this crate leaves the data consistent before anything that can panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    #[cfg(not(hde_loom))]
    {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    #[cfg(hde_loom)]
    {
        match m.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}
