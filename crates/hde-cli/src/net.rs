//! `hde keygen`, `hde serve` and `hde send`: rounds between nodes, over `hde-net`.

use std::io::IsTerminal as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use hde_core::HdeConfig;
use hde_net::client::{self, Progress, ProgressHook, SendOptions};
use hde_net::identity::{Identity, Peers};
use hde_net::server::{ServeOptions, Server};

use crate::{engine_config, parse_key, parse_size, parse_threads, EngineArgs};

/// The flags of `hde serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (e.g. 0.0.0.0:7070, 127.0.0.1:0).
    #[arg(long)]
    listen: SocketAddr,
    /// This node's key pair (a directory made by `hde keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The senders accepted: a file of their key.pub lines, one per line.
    #[arg(long)]
    peers: PathBuf,
    /// Where baselines live between runs (a restarted receiver serves deltas again).
    #[arg(long)]
    state: PathBuf,
    /// Write each key's latest verified image to `DIR/<key>.raw` (atomically) before confirming.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The largest frame a sender may send (the memory one connection may hold).
    #[arg(long, default_value = "8G", value_parser = parse_size)]
    max_memory: usize,
    /// Stop after this many seconds with no connection open (default: serve forever).
    #[arg(long)]
    max_idle: Option<u64>,
    /// Worker threads for decoding (default: all cores).
    #[arg(long, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Flush each image written to --out to stable storage before confirming its round (as
    /// rsync's --fsync). Without it a power cut can lose the latest image; the sender's next
    /// round is then a keyframe, never a wrong image.
    #[arg(long)]
    fsync: bool,
    /// Seconds between rescans of --state for the baseline index and index exchanges with a
    /// peer (peers whose --peers line ends with their serve address).
    #[arg(long, default_value_t = 2.0)]
    sync_every: f64,
    /// Serve Prometheus metrics at http://ADDR/metrics and a health check at /health.
    #[arg(long)]
    metrics: Option<SocketAddr>,
}

