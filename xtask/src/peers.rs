//! `cargo xtask bench-peers`: the release `hde` binary against the general tools, whole
//! processes on the same snapshot files, interleaved and repeated.
//!
//! Round 0: `hde encode` in each mode, `lz4`, `zstd -1`, `zstd -3`, `zstd -19 --long=27 -T1`.
//! Later rounds: `hde encode --base <previous>` in each mode, `zstd --patch-from=<previous>`
//! and `xdelta3 -e -s <previous>`. Every encode is followed by its tool's decode, whose output
//! is compared with the input. Wall and CPU time and peak RSS come from `wait4` on the child.
//! Results are medians over `--runs` (hde's output size can differ slightly between runs: its
//! selector learns from measured times; the JSON keeps the smallest and largest).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::json;

use crate::{cargo, root, run};

/// Arguments of `cargo xtask bench-peers`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Directory of `snap_NN.raw` files (make-vm-snapshots.sh or `cargo xtask corpus`).
    #[arg(long)]
    snapshots: PathBuf,
    /// Repetitions; every figure is the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Use at most this many rounds of the directory.
    #[arg(long)]
    rounds: Option<usize>,
    /// Where to write the JSON results (default: target/bench-peers/results.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip the slow `zstd -19 --long=27` (minutes per run on a 256 MiB image).
    #[arg(long)]
    skip_slow: bool,
}

/// How one tool encodes and decodes a round.
struct Tool {
    name: &'static str,
    /// Round 0 tools run on round 0 only; delta tools on later rounds only.
    delta: bool,
    encode: fn(&Paths) -> Command,
    decode: fn(&Paths) -> Command,
}

/// The files of one tool on one round.
struct Paths {
    hde: PathBuf,
    input: PathBuf,
    previous: Option<PathBuf>,
    encoded: PathBuf,
    decoded: PathBuf,
}

fn cmd(program: impl AsRef<std::ffi::OsStr>, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut c = Command::new(program);
    for a in args {
        c.arg(a);
    }
    c
}

fn prev(p: &Paths) -> &Path {
    p.previous.as_deref().unwrap_or(&p.input)
}

fn hde_encode(p: &Paths, mode: &str, threads: Option<&str>) -> Command {
    let mut c = cmd(&p.hde, &[&"encode", &"-f", &"--mode", &mode, &"--key", &"vm"]);
    if mode == "hybrid" {
        c.args(["--bandwidth", "100mbit"]);
    }
    if let Some(t) = threads {
        c.args(["--threads", t]);
    }
    if let Some(prev) = &p.previous {
        c.arg("--base").arg(prev);
    }
    c.arg(&p.input).arg("-o").arg(&p.encoded);
    c
}

fn hde_decode(p: &Paths) -> Command {
    let mut c = cmd(&p.hde, &[&"decode", &"-f"]);
    if let Some(prev) = &p.previous {
        c.arg("--base").arg(prev);
    }
    c.arg(&p.encoded).arg("-o").arg(&p.decoded);
    c
}

fn zstd_decode(p: &Paths) -> Command {
    cmd("zstd", &[&"-d", &"-q", &"-f", &"--long=31", &p.encoded, &"-o", &p.decoded])
}

