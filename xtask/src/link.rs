//! `cargo xtask bench-link`: the time until the receiver holds a verified copy of each round,
//! for `hde send` / `hde serve` and for peer pipelines, through one shaped link.
//!
//! The link: two network namespaces joined by a veth pair, each direction shaped with `tbf`
//! to `--rate`; with `--rtt`, a delay relay (`hde relay`, in the sender's namespace) holds
//! each direction for half the round trip, since this kernel has no `netem`. Not modelled:
//! loss, reordering, jitter, a bottleneck queue shared with other traffic.
//!
//! Per round, each tool runs as whole processes on both sides. hde: one `hde serve` per run
//! (fresh state), one `hde send --state` per round; the round counts from the sender's start
//! until `hde send` exits, which is after the receiver verified, saved and confirmed it.
//! Peers: the receiver pipeline (`socat` into the decompressor, into a file) starts first,
//! then the sender pipeline (the compressor into `socat`); the round counts from the sender's
//! start until the receiver's pipeline exits. Round 0 peers: `lz4 -1`, `zstd -1 -T2`,
//! `zstd -3 -T2`, `zstd --adapt -T2`, `zstd -19 --long=27 -T2` (unless `--skip-slow`); later
//! rounds: `zstd --patch-from=<previous>` and `xdelta3 -s <previous>` (the receiver holds the
//! previous round). Every output is compared with the input after the clock stops. Bytes on
//! the link come from the sender's veth counters.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::json;

use crate::{cargo, root, run};

/// Arguments of `cargo xtask bench-link`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of `snap_NN.raw` files (make-vm-snapshots.sh or `cargo xtask corpus`).
    #[arg(long)]
    snapshots: PathBuf,
    /// The link's rate, as tc writes it (e.g. 10mbit, 100mbit, 1gbit), or `none` for the
    /// veth pair unshaped.
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Round-trip time added by a delay relay, in milliseconds.
    #[arg(long, default_value_t = 0)]
    rtt: u64,
    /// Repetitions; every figure is the median.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Use at most this many rounds of the directory.
    #[arg(long)]
    rounds: Option<usize>,
    /// Skip `zstd -19 --long=27` (minutes per round 0 of 256 MiB).
    #[arg(long)]
    skip_slow: bool,
    /// Where to write the JSON results (default: target/bench-link/results.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// A fault in hde's round R: SIGKILL the receiver SECS seconds into it and start it again
    /// on the same state (`R:SECS`); the sender must finish the round by itself.
    #[arg(long, value_parser = parse_fault)]
    kill_receiver: Option<(usize, f64)>,
    /// A fault in hde's round R: cut its connection (`ss -K` on the receiver's side) SECS
    /// seconds into it (`R:SECS`).
    #[arg(long, value_parser = parse_fault)]
    cut: Option<(usize, f64)>,
    /// Measure hde only (no peer pipelines): for the fault runs.
    #[arg(long)]
    hde_only: bool,
    /// Change the link's rate in the middle of a round, for every tool alike: round R starts
    /// at `--rate`, turns to RATE SECS seconds into it, and later rounds stay at RATE
    /// (`R:SECS:RATE`, e.g. `0:1.5:10mbit`).
    #[arg(long, value_parser = parse_change)]
    rate_change: Option<(usize, f64, String)>,
    /// Pass `--bandwidth RATE` to `hde send` (what hde would do if it knew the link from the
    /// start; without it hde measures the link).
    #[arg(long)]
    hde_bandwidth: Option<String>,
}

fn parse_change(s: &str) -> std::result::Result<(usize, f64, String), String> {
    let mut parts = s.splitn(3, ':');
    let (Some(round), Some(secs), Some(rate)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected ROUND:SECONDS:RATE, e.g. 0:1.5:10mbit".into());
    };
    Ok((round.parse().map_err(|e| format!("{e}"))?, secs.parse().map_err(|e| format!("{e}"))?, rate.to_owned()))
}

