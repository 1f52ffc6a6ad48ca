//! `hde qemu-send` and `hde qemu-recv`: QEMU's live migration through HDE (a thin shell over
//! `hde_net::migrate`).
//!
//! On the source: `migrate "exec:hde qemu-send --to HOST:PORT --identity DIR --peers FILE --key VM"`;
//! on the destination: `-incoming "exec:hde qemu-recv --listen ADDR --identity DIR --peers FILE"`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use hde_net::migrate::{self, QemuRecvOptions, QemuSendOptions};

use crate::net::credentials;
use crate::{engine_config, parse_key, parse_size, EngineArgs};

/// The flags of `hde qemu-send`.
#[derive(Args)]
pub(crate) struct QemuSendArgs {
    /// The receiver (`host:port` of an `hde qemu-recv`).
    #[arg(long)]
    to: String,
    /// This node's key pair (a directory made by `hde keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The receivers accepted: a file of their key.pub lines.
    #[arg(long)]
    peers: PathBuf,
    /// The key (VM) being migrated.
    #[arg(long, value_parser = parse_key)]
    key: String,
    /// Most guest RAM accepted.
    #[arg(long, default_value = "1T", value_parser = parse_size)]
    max_ram: usize,
    /// Print what was sent to stderr as one JSON object at the end.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// The flags of `hde qemu-recv`.
#[derive(Args)]
pub(crate) struct QemuRecvArgs {
    /// Address to listen on for the sender (e.g. 0.0.0.0:7171).
    #[arg(long)]
    listen: SocketAddr,
    /// This node's key pair (a directory made by `hde keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The senders accepted: a file of their key.pub lines.
    #[arg(long)]
    peers: PathBuf,
    /// Accept only a migration of this key (default: the key the sender names).
    #[arg(long, value_parser = parse_key)]
    key: Option<String>,
    /// Most guest RAM accepted: a stream announcing more is refused before anything is
    /// allocated.
    #[arg(long, default_value = "64G", value_parser = parse_size)]
    max_ram: usize,
    /// Give up when no sender connected within this many seconds (default: wait forever).
    #[arg(long)]
    wait: Option<u64>,
    /// Worker threads for decoding (default: all cores).
    #[arg(long, value_parser = crate::parse_threads)]
    threads: Option<usize>,
}

pub(crate) fn send(a: QemuSendArgs) -> Result<ExitCode> {
    let (identity, peers) = credentials(&a.identity, &a.peers)?;
    let mut config = engine_config(&a.engine, identity.node_id());
    if a.engine.bandwidth.is_none() {
        // Hybrid mode starts from the fastest link its cost model believes in, and the rate
        // measured from the socket pulls that down within the first megabytes on a slower
        // one. QEMU writes as fast as the pipe takes it, so a slow start (the usual
        // 100 Mbit/s) would compress the first tens of megabytes for a slow link on a fast
        // one too: at 1 Gbit/s that was a third of a 512 MiB guest's stream. On a slow link
        // the fast start costs the first megabytes' better ratio only.
        config.bandwidth = config.selector.max_link_rate;
    }
    let mut migration = migrate::MigrationOptions::new(a.key.clone(), config);
    migration.max_ram = a.max_ram as u64;
    let options = QemuSendOptions { to: a.to.clone(), identity, peers, migration };
    let t = std::time::Instant::now();
    let stats = migrate::qemu_send(&options, std::io::stdin())
        .with_context(|| format!("cannot migrate {} to {}", a.key, a.to))?;
    let seconds = t.elapsed().as_secs_f64();
    if a.json {
        eprintln!(
            "{}",
            serde_json::json!({
                "key": a.key, "source_bytes": stats.source_bytes, "wire_bytes": stats.wire_bytes,
                "frame_bytes": stats.frame_bytes, "skeleton_bytes": stats.skeleton_bytes,
                "pages": stats.pages, "zero_pages": stats.zero_pages, "pages_elided": stats.pages_elided,
                "batches": stats.batches, "codecs": stats.codecs, "seconds": seconds,
            })
        );
    } else {
        eprintln!(
            "hde qemu-send: {}: {} bytes of QEMU's stream as {} bytes ({:.1}x) in {} batches, {:.2} s; {} of {} page records sent without their bytes; codecs: {}",
            a.key,
            stats.source_bytes,
            stats.wire_bytes,
            stats.source_bytes as f64 / stats.wire_bytes.max(1) as f64,
            stats.batches,
            seconds,
            stats.pages_elided,
            stats.pages + stats.zero_pages,
            stats.codecs.iter().map(|(c, n)| format!("{c} x{n}")).collect::<Vec<_>>().join(", "),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn recv(a: QemuRecvArgs) -> Result<ExitCode> {
    let (identity, peers) = credentials(&a.identity, &a.peers)?;
    let mut config = hde_core::HdeConfig::new(identity.node_id());
    if let Some(threads) = a.threads {
        config.threads = threads;
    }
    let mut migration = migrate::MigrationOptions::new(a.key.clone().unwrap_or_default(), config);
    migration.max_ram = a.max_ram as u64;
    let options =
        QemuRecvOptions { listen: a.listen, identity, peers, migration, wait: a.wait.map(Duration::from_secs) };
    // Standard output is QEMU's migration stream: messages go to stderr only.
    let stats = migrate::qemu_recv(&options, std::io::stdout(), |addr| {
        eprintln!("hde qemu-recv: listening on {addr}");
    })
    .with_context(|| format!("migration received on {} failed", a.listen))?;
    eprintln!(
        "hde qemu-recv: {} bytes of QEMU's stream rebuilt from {} bytes in {} batches",
        stats.stream_bytes, stats.wire_bytes, stats.batches
    );
    Ok(ExitCode::SUCCESS)
}
