//! `hde`: the command-line shell over `hde-core`.
//!
//! Every subcommand parses arguments, calls the library and prints; no logic lives here that a
//! library user would have to copy. The binary is split by concern: flags and dispatch here,
//! `output` (where results go, and what must never be overwritten), `transfer` (encode, decode,
//! inspect), `state` (the state directory's keys) and `report` (rounds, demo, codecs).
//!
//! Exit codes: 0 success; 1 failure (one line on stderr names the file and the cause, and a
//! `rounds` run with a round that fails to verify); 2 usage error (from clap, or a check of
//! flags that clap cannot express, made before any work).

mod net;
mod output;
mod qemu;
mod report;
mod state;
mod transfer;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use hde_core::codec::CodecSpec;
use hde_core::selector::NetworkMode;
use hde_core::units::{self, Rate};
use hde_core::HdeConfig;
use hde_corpus::{self as corpus, CorpusConfig};

#[derive(Parser)]
#[command(
    name = "hde",
    version,
    about = "Hierarchical delta encoding of VM memory and disk images",
    after_help = "Exit codes: 0 success, 1 failure (including a round that fails to verify), 2 usage error."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options of the engine shared by encode, rounds and demo.
#[derive(Args, Clone)]
pub(crate) struct EngineArgs {
    /// Network mode: datacenter (speed first), internet (ratio first) or hybrid (fastest
    /// delivery for --bandwidth).
    #[arg(long, default_value = "hybrid", value_parser = parse_mode)]
    mode: NetworkMode,
    /// Link rate for hybrid mode: bits as 100mbit, 100Mbps or 1gbit; bytes as 12.5MB/s or
    /// 12MiB/s. Refused in the other modes, which do not look at the link.
    #[arg(long, value_parser = parse_rate)]
    bandwidth: Option<Rate>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
}

impl EngineArgs {
    /// The link rate the cost model uses: hybrid mode only.
    pub(crate) fn link_rate(&self) -> Option<Rate> {
        if self.mode != NetworkMode::Hybrid {
            return None;
        }
        self.bandwidth.or_else(|| Rate::from_bytes_per_second(HdeConfig::new(0).bandwidth).ok())
    }

    /// A usage error for a flag the chosen mode ignores.
    fn check(&self) {
        if self.bandwidth.is_some() && self.mode != NetworkMode::Hybrid {
            usage_error(
                clap::error::ErrorKind::ArgumentConflict,
                &format!(
                    "--bandwidth is used by hybrid mode only; {} mode does not look at the link (drop --bandwidth, or use --mode hybrid)",
                    self.mode
                ),
            );
        }
    }
}

/// What `hde cluster` does.
#[derive(Subcommand)]
enum ClusterAction {
    /// Print each node's view of the baseline index (who holds which baseline of which key)
    /// and whether the replicas agree; exits 1 if they differ or a node does not answer.
    Status(net::ClusterArgs),
}