const TOOLS: &[Tool] = &[
    Tool { name: "hde-datacenter", delta: false, encode: |p| hde_encode(p, "datacenter", None), decode: hde_decode },
    Tool {
        name: "hde-datacenter-1t",
        delta: false,
        encode: |p| hde_encode(p, "datacenter", Some("1")),
        decode: hde_decode,
    },
    Tool { name: "hde-internet", delta: false, encode: |p| hde_encode(p, "internet", None), decode: hde_decode },
    Tool { name: "hde-hybrid", delta: false, encode: |p| hde_encode(p, "hybrid", None), decode: hde_decode },
    Tool {
        name: "lz4",
        delta: false,
        encode: |p| cmd("lz4", &[&"-1", &"-q", &"-f", &p.input, &p.encoded]),
        decode: |p| cmd("lz4", &[&"-d", &"-q", &"-f", &p.encoded, &p.decoded]),
    },
    Tool {
        name: "zstd-1",
        delta: false,
        encode: |p| cmd("zstd", &[&"-1", &"-q", &"-f", &p.input, &"-o", &p.encoded]),
        decode: zstd_decode,
    },
    Tool {
        name: "zstd-3",
        delta: false,
        encode: |p| cmd("zstd", &[&"-3", &"-q", &"-f", &p.input, &"-o", &p.encoded]),
        decode: zstd_decode,
    },
    Tool {
        name: "zstd-19-long",
        delta: false,
        encode: |p| cmd("zstd", &[&"-19", &"--long=27", &"-T1", &"-q", &"-f", &p.input, &"-o", &p.encoded]),
        decode: zstd_decode,
    },
    Tool { name: "hde-datacenter", delta: true, encode: |p| hde_encode(p, "datacenter", None), decode: hde_decode },
    Tool { name: "hde-internet", delta: true, encode: |p| hde_encode(p, "internet", None), decode: hde_decode },
    Tool { name: "hde-hybrid", delta: true, encode: |p| hde_encode(p, "hybrid", None), decode: hde_decode },
    Tool {
        name: "zstd-patch-from",
        delta: true,
        encode: |p| {
            let mut c = cmd("zstd", &[&"-q", &"-f"]);
            c.arg(format!("--patch-from={}", prev(p).display())).arg(&p.input).arg("-o").arg(&p.encoded);
            c
        },
        decode: |p| {
            let mut c = cmd("zstd", &[&"-d", &"-q", &"-f", &"--long=31"]);
            c.arg(format!("--patch-from={}", prev(p).display())).arg(&p.encoded).arg("-o").arg(&p.decoded);
            c
        },
    },
    Tool {
        name: "xdelta3",
        delta: true,
        encode: |p| cmd("xdelta3", &[&"-e", &"-f", &"-s", &prev(p), &p.input, &p.encoded]),
        decode: |p| cmd("xdelta3", &[&"-d", &"-f", &"-s", &prev(p), &p.encoded, &p.decoded]),
    },
];

/// What one process cost.
#[derive(Debug, Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
    peak_rss: u64,
}

/// Runs `cmd` to completion (output discarded) and measures it with `wait4`.
fn measure(mut cmd: Command) -> Result<Cost> {
    let shown = format!("{cmd:?}");
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    let mut stderr = child.stderr;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for (we never call `Child::wait`); the
    // pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    ensure!(r == pid, "wait4 failed for {shown}: {}", std::io::Error::last_os_error());
    let exited_ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    if !exited_ok {
        let mut text = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut text);
        }
        bail!("{shown} failed (status {status}): {}", text.trim());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    Ok(Cost {
        wall,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        peak_rss: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    })
}

