//! `cargo xtask loom`: the loom models of every shared structure.
//!
//! Built with `--cfg hde_loom` (a cfg no dependency knows, so only our `crate::sync` shims
//! switch to loom) in release mode and a separate target directory, so the flag does not throw
//! away the normal build cache.

use anyhow::Result;

use crate::{cargo, root, run};

/// Crates with loom models, each in its `tests/loom.rs`.
const MODELLED: &[&str] = &["hde-delta", "hde-selector"];

pub(crate) fn run_models() -> Result<()> {
    for krate in MODELLED {
        run(cargo()
            .args(["test", "--release", "--locked", "-p", krate, "--test", "loom"])
            .env("RUSTFLAGS", "--cfg hde_loom")
            .env("CARGO_TARGET_DIR", root().join("target/loom")))?;
    }
    Ok(())
}
