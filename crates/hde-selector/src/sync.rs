//! Synchronisation primitives from loom under `--cfg hde_loom`, from std otherwise; crate code
//! imports them only from here so loom can model-check the shared statistics.

#[cfg(hde_loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(hde_loom))]
pub(crate) use std::sync::Mutex;

/// Locks `m`, recovering the data if a holder panicked: statistics stay usable (every update
/// is a few arithmetic assignments that leave them consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> impl std::ops::DerefMut<Target = T> + '_ {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}