#[derive(Subcommand)]
enum Command {
    /// Encode IN (one or more rounds of one key, in order) into a frame stream OUT: the first a
    /// delta if --state (or --base) holds the key's baseline, the others deltas of the one before.
    Encode(transfer::EncodeArgs),
    /// Decode the frame stream IN (one frame or several, applied in order) into the image OUT:
    /// the last frame's image.
    Decode(transfer::DecodeArgs),
    /// Encode FILES as successive pre-copy rounds of one key, decode each frame with an
    /// independent decoder, verify, and report per round.
    Rounds {
        /// The rounds, in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print each frame's header, codecs, baseline identity, page classes and sizes.
    Inspect {
        /// The frame or frame stream (`-` for stdin).
        frame: PathBuf,
    },
    /// Write a node's key pair: DIR/key (private, mode 0600) and DIR/key.pub (the line its
    /// peers put in their --peers file).
    Keygen {
        /// The directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Receive rounds from authenticated senders (TLS 1.3, pinned keys) and keep their
    /// baselines and images.
    Serve(net::ServeArgs),
    /// Send the rounds of one key to an `hde serve`; exits 0 once the last is confirmed.
    Send(net::SendArgs),
    /// Carry QEMU's live migration stream (read on stdin, as `migrate "exec:hde qemu-send ..."`)
    /// to an `hde qemu-recv`; exits 0 once the receiver wrote the whole stream.
    QemuSend(qemu::QemuSendArgs),
    /// Receive a migration from an `hde qemu-send` and write QEMU's stream to stdout (as
    /// `-incoming "exec:hde qemu-recv ..."`).
    QemuRecv(qemu::QemuRecvArgs),
    /// The cluster's replicated baseline index.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// A TCP relay on 127.0.0.1 that delays each direction by --delay-ms (for link tests and
    /// `cargo xtask bench-link`; this kernel has no netem). Prints its address, then relays
    /// until --lifetime seconds have passed.
    #[command(hide = true)]
    Relay {
        /// Where to forward (`host:port`).
        #[arg(long)]
        to: std::net::SocketAddr,
        /// One-way delay in milliseconds.
        #[arg(long)]
        delay_ms: u64,
        /// Seconds to accept connections for.
        #[arg(long, default_value_t = 600)]
        lifetime: u64,
    },
    /// The keys a --state directory holds: list them, or drop one.
    State {
        #[command(subcommand)]
        action: state::Action,
    },
    /// Generate the default corpus in a temporary folder and run `rounds` on it in all three
    /// modes (hybrid for a 1 Gbit/s link), with one comparison table.
    Demo {
        /// Image size.
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Rounds.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Worker threads (default: all cores).
        #[arg(long, value_parser = parse_threads)]
        threads: Option<usize>,
    },
    /// Compress an image with each codec, round 0 alone and round 1 against round 0 as
    /// reference, verify every round trip, and print sizes and speeds.
    Codecs {
        /// Two rounds of one image (e.g. snap_00.raw snap_01.raw); default: a generated corpus.
        files: Vec<PathBuf>,
        /// Size of the generated image when no files are given (e.g. 64M).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Seed of the generated image.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Segment size: each segment is compressed alone, as the engine does.
        #[arg(long, default_value = "4M", value_parser = parse_segment)]
        segment: usize,
        /// Codecs to run (comma-separated: raw, lz4, zstd-N, zstd-N-long).
        #[arg(long, value_delimiter = ',', default_value = "raw,lz4,zstd-1,zstd-3,zstd-9")]
        codecs: Vec<CodecSpec>,
    },
    /// Write a deterministic VM-memory corpus: DIR/snap_00.raw .. snap_{N-1}.raw.
    Corpus {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Image size (e.g. 64M, 1G).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        size: usize,
        /// Number of rounds.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn parse_size(text: &str) -> Result<usize, String> {
    let n = units::parse_size(text).map_err(|e| e.to_string())?;
    usize::try_from(n).map_err(|_| format!("{text} is more than this machine can address"))
}

fn parse_segment(text: &str) -> Result<usize, String> {
    parse_size(text).and_then(|n| if n == 0 { Err("a segment holds at least 1 byte".to_owned()) } else { Ok(n) })
}

fn parse_mode(text: &str) -> Result<NetworkMode, String> {
    text.parse().map_err(|e: hde_core::selector::Error| e.to_string())
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    text.parse().map_err(|e: hde_core::Error| e.to_string())
}

fn parse_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("at least 1 thread is needed".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{text:?} is not a whole number of threads")),
    }
}

/// A key as frames carry it: 1 to 255 bytes of UTF-8.
pub(crate) fn parse_key(text: &str) -> Result<String, String> {
    match text.len() {
        0 => Err("a key names a VM and cannot be empty".to_owned()),
        n if n > hde_core::frame::MAX_KEY => {
            Err(format!("a key is at most {} bytes; this one has {n}", hde_core::frame::MAX_KEY))
        }
        _ => Ok(text.to_owned()),
    }
}

/// Prints a usage error the way clap does and exits with code 2.
pub(crate) fn usage_error(kind: clap::error::ErrorKind, message: &str) -> ! {
    Cli::command().error(kind, message).exit()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    clean_up_on_signals();
    match run(cli) {
        Ok(code) => code,
        // `hde ... | head`: the reader left; that is not our failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hde: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: remove any named temporary file, then die of the signal as
/// if it had not been caught (the shell sees the usual status). Outputs in progress are
/// unnamed files the kernel frees by itself.
fn clean_up_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        // Without a handler the default action still stops the process; only named
        // temporary files (filesystems without O_TMPFILE) could stay.
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            hde_core::fsio::remove_temporaries();
            let _ = signal_hook::low_level::emulate_default_handler(signal);
            std::process::exit(128 + signal);
        }
    });
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

pub(crate) fn engine_config(engine: &EngineArgs, node: u64) -> HdeConfig {
    let mut c = HdeConfig::new(node);
    c.network_mode = engine.mode;
    if let Some(rate) = engine.bandwidth {
        c.bandwidth = rate.bytes_per_second();
    }
    if let Some(threads) = engine.threads {
        c.threads = threads;
    }
    c
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Encode(args) => {
            args.engine.check();
            transfer::encode(args).map(|()| ExitCode::SUCCESS)
        }
        Command::Decode(args) => transfer::decode(args).map(|()| ExitCode::SUCCESS),
        Command::Rounds { files, json, engine } => {
            engine.check();
            report::rounds(&files, json, &engine)
        }
        Command::Inspect { frame } => transfer::inspect(&frame).map(|()| ExitCode::SUCCESS),
        Command::State { action } => state::run(action),
        Command::Keygen { out } => net::keygen(&out),
        Command::Relay { to, delay_ms, lifetime } => {
            let relay = hde_net::relay::DelayRelay::start(
                to,
                std::time::Duration::from_millis(delay_ms),
                std::time::Duration::from_secs(lifetime),
            )?;
            println!("relaying on {}", relay.addr());
            io::Write::flush(&mut io::stdout())?;
            std::thread::sleep(std::time::Duration::from_secs(lifetime));
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => net::serve(args),
        Command::Cluster { action: ClusterAction::Status(args) } => net::cluster_status(args),
        Command::Send(args) => {
            args.engine.check();
            net::send(args)
        }
        Command::QemuSend(args) => {
            args.engine.check();
            qemu::send(args)
        }
        Command::QemuRecv(args) => qemu::recv(args),
        Command::Demo { size, rounds, threads } => report::demo(size, rounds, threads),
        Command::Codecs { files, size, seed, segment, codecs } => {
            let (old, new) = report::load_pair(&files, size, seed)?;
            report::codecs_table(&old, &new, segment, &codecs).map(|()| ExitCode::SUCCESS)
        }
        Command::Corpus { out, size, rounds, seed } => {
            let config = CorpusConfig { size, rounds, seed, ..CorpusConfig::default() };
            let paths = corpus::write_corpus(&out, &config)?;
            println!("wrote {} rounds of {} bytes to {}", paths.len(), size, display(&out));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A path as messages show it (`-` as "stdin").
pub(crate) fn display(path: &Path) -> std::borrow::Cow<'_, str> {
    if output::is_stdio(path) {
        "stdin".into()
    } else {
        path.to_string_lossy()
    }
}