/// True if the two files have the same bytes.
fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ra, mut rb) = (BufReader::with_capacity(1 << 20, fa), BufReader::with_capacity(1 << 20, fb));
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        rb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the peers that are missing, with apt.
fn ensure_peers() -> Result<()> {
    let missing: Vec<&str> = ["zstd", "lz4", "xdelta3"].into_iter().filter(|p| !have(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| {
        let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !root {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq"]);
    install.args(&missing);
    run(&mut install)?;
    Ok(())
}

/// The snapshot files of `dir`, in round order.
fn snapshots(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("snap_") && n.ends_with(".raw"))
        })
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no snap_NN.raw files in {}", dir.display());
    Ok(files)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Encode and decode costs and output sizes of one tool on one round over the runs.
type Samples = (Vec<Cost>, Vec<Cost>, Vec<u64>);

/// Medians of one tool on one round.
#[derive(Debug, Clone)]
struct Row {
    round: usize,
    tool: &'static str,
    input: u64,
    /// Median output size.
    bytes: u64,
    /// Smallest and largest output size over the runs.
    bytes_range: (u64, u64),
    enc: Cost,
    dec: Cost,
}

pub(crate) fn run_bench(args: &Args) -> Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let mut files = snapshots(&args.snapshots)?;
    if let Some(n) = args.rounds {
        files.truncate(n.max(1));
    }
    ensure_peers()?;
    run(cargo().args(["build", "--release", "--locked", "-p", "hde-cli"]))?;
    let hde = root().join("target/release/hde");
    let work = root().join("target/bench-peers");
    fs::create_dir_all(&work)?;

    let mut samples: BTreeMap<(usize, &'static str), Samples> = BTreeMap::new();
    for run_no in 0..args.runs {
        for (round, input) in files.iter().enumerate() {
            for tool in TOOLS.iter().filter(|t| t.delta == (round > 0)) {
                if args.skip_slow && tool.name == "zstd-19-long" {
                    continue;
                }
                let paths = Paths {
                    hde: hde.clone(),
                    input: input.clone(),
                    previous: round.checked_sub(1).map(|r| files[r].clone()),
                    encoded: work.join(format!("r{round}.{}.out", tool.name)),
                    decoded: work.join(format!("r{round}.{}.dec", tool.name)),
                };
                let enc = measure((tool.encode)(&paths))?;
                let bytes = fs::metadata(&paths.encoded)?.len();
                let dec = measure((tool.decode)(&paths))?;
                ensure!(
                    same_file(&paths.decoded, input)?,
                    "{} round {round}: the decoded image differs from {}",
                    tool.name,
                    input.display()
                );
                fs::remove_file(&paths.decoded)?;
                fs::remove_file(&paths.encoded)?;
                eprintln!(
                    "run {run_no} round {round} {:<18} {:>12} B  enc {:>7.3} s  dec {:>7.3} s",
                    tool.name,
                    bytes,
                    enc.wall.as_secs_f64(),
                    dec.wall.as_secs_f64()
                );
                let entry = samples.entry((round, tool.name)).or_default();
                entry.0.push(enc);
                entry.1.push(dec);
                entry.2.push(bytes);
            }
        }
    }

    let med = |costs: &[Cost]| Cost {
        wall: median(costs.iter().map(|c| c.wall).collect()),
        cpu: median(costs.iter().map(|c| c.cpu).collect()),
        peak_rss: {
            let mut v: Vec<u64> = costs.iter().map(|c| c.peak_rss).collect();
            v.sort_unstable();
            v[v.len() / 2]
        },
    };
    let rows: Vec<Row> = samples
        .iter()
        .map(|(&(round, tool), (enc, dec, bytes))| {
            let mut sorted = bytes.clone();
            sorted.sort_unstable();
            Row {
                round,
                tool,
                input: fs::metadata(&files[round]).map_or(0, |m| m.len()),
                bytes: sorted[sorted.len() / 2],
                bytes_range: (sorted[0], sorted[sorted.len() - 1]),
                enc: med(enc),
                dec: med(dec),
            }
        })
        .collect();
    print_table(&rows);
    let goals = goals(&rows);
    println!();
    for g in &goals {
        println!("{} {:<60} {}", if g.met { "MET    " } else { "NOT MET" }, g.name, g.detail);
    }
    let json = json!({
        "snapshots": args.snapshots.display().to_string(),
        "runs": args.runs,
        "rows": rows.iter().map(|r| json!({
            "round": r.round, "tool": r.tool, "input_bytes": r.input, "output_bytes": r.bytes,
            "output_bytes_min": r.bytes_range.0, "output_bytes_max": r.bytes_range.1,
            "encode": {"wall_s": r.enc.wall.as_secs_f64(), "cpu_s": r.enc.cpu.as_secs_f64(), "peak_rss_bytes": r.enc.peak_rss},
            "decode": {"wall_s": r.dec.wall.as_secs_f64(), "cpu_s": r.dec.cpu.as_secs_f64(), "peak_rss_bytes": r.dec.peak_rss},
        })).collect::<Vec<_>>(),
        "goals": goals.iter().map(|g| json!({"goal": g.name, "met": g.met, "detail": g.detail})).collect::<Vec<_>>(),
    });
    let path = args.json.clone().unwrap_or_else(|| work.join("results.json"));
    fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!(
        "| round | tool | bytes | ratio | enc wall s | enc cpu s | enc peak MiB | dec wall s | dec cpu s | dec peak MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for r in rows {
        println!(
            "| {} | {} | {} | {:.4} | {:.3} | {:.3} | {:.0} | {:.3} | {:.3} | {:.0} |",
            r.round,
            r.tool,
            r.bytes,
            r.bytes as f64 / r.input.max(1) as f64,
            r.enc.wall.as_secs_f64(),
            r.enc.cpu.as_secs_f64(),
            mib(r.enc.peak_rss),
            r.dec.wall.as_secs_f64(),
            r.dec.cpu.as_secs_f64(),
            mib(r.dec.peak_rss),
        );
    }
}

/// One goal of issue 7 and how it stands.
struct Goal {
    name: String,
    met: bool,
    detail: String,
}

fn goals(rows: &[Row]) -> Vec<Goal> {
    let find = |round: usize, tool: &str| rows.iter().find(|r| r.round == round && r.tool == tool);
    let s = |d: Duration| d.as_secs_f64();
    let mut out = Vec::new();
    let mut goal = |name: String, met: bool, detail: String| out.push(Goal { name, met, detail });
    if let (Some(h), Some(lz4), Some(z1)) = (find(0, "hde-datacenter"), find(0, "lz4"), find(0, "zstd-1")) {
        let wall = s(h.enc.wall) / s(lz4.enc.wall);
        goal("round 0 datacenter: wall <= 0.5x lz4".into(), wall <= 0.5, format!("{wall:.2}x"));
        let bytes = h.bytes as f64 / z1.bytes as f64;
        goal("round 0 datacenter: bytes <= zstd -1".into(), bytes <= 1.0, format!("{bytes:.3}x"));
    }
    if let (Some(h), Some(z19)) = (find(0, "hde-internet"), find(0, "zstd-19-long")) {
        let bytes = h.bytes as f64 / z19.bytes as f64;
        goal("round 0 internet: bytes <= zstd -19 --long=27".into(), bytes <= 1.0, format!("{bytes:.3}x"));
        let wall = s(h.enc.wall) / s(z19.enc.wall);
        goal("round 0 internet: wall <= 0.1x zstd -19 --long=27".into(), wall <= 0.1, format!("{wall:.3}x"));
    }
    if let (Some(t1), Some(t2)) = (find(0, "hde-datacenter-1t"), find(0, "hde-datacenter")) {
        let speedup = s(t1.enc.wall) / s(t2.enc.wall);
        goal("round 0 datacenter: 2 threads >= 1.7x 1 thread".into(), speedup >= 1.7, format!("{speedup:.2}x"));
    }
    let rounds = rows.iter().map(|r| r.round).max().unwrap_or(0);
    for round in 1..=rounds {
        let (Some(pf), Some(xd)) = (find(round, "zstd-patch-from"), find(round, "xdelta3")) else { continue };
        let best_bytes = pf.bytes.min(xd.bytes) as f64;
        let best_wall = s(pf.enc.wall).min(s(xd.enc.wall));
        for (tool, wall_goal, check_bytes) in
            [("hde-internet", 0.25, true), ("hde-hybrid", 0.25, true), ("hde-datacenter", 0.1, false)]
        {
            let Some(h) = find(round, tool) else { continue };
            if check_bytes {
                let b = h.bytes as f64 / best_bytes;
                goal(format!("round {round} {tool}: bytes <= 0.9x best delta peer"), b <= 0.9, format!("{b:.3}x"));
            }
            let w = s(h.enc.wall) / best_wall;
            goal(
                format!("round {round} {tool}: wall <= {wall_goal}x fastest delta peer"),
                w <= wall_goal,
                format!("{w:.3}x"),
            );
        }
    }
    // Decode: each hde frame against the zstd decoder of the same round's content.
    for r in rows.iter().filter(|r| r.tool.starts_with("hde-")) {
        let peer = if r.round == 0 { find(0, "zstd-1") } else { find(r.round, "zstd-patch-from") };
        if let Some(p) = peer {
            let d = s(r.dec.wall) / s(p.dec.wall);
            goal(
                format!("round {} {}: decode wall <= zstd -d ({})", r.round, r.tool, p.tool),
                d <= 1.0,
                format!("{d:.2}x"),
            );
        }
        if r.round > 0 {
            let m = r.enc.peak_rss as f64 / r.input.max(1) as f64;
            goal(
                format!("round {} {}: encode peak memory <= 2.5x image", r.round, r.tool),
                m <= 2.5,
                format!("{m:.2}x"),
            );
        }
    }
    out
}