/// The flags of `hde cluster status`.
#[derive(Args)]
pub(crate) struct ClusterArgs {
    /// This node's key pair (a directory made by `hde keygen`), accepted by the nodes asked.
    #[arg(long)]
    identity: PathBuf,
    /// The nodes: their key.pub lines, each followed by its serve address.
    #[arg(long)]
    peers: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// The flags of `hde send`.
#[derive(Args)]
pub(crate) struct SendArgs {
    /// The images: rounds of one key, in order.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The receiver (`host:port` of an `hde serve`).
    #[arg(long)]
    to: String,
    /// This node's key pair (a directory made by `hde keygen`).
    #[arg(long)]
    identity: PathBuf,
    /// The receivers accepted: a file of their key.pub lines.
    #[arg(long)]
    peers: PathBuf,
    /// The key (VM) the rounds belong to.
    #[arg(long, value_parser = parse_key)]
    key: String,
    /// Keep the sender's baselines here: a later send of the key continues with deltas.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Make the first round a keyframe whatever the baseline.
    #[arg(long)]
    keyframe: bool,
    /// Connections to try per round before giving up.
    #[arg(long, default_value_t = 8)]
    attempts: u32,
    /// Cap what goes on the link, as QEMU's max-bandwidth does: bits as 100mbit or 1gbit,
    /// bytes as 12.5MB/s.
    #[arg(long, value_parser = crate::parse_rate)]
    limit_rate: Option<hde_core::units::Rate>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

pub(crate) fn keygen(out: &std::path::Path) -> Result<ExitCode> {
    let identity = Identity::generate()?;
    identity.write(out).with_context(|| format!("cannot write a key pair to {}", out.display()))?;
    println!("{}", identity.public_line());
    eprintln!(
        "hde keygen: wrote {0}/key (private) and {0}/key.pub; give the line above (key.pub) to the peers that must accept this node",
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn credentials(identity: &std::path::Path, peers: &std::path::Path) -> Result<(Identity, Peers)> {
    let id = Identity::load(identity).with_context(|| format!("cannot load the identity in {}", identity.display()))?;
    let peers = Peers::load(peers)?;
    Ok((id, peers))
}

pub(crate) fn serve(a: ServeArgs) -> Result<ExitCode> {
    let (identity, peers) = credentials(&a.identity, &a.peers)?;
    let mut config = HdeConfig::new(identity.node_id());
    if let Some(threads) = a.threads {
        config.threads = threads;
    }
    let options = ServeOptions {
        identity,
        peers,
        state: a.state,
        out: a.out,
        max_frame: a.max_memory as u64,
        config,
        max_idle: a.max_idle.map(Duration::from_secs),
        log: true,
        fsync: a.fsync,
        sync_every: Duration::from_secs_f64(a.sync_every.clamp(0.05, 86_400.0)),
        metrics: a.metrics,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    runtime.block_on(async {
        let server = Server::bind(a.listen, options).await?;
        // The bound address on stdout, for scripts and tests that listen on port 0. A daemon
        // outlives whoever read it: a closed stdout is no reason to stop.
        let mut hello = format!("listening on {}\n", server.local_addr()?);
        if let Some(addr) = server.metrics_addr()? {
            hello.push_str(&format!("metrics on http://{addr}/metrics\n"));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(hello.as_bytes()).and_then(|()| stdout.flush());
        server.run().await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One progress bar per round on stderr: the image's bytes encoded, what went on the link,
/// the ratio so far, the rate and the time left; it ends with the round's line.
fn progress_bars() -> ProgressHook {
    use indicatif::{ProgressBar, ProgressStyle};
    let current: std::sync::Mutex<Option<(u64, ProgressBar)>> = std::sync::Mutex::new(None);
    ProgressHook(std::sync::Arc::new(move |p: &Progress| {
        let mut current = current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_none_or(|(round, _)| *round != p.round) {
            let bar = ProgressBar::new(p.input_bytes);
            if let Ok(style) =
                ProgressStyle::with_template("round {prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ETA {eta}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(p.round.to_string());
            *current = Some((p.round, bar));
        }
        let Some((_, bar)) = current.as_ref() else { return };
        bar.set_position(p.input_done);
        let ratio = p.frame_bytes as f64 / p.input_done.max(1) as f64;
        let rate = p.frame_bytes as f64 * 8.0 / p.seconds.max(1e-6) / 1e6;
        bar.set_message(format!("sent {} ratio {ratio:.4} {rate:.1} Mbit/s", indicatif::HumanBytes(p.frame_bytes)));
        if p.confirmed {
            bar.finish_and_clear();
            *current = None;
        }
    }))
}

pub(crate) fn send(a: SendArgs) -> Result<ExitCode> {
    let (identity, peers) = credentials(&a.identity, &a.peers)?;
    let config: HdeConfig = engine_config(&a.engine, identity.node_id());
    let options = SendOptions {
        to: a.to.clone(),
        identity,
        peers,
        key: a.key.clone(),
        state: a.state,
        config,
        keyframe: a.keyframe,
        attempts: a.attempts,
        limit_bytes_per_second: a.limit_rate.map(hde_core::units::Rate::bytes_per_second),
        // A bar per round on a terminal; scripts (--json, a pipe) get none.
        progress: (!a.json && std::io::stderr().is_terminal()).then(progress_bars),
        bandwidth_given: a.engine.bandwidth.is_some(),
    };
    let reports = client::send(&options, &a.images).with_context(|| format!("cannot send {} to {}", a.key, a.to))?;
    if a.json {
        let rounds: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "round": r.round,
                    "kind": if r.keyframe { "full" } else { "delta" },
                    "base_key": r.base,
                    "input_bytes": r.input_bytes,
                    "frame_bytes": r.frame_bytes,
                    "seconds_until_confirmed": r.seconds,
                    "attempts": r.attempts,
                    "link_bits_per_second": r.link_bytes_per_second * 8.0,
                })
            })
            .collect();
        let limit = a.limit_rate.map(hde_core::units::Rate::bits_per_second);
        println!(
            "{}",
            serde_json::json!({
                "key": a.key,
                "to": a.to,
                "mode": a.engine.mode.name(),
                "limit_rate_bits_per_second": limit,
                "rounds": rounds,
            })
        );
    } else {
        if let Some(base) = reports.iter().find_map(|r| r.base.as_ref()) {
            // A key new to the receiver, sent against another VM's image it holds.
            println!("{}: first round encoded against {base:?}, the most similar baseline {} holds", a.key, a.to);
        }
        println!(
            "{:>5} {:>5} {:>12} {:>11} {:>7} {:>9} {:>12}",
            "round", "kind", "input", "sent", "ratio", "s", "link Mbit/s"
        );
        for r in &reports {
            let link = if r.link_bytes_per_second > 0.0 {
                format!("{:.1}", r.link_bytes_per_second * 8.0 / 1e6)
            } else {
                "-".to_owned()
            };
            println!(
                "{:>5} {:>5} {:>12} {:>11} {:>7.4} {:>9.3} {:>12}",
                r.round,
                match (r.keyframe, &r.base) {
                    (true, _) => "full",
                    (false, None) => "delta",
                    (false, Some(_)) => "xdelta",
                },
                r.input_bytes,
                r.frame_bytes,
                r.frame_bytes as f64 / r.input_bytes.max(1) as f64,
                r.seconds,
                link
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The demo's second part: the same rounds moved by `hde send` to an `hde serve` on loopback
/// (both in this process, over TLS with freshly made keys), verified at the receiver, with
/// what lz4 and zstd -3 make of each round beside them. Returns whether the image verified.
pub(crate) fn demo_transport(
    files: &[PathBuf],
    dir: &std::path::Path,
    threads: Option<usize>,
    out: &mut impl std::io::Write,
) -> Result<bool> {
    use hde_core::codec::{CodecSet, CodecSpec};
    let (server_id, client_id) = (Identity::generate()?, Identity::generate()?);
    let mut config = HdeConfig::new(2);
    if let Some(t) = threads {
        config.threads = t;
    }
    let serve = ServeOptions {
        identity: server_id.clone(),
        peers: Peers::from_certs(vec![client_id.certificate().clone()]),
        state: dir.join("recv-state"),
        out: Some(dir.join("received")),
        max_frame: 8 << 30,
        config: config.clone(),
        max_idle: Some(Duration::from_secs(1)),
        log: false,
        fsync: false,
        sync_every: Duration::from_secs(3600),
        metrics: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let server = runtime.block_on(Server::bind("127.0.0.1:0".parse()?, serve))?;
    let addr = server.local_addr()?;
    let serving = std::thread::spawn(move || runtime.block_on(server.run()));
    let mut send_config = HdeConfig::new(1);
    send_config.threads = config.threads;
    let options = SendOptions {
        to: addr.to_string(),
        identity: client_id,
        peers: Peers::from_certs(vec![server_id.certificate().clone()]),
        key: "demo".into(),
        state: None,
        config: send_config,
        keyframe: false,
        attempts: 3,
        limit_bytes_per_second: None,
        progress: None,
        bandwidth_given: false,
    };
    let start = std::time::Instant::now();
    let reports = client::send(&options, files)?;
    let seconds = start.elapsed().as_secs_f64();
    serving.join().map_err(|_| anyhow::anyhow!("the demo's receiver panicked"))??;
    let last = files.last().context("no rounds")?;
    let verified =
        std::fs::read(dir.join("received").join(hde_net::server::image_name("demo")))? == std::fs::read(last)?;
    let sent: u64 = reports.iter().map(|r| r.frame_bytes).sum();
    let input: u64 = reports.iter().map(|r| r.input_bytes).sum();
    // The general tools on the same rounds: each round compressed whole (they have no baseline).
    let mut set = CodecSet::new();
    let mut peer = |spec: &str| -> Result<u64> {
        let spec: CodecSpec = spec.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut total = 0;
        for f in files {
            let image = std::fs::read(f)?;
            let mut buf = Vec::new();
            total += set.compress(spec, &image, &[], &mut buf)? as u64;
        }
        Ok(total)
    };
    let (lz4, zstd3) = (peer("lz4")?, peer("zstd-3")?);
    writeln!(out)?;
    writeln!(
        out,
        "over the network: hde send -> hde serve on loopback (TLS 1.3, pinned keys, hybrid mode), {} rounds",
        reports.len()
    )?;
    writeln!(out, "{:<26} {:>12} {:>8}", "", "bytes sent", "ratio")?;
    writeln!(out, "{:<26} {:>12} {:>8.4}", "hde send (deltas)", sent, sent as f64 / input.max(1) as f64)?;
    writeln!(out, "{:<26} {:>12} {:>8.4}", "lz4, each round whole", lz4, lz4 as f64 / input.max(1) as f64)?;
    writeln!(out, "{:<26} {:>12} {:>8.4}", "zstd -3, each round whole", zstd3, zstd3 as f64 / input.max(1) as f64)?;
    writeln!(
        out,
        "{seconds:.2} s from the sender's start until the receiver confirmed the last round; its image {}",
        if verified { "equals the input byte for byte" } else { "DIFFERS from the input" }
    )?;
    writeln!(out, "ratio = bytes sent / bytes of the rounds' images: lower is better (0.05 means 20x fewer bytes)")?;
    Ok(verified)
}

/// `hde cluster status`: each node's view of the baseline index, and whether they agree.
pub(crate) fn cluster_status(a: ClusterArgs) -> Result<ExitCode> {
    let (identity, peers) = credentials(&a.identity, &a.peers)?;
    if peers.addresses().is_empty() {
        anyhow::bail!("{} gives no node's address: end each node's line with its serve address", a.peers.display());
    }
    let views = hde_net::cluster::status(&identity, &peers)?;
    let first = views.first().and_then(hde_net::cluster::NodeView::digest);
    let agree = first.is_some() && views.iter().all(|v| v.digest() == first);
    if a.json {
        let nodes: Vec<serde_json::Value> = views
            .iter()
            .map(|v| match &v.index {
                Ok(m) => serde_json::json!({
                    "node": format!("{:016x}", v.node),
                    "address": v.addr,
                    "digest": v.digest().map(|d| format!("{d:016x}")),
                    "entries": m.iter().map(|(h, meta)| serde_json::json!({
                        "key": h.key,
                        "holder": format!("{:016x}", h.node),
                        "seq": meta.seq,
                        "checksum": format!("{:016x}", meta.checksum),
                        "size": meta.size,
                        "time_ms": meta.time_ms,
                    })).collect::<Vec<_>>(),
                }),
                Err(e) => serde_json::json!({ "node": format!("{:016x}", v.node), "address": v.addr, "error": e }),
            })
            .collect();
        println!("{}", serde_json::json!({ "agree": agree, "nodes": nodes }));
    } else {
        for v in &views {
            match &v.index {
                Ok(m) => {
                    println!(
                        "node {:016x} at {}: {} entries, digest {:016x}",
                        v.node,
                        v.addr,
                        m.len(),
                        v.digest().unwrap_or(0)
                    );
                    for (h, meta) in m.iter() {
                        println!(
                            "  {:<24} held by {:016x}: seq {} checksum {:016x} {} bytes",
                            h.key, h.node, meta.seq, meta.checksum, meta.size
                        );
                    }
                }
                Err(e) => println!("node {:016x} at {}: {e}", v.node, v.addr),
            }
        }
        println!("replicas {}", if agree { "agree" } else { "differ" });
    }
    Ok(if agree { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
