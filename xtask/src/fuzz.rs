//! `cargo xtask fuzz`: every fuzz target for a bounded time.
//!
//! With cargo-fuzz installed, libFuzzer runs each target (coverage-guided, `-s none`: the
//! stable toolchain has no sanitizers) on a scratch corpus under `target/fuzz-corpus/` that
//! starts from the checked-in seeds in `fuzz/corpus/` (which it never writes). Without it, or
//! with `--engine stable`, `hde-fuzz run` mutates the seeds blindly. Findings land in
//! `fuzz/artifacts/<target>/` either way and fail the command.

use anyhow::{bail, Result};

use crate::{cargo, root, run};

/// Which fuzzer drives the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Engine {
    /// libFuzzer if `cargo fuzz` is installed, else the stable runner.
    Auto,
    /// cargo-fuzz / libFuzzer.
    Libfuzzer,
    /// `hde-fuzz run`, a seeded mutation loop on the stable toolchain.
    Stable,
}

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The fuzzer.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    engine: Engine,
    /// Targets to run (default: all of them).
    targets: Vec<String>,
}

const TARGETS: [&str; 6] =
    ["frame_decode", "delta_apply", "codec_decompress", "crdt_decode", "state_load", "net_message"];

fn have_cargo_fuzz() -> bool {
    cargo().args(["fuzz", "--version"]).output().is_ok_and(|o| o.status.success())
}

pub(crate) fn run_fuzz(args: &Args) -> Result<()> {
    let targets: Vec<&str> =
        if args.targets.is_empty() { TARGETS.to_vec() } else { args.targets.iter().map(String::as_str).collect() };
    for t in &targets {
        if !TARGETS.contains(t) {
            bail!("unknown target {t}; the targets are {}", TARGETS.join(", "));
        }
    }
    let engine = match args.engine {
        Engine::Auto if have_cargo_fuzz() => Engine::Libfuzzer,
        Engine::Auto => {
            eprintln!("cargo-fuzz is not installed (cargo install cargo-fuzz): using the stable runner");
            Engine::Stable
        }
        e => e,
    };
    let seeds = root().join("fuzz/corpus");
    if engine == Engine::Stable {
        return run(cargo()
            .args(["run", "--release", "--locked", "-p", "hde-fuzz", "--", "run"])
            .arg(&seeds)
            .arg("--seconds")
            .arg(args.seconds.to_string())
            .args(&targets));
    }
    for t in targets {
        let scratch = root().join("target/fuzz-corpus").join(t);
        std::fs::create_dir_all(&scratch)?;
        run(cargo()
            .current_dir(root().join("fuzz"))
            .args(["fuzz", "run", "-s", "none", t])
            .arg(&scratch)
            .arg(seeds.join(t))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"]))?;
    }
    Ok(())
}

impl Args {
    /// Every target on the stable runner for `seconds` each (the CI step).
    pub(crate) fn stable_smoke(seconds: u64) -> Self {
        Args { seconds, engine: Engine::Stable, targets: Vec::new() }
    }
}
