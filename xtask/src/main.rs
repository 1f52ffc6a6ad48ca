//! HDE's automation, one entry point: `cargo xtask <command>`.
//!
//! Each subcommand is a module. Commands shell out to `cargo` with the same toolchain that runs
//! xtask, and print each command before running it, so a failure names what to rerun by hand.

mod ci;
mod cluster_sim;
mod corpus;
mod crdt_compare;
mod fuzz;
mod link;
mod loom;
mod peers;
mod qemu;
mod replay;
#[cfg(test)]
mod tidy;
mod transport;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "HDE automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI checks: fmt, clippy -D warnings, rustdoc -D warnings, tests, loom models,
    /// benches compiled (not run).
    Ci,
    /// Run the loom models of every shared structure (`--cfg hde_loom`, release).
    Loom,
    /// Write a deterministic VM-memory corpus: DIR/snap_00.raw .. snap_{N-1}.raw.
    Corpus(corpus::Args),
    /// Replay the learning selector on recorded outcomes against the oracle, per mode.
    SelectorReplay(replay::Args),
    /// Compare hde-crdt with the crdts crate: merge time, state bytes, sync bytes.
    CrdtCompare,
    /// The baseline index's anti-entropy on 10 to 1,000 simulated nodes in one process:
    /// periods and bytes until every replica agrees.
    ClusterSim(cluster_sim::Args),
    /// The release `hde` against lz4, zstd, zstd --patch-from and xdelta3 on snapshot files:
    /// bytes, wall and CPU seconds, peak memory, verified decodes, and the goals of issue 7.
    BenchPeers(peers::Args),
    /// Time until the receiver holds each round, hde send/serve against peer pipelines, through
    /// one shaped link between network namespaces (root; `--rate`, `--rtt`).
    BenchLink(link::Args),
    /// A running VM live-migrated between two QEMU processes across one shaped link, with
    /// QEMU's plain tcp, xbzrle and multifd+zstd and with HDE (`exec:hde qemu-send`): time,
    /// downtime, bytes, convergence, memory equality (root; `--rate`, `--rtt`, `--ram`).
    BenchQemu(qemu::Args),
    /// TCP + TLS 1.3 against QUIC (quinn) through one shaped link, with hde-net's pinned-key
    /// authentication: connect time and bulk transfer time (root; `--rate`, `--rtt`).
    BenchTransport(transport::Args),
    /// One side of `bench-transport` (run by it inside a namespace).
    #[command(hide = true)]
    TransportPeer(transport::PeerArgs),
    /// Run every fuzz target for a bounded time (libFuzzer via cargo-fuzz if installed, else
    /// the stable mutation runner); findings go to fuzz/artifacts/ and fail the command.
    Fuzz(fuzz::Args),
    /// Run the criterion benches (`cargo bench -p hde-benches`), passing arguments through.
    Bench {
        /// Arguments for criterion (e.g. a filter such as `compress`).
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Ci => ci::run(),
        Task::Loom => loom::run_models(),
        // These time code of this workspace in this process: optimised, or the figures lie
        // (lz4 inside hde-codec ran at 25 MB/s in the dev profile).
        Task::SelectorReplay(_) | Task::CrdtCompare | Task::ClusterSim(_) if cfg!(debug_assertions) => in_release(),
        Task::SelectorReplay(args) => replay::run(&args),
        Task::CrdtCompare => crdt_compare::run(),
        Task::ClusterSim(args) => cluster_sim::run(&args),
        Task::Corpus(args) => corpus::run(&args),
        Task::BenchPeers(args) => peers::run_bench(&args),
        Task::Fuzz(args) => fuzz::run_fuzz(&args),
        Task::BenchLink(args) => link::run_bench(&args),
        Task::BenchQemu(args) => qemu::run_bench(&args),
        Task::BenchTransport(args) => transport::run_bench(&args),
        Task::TransportPeer(args) => transport::peer(&args),
        Task::Bench { args } => {
            let mut cmd = cargo();
            cmd.args(["bench", "-p", "hde-benches", "--"]).args(args);
            run(&mut cmd)
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// `cargo`, the one that runs us, in the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs this command again from an optimised build of xtask (`cargo xtask` builds the dev
/// profile, where the workspace's own crates are not optimised).
fn in_release() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["run", "--quiet", "--release", "--package", "xtask", "--"]).args(std::env::args_os().skip(1));
    run(&mut cmd)
}

/// Runs `cmd`, echoing it; a non-zero exit is an error naming the command.
pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("$ {shown}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// A size argument (`64M`, `4096`, `2GiB`) in bytes, for clap: the workspace's one parser.
fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let n = hde_core::units::parse_size(s).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|e| e.to_string())
}
