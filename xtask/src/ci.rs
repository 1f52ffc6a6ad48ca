//! `cargo xtask ci`: the one command CI (and a developer before pushing) runs.

use std::time::Instant;

use anyhow::Result;

use crate::{cargo, run as sh};

pub(crate) fn run_step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    let t = Instant::now();
    eprintln!("==> {name}");
    f()?;
    eprintln!("<== {name} ok in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) fn run() -> Result<()> {
    let t = Instant::now();
    run_step("fmt", || sh(cargo().args(["fmt", "--all", "--", "--check"])))?;
    run_step("clippy", || {
        sh(cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]))
    })?;
    run_step("rustdoc", || {
        sh(cargo().args(["doc", "--workspace", "--no-deps", "--locked"]).env("RUSTDOCFLAGS", "-D warnings"))
    })?;
    run_step("test", || sh(cargo().args(["test", "--workspace", "--locked"])))?;
    run_step("loom", crate::loom::run_models)?;
    // A short blind-mutation run of every fuzz target on the stable toolchain (the seed
    // corpus itself already ran as plain tests); `cargo xtask fuzz` runs libFuzzer for longer.
    run_step("fuzz (stable runner, 8 s per target)", || crate::fuzz::run_fuzz(&crate::fuzz::Args::stable_smoke(8)))?;
    run_step("benches compile", || sh(cargo().args(["bench", "--workspace", "--no-run", "--locked"])))?;
    eprintln!("ci: all steps passed in {:.0} s", t.elapsed().as_secs_f64());
    Ok(())
}