/// The rate schedule of one tool's round `r`: sets the rate it starts at, and changes it
/// later on a thread of its own where `--rate-change` says so (joined by the caller).
fn schedule(link: &Link, args: &Args, r: usize) -> Result<Option<std::thread::JoinHandle<Result<()>>>> {
    let Some((round, secs, rate)) = &args.rate_change else { return Ok(None) };
    link.set_rate(if r > *round { rate } else { &args.rate })?;
    if r != *round {
        return Ok(None);
    }
    let (rate, secs, devs) = (rate.clone(), *secs, link.devs());
    Ok(Some(std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(secs));
        Link::set_rate_of(&devs, &rate)
    })))
}

fn parse_fault(s: &str) -> std::result::Result<(usize, f64), String> {
    let (round, secs) = s.split_once(':').ok_or("expected ROUND:SECONDS, e.g. 2:1.5")?;
    Ok((round.parse().map_err(|e| format!("{e}"))?, secs.parse().map_err(|e| format!("{e}"))?))
}

/// Starts `hde serve` in the receiver's namespace on `state` (fresh or kept).
fn start_server(link: &Link, hde: &Path, work: &Path, state: &Path) -> Result<Child> {
    let mut server = link
        .exec(1, hde)
        // Killed at the end of its run; the idle limit only guards against a harness that
        // died. Peers can keep hde's receiver idle for minutes on a slow link.
        .args(["serve", "--listen", &format!("{}:{HDE_PORT}", ADDR[1]), "--max-idle", "3600"])
        .arg("--identity")
        .arg(work.join("b"))
        .arg("--peers")
        .arg(work.join("peers-of-b"))
        .arg("--state")
        .arg(state.join("recv"))
        .arg("--out")
        .arg(state.join("out"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    first_line(&mut server)?;
    Ok(server)
}

pub(crate) const ADDR: [&str; 2] = ["10.213.9.1", "10.213.9.2"];
const HDE_PORT: u16 = 7070;
const PEER_PORT: u16 = 7071;

/// The shaped link; removed on drop.
pub(crate) struct Link {
    ns: [String; 2],
    dev: String,
    peer: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("cannot run ip (iproute2)")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

impl Link {
    pub(crate) fn new(rate: &str) -> Result<Link> {
        let pid = std::process::id();
        let link = Link {
            ns: [format!("hdebl-a-{pid}"), format!("hdebl-b-{pid}")],
            dev: format!("hbla{pid}"),
            peer: format!("hblb{pid}"),
        };
        let peer = link.peer.clone();
        let [a, b] = &link.ns;
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&["link", "add", &link.dev, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &link.dev, "netns", a])?;
        ip(&["link", "set", &peer, "netns", b])?;
        for (ns, dev, addr) in [(a, &link.dev, ADDR[0]), (b, &peer, ADDR[1])] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            if rate == "none" {
                continue; // unshaped: the veth pair as it is
            }
            // A queue of 400 ms holds the bandwidth-delay product of every link measured here;
            // a shorter one makes tbf drop silently.
            run(Command::new("tc")
                .args(["-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate])
                .args(["burst", "256kb", "latency", "400ms"]))?;
        }
        Ok(link)
    }

    /// The (namespace, device) of each side.
    fn devs(&self) -> [(String, String); 2] {
        [(self.ns[0].clone(), self.dev.clone()), (self.ns[1].clone(), self.peer.clone())]
    }

    /// Changes the shaped rate of both directions.
    fn set_rate(&self, rate: &str) -> Result<()> {
        Link::set_rate_of(&self.devs(), rate)
    }

    fn set_rate_of(devs: &[(String, String); 2], rate: &str) -> Result<()> {
        for (ns, dev) in devs {
            run(Command::new("tc")
                .args(["-n", ns, "qdisc", "change", "dev", dev, "root", "tbf", "rate", rate])
                .args(["burst", "256kb", "latency", "400ms"]))?;
        }
        Ok(())
    }

    /// The command that runs a program in namespace `side`.
    pub(crate) fn wrapper(&self, side: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns[side].clone()]
    }

    /// `program` in namespace `side` (0 sender, 1 receiver).
    pub(crate) fn exec(&self, side: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns[side]]).arg(program);
        c
    }

    /// The address the sender's side reaches the receiver's `port` at: directly, or with
    /// `rtt` > 0 through an `hde relay` in the sender's namespace that holds each direction
    /// for half the round trip (added to `relays`).
    pub(crate) fn target(&self, hde: &Path, rtt: u64, port: u16, relays: &mut Children) -> Result<String> {
        let direct = format!("{}:{port}", ADDR[1]);
        if rtt == 0 {
            return Ok(direct);
        }
        let mut child = self
            .exec(0, hde)
            .args(["relay", "--to", &direct, "--delay-ms", &(rtt / 2).to_string(), "--lifetime", "7200"])
            .stdout(Stdio::piped())
            .spawn()?;
        let line = first_line(&mut child)?;
        relays.0.push(child);
        Ok(line.strip_prefix("relaying on ").context("the relay's address")?.to_owned())
    }

    /// Bytes the sender's side has put on the link.
    pub(crate) fn tx_bytes(&self) -> Result<u64> {
        let out = self
            .exec(0, "cat")
            .arg(format!("/sys/class/net/{}/statistics/tx_bytes", self.dev))
            .output()
            .context("cannot read the link's counters")?;
        String::from_utf8_lossy(&out.stdout).trim().parse().context("the link's tx_bytes")
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Processes killed when dropped (the relays), also when a run fails half-way.
pub(crate) struct Children(pub(crate) Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads the first line a child prints (e.g. `listening on ADDR`).
pub(crate) fn first_line(child: &mut Child) -> Result<String> {
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn require_tools() -> Result<()> {
    let missing: Vec<&str> = ["zstd", "lz4", "xdelta3", "socat", "tc", "ip"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bench-link: installing {}", missing.join(" "));
    let pkgs: Vec<&str> = missing.iter().map(|t| if matches!(*t, "tc" | "ip") { "iproute2" } else { t }).collect();
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get").args(["install", "-y", "-qq"]).args(&pkgs))
}

/// One peer pipeline: compressor on the sender, decompressor on the receiver.
struct Peer {
    name: &'static str,
    delta: bool,
    slow: bool,
    /// Shell words reading the input file `$IN` (and `$PREV`) and writing to stdout.
    compress: &'static str,
    /// Shell words reading stdin and writing the image to stdout (`$PREV` available).
    decompress: &'static str,
}

const PEERS: [Peer; 7] = [
    Peer { name: "lz4 -1", delta: false, slow: false, compress: "lz4 -1 -c \"$IN\"", decompress: "lz4 -d -c" },
    Peer {
        name: "zstd -1 -T2",
        delta: false,
        slow: false,
        compress: "zstd -1 -T2 -q -c \"$IN\"",
        decompress: "zstd -d -q -c",
    },
    Peer {
        name: "zstd -3 -T2",
        delta: false,
        slow: false,
        compress: "zstd -3 -T2 -q -c \"$IN\"",
        decompress: "zstd -d -q -c",
    },
    Peer {
        name: "zstd --adapt -T2",
        delta: false,
        slow: false,
        compress: "zstd --adapt -T2 -q -c \"$IN\"",
        decompress: "zstd -d -q -c",
    },
    Peer {
        name: "zstd -19 --long=27 -T2",
        delta: false,
        slow: true,
        compress: "zstd -19 --long=27 -T2 -q -c \"$IN\"",
        decompress: "zstd -d -q --long=31 -c",
    },
    Peer {
        name: "zstd --patch-from",
        delta: true,
        slow: false,
        compress: "zstd -3 -T2 -q --patch-from=\"$PREV\" -c \"$IN\"",
        decompress: "zstd -d -q --long=31 --patch-from=\"$PREV\" -c",
    },
    Peer {
        name: "xdelta3",
        delta: true,
        slow: false,
        compress: "xdelta3 -e -c -s \"$PREV\" \"$IN\"",
        decompress: "xdelta3 -d -c -s \"$PREV\"",
    },
];

/// One measured round of one tool.
#[derive(Clone, Copy)]
struct Figure {
    seconds: f64,
    bytes: u64,
}

fn same_file(a: &Path, b: &Path) -> Result<bool> {
    Ok(std::fs::read(a)? == std::fs::read(b)?)
}

/// The peer `p` moves `input` (with `prev` on both sides) to `out` through the link.
fn peer_round(link: &Link, target: &str, p: &Peer, input: &Path, prev: &Path, out: &Path) -> Result<Figure> {
    let _ = std::fs::remove_file(out);
    let recv = format!("socat -u TCP-LISTEN:{PEER_PORT},reuseaddr STDOUT | {} > \"$OUT\"", p.decompress);
    let mut receiver = link
        .exec(1, "sh")
        .args(["-c", &recv])
        .env("PREV", prev)
        .env("OUT", out)
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the receiving pipeline")?;
    // The listener is up once a probe connects; the probe closes at once (socat then waits
    // for the next connection only if asked: it is not, so probe with a short-lived check).
    std::thread::sleep(Duration::from_millis(300));
    let before = link.tx_bytes()?;
    let start = Instant::now();
    let send = format!("{} | socat -u STDIN TCP:{target}", p.compress);
    let status = link.exec(0, "sh").args(["-c", &send]).env("IN", input).env("PREV", prev).status()?;
    ensure!(status.success(), "{}: the sending pipeline failed", p.name);
    let status = receiver.wait()?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(status.success(), "{}: the receiving pipeline failed", p.name);
    let bytes = link.tx_bytes()? - before;
    ensure!(same_file(out, input)?, "{}: the received image differs from the input", p.name);
    Ok(Figure { seconds, bytes })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub(crate) fn run_bench(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "bench-link makes network namespaces: run it as root");
    require_tools()?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.snapshots)
        .with_context(|| format!("cannot read {}", args.snapshots.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("snap_") && n.ends_with(".raw"))
        })
        .collect();
    files.sort();
    if let Some(n) = args.rounds {
        files.truncate(n);
    }
    ensure!(!files.is_empty(), "no snap_NN.raw in {}", args.snapshots.display());
    run(cargo().args(["build", "--release", "-p", "hde-cli"]))?;
    let hde = root().join("target/release/hde");
    let work = root().join("target/bench-link/work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let (a, b) = (work.join("a"), work.join("b"));
    for (dir, name) in [(&a, "a"), (&b, "b")] {
        let out = Command::new(&hde).args(["keygen", "--out"]).arg(dir).output()?;
        ensure!(out.status.success(), "hde keygen {name}");
        std::fs::write(work.join(format!("peers-of-{}", if name == "a" { "b" } else { "a" })), &out.stdout)?;
    }
    let link = Link::new(&args.rate)?;
    // With --rtt, both kinds of tool reach the receiver through a relay in the sender's
    // namespace that holds each direction for half the round trip.
    let mut relays = Children(Vec::new());
    let mut target = |port: u16| link.target(&hde, args.rtt, port, &mut relays);
    let (hde_target, peer_target) = (target(HDE_PORT)?, target(PEER_PORT)?);

    // times[tool][round] over the runs; bytes the same.
    let mut times: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    let mut bytes: BTreeMap<String, BTreeMap<usize, u64>> = BTreeMap::new();
    for run_index in 0..args.runs {
        let state = work.join(format!("run{run_index}"));
        // In a guard: a failed round must not leave the receiver running.
        let mut server = Children(vec![start_server(&link, &hde, &work, &state)?]);
        for (r, input) in files.iter().enumerate() {
            let change = schedule(&link, args, r)?;
            let before = link.tx_bytes()?;
            let start = Instant::now();
            let mut send = link.exec(0, &hde);
            send.args(["send", "--to", &hde_target, "--key", "vm"]);
            if let Some(rate) = &args.hde_bandwidth {
                send.args(["--bandwidth", rate]);
            }
            let mut send = send
                .arg("--identity")
                .arg(&a)
                .arg("--peers")
                .arg(work.join("peers-of-a"))
                .arg("--state")
                .arg(state.join("send"))
                .arg(input)
                .stdout(Stdio::null())
                .spawn()?;
            let faults = [(args.kill_receiver, true), (args.cut, false)];
            for (at, kill) in faults.into_iter().filter_map(|(f, k)| f.filter(|f| f.0 == r).map(|f| (f.1, k))) {
                while start.elapsed().as_secs_f64() < at && send.try_wait()?.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                ensure!(send.try_wait()?.is_none(), "round {r} ended before its fault at {at} s");
                if kill {
                    let old = &mut server.0[0];
                    old.kill()?; // SIGKILL
                    old.wait()?;
                    eprintln!("run {run_index} round {r}: receiver killed at {:.2} s", start.elapsed().as_secs_f64());
                    server.0[0] = start_server(&link, &hde, &work, &state)?;
                } else {
                    let filter = format!("( sport = :{HDE_PORT} )");
                    run(link.exec(1, "ss").args(["-K", "-t", "state", "established", &filter]).stdout(Stdio::null()))?;
                    eprintln!("run {run_index} round {r}: connection cut at {:.2} s", start.elapsed().as_secs_f64());
                }
            }
            let status = send.wait()?;
            let seconds = start.elapsed().as_secs_f64();
            if let Some(change) = change {
                change.join().map_err(|_| anyhow::anyhow!("the rate change panicked"))??;
            }
            ensure!(status.success(), "hde send of round {r} failed");
            let sent = link.tx_bytes()? - before;
            ensure!(same_file(&state.join("out/vm.raw"), input)?, "hde: round {r} differs at the receiver");
            times.entry("hde".into()).or_default().entry(r).or_default().push(seconds);
            bytes.entry("hde".into()).or_default().insert(r, sent);
            eprintln!("run {run_index} round {r}: hde {seconds:.3} s, {sent} bytes");
            let peers = PEERS.iter().filter(|p| !args.hde_only && p.delta == (r > 0) && !(p.slow && args.skip_slow));
            for p in peers {
                let prev = if r > 0 { &files[r - 1] } else { input };
                let change = schedule(&link, args, r)?;
                let f = peer_round(&link, &peer_target, p, input, prev, &work.join("peer-out.raw"))?;
                if let Some(change) = change {
                    change.join().map_err(|_| anyhow::anyhow!("the rate change panicked"))??;
                }
                eprintln!("run {run_index} round {r}: {} {:.3} s, {} bytes", p.name, f.seconds, f.bytes);
                times.entry(p.name.into()).or_default().entry(r).or_default().push(f.seconds);
                bytes.entry(p.name.into()).or_default().insert(r, f.bytes);
            }
        }
        drop(server);
    }
    drop(relays);
    drop(link);

    // The table, the JSON and the summary line.
    let rounds = files.len();
    let med = |tool: &str, r: usize| times.get(tool).and_then(|t| t.get(&r)).map(|v| median(v.clone()));
    println!(
        "link {} rtt {} ms, {} rounds of {}, medians of {}",
        args.rate,
        args.rtt,
        rounds,
        args.snapshots.display(),
        args.runs
    );
    println!("{:<24} {:>5} {:>14} {:>10}", "tool", "round", "bytes on link", "s");
    let mut rows = Vec::new();
    for (tool, per_round) in &times {
        for r in per_round.keys() {
            let (s, b) = (med(tool, *r).unwrap_or(0.0), bytes[tool][r]);
            println!("{tool:<24} {r:>5} {b:>14} {s:>10.3}");
            rows.push(json!({"tool": tool, "round": r, "bytes": b, "seconds": s}));
        }
    }
    let hde_total: f64 = (0..rounds).filter_map(|r| med("hde", r)).sum();
    let best = |r: usize| -> Option<f64> {
        times.keys().filter(|t| *t != "hde").filter_map(|t| med(t, r)).min_by(f64::total_cmp)
    };
    let best_total: f64 = (0..rounds).filter_map(best).sum();
    let round0 = med("hde", 0).unwrap_or(0.0) / best(0).unwrap_or(f64::NAN);
    let path = args.json.clone().unwrap_or_else(|| root().join("target/bench-link/results.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = json!({
        "rate": args.rate, "rtt_ms": args.rtt, "runs": args.runs, "snapshots": args.snapshots,
        "rows": rows, "hde_s": hde_total, "best_peer_s": best_total, "round0_ratio": round0,
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("wrote {}", path.display());
    if args.hde_only && hde_total > 0.0 {
        println!("link {} rtt {}: hde_s={hde_total:.3} (hde only)", args.rate, args.rtt);
        return Ok(());
    }
    if !(hde_total > 0.0 && best_total > 0.0) {
        bail!("no complete measurement");
    }
    println!(
        "link {} rtt {}: hde_s={hde_total:.3} best_peer_s={best_total:.3} ratio={:.3} round0_ratio={round0:.3}",
        args.rate,
        args.rtt,
        hde_total / best_total
    );
    Ok(())
}
