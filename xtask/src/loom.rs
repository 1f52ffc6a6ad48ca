//! `cargo xtask loom`: the loom models of every shared structure.
//!
//! Built with `--cfg hde_loom` (a cfg no dependency knows, so only our `crate::sync` shims
//! switch to loom) in release mode and a separate target directory, so the flag does not throw
//! away the normal build cache.

use anyhow::Result;

use crate::{cargo, root, run};

/// Crates with loom models, and where they are: a `tests/loom.rs` of the public API, or unit
/// tests named `loom_*` beside crate-private structures.
const MODELLED: &[(&str, &[&str])] = &[
    ("hde-delta", &["--test", "loom"]),
    ("hde-selector", &["--test", "loom"]),
    ("hde-core", &["--lib", "--", "loom_"]),
];

pub(crate) fn run_models() -> Result<()> {
    for (krate, target) in MODELLED {
        run(cargo()
            .args(["test", "--release", "--locked", "-p", krate])
            .args(*target)
            .env("RUSTFLAGS", "--cfg hde_loom")
            .env("CARGO_TARGET_DIR", root().join("target/loom")))?;
    }
    Ok(())
}
