//! `cargo xtask bench-qemu`: a running VM live-migrated from one QEMU to another across one
//! shaped link, with each of QEMU's own options and with HDE in the path.
//!
//! The guest is the workload VM of the snapshot corpus (`xtask/guest/make-guest.sh`: the
//! host's kernel, busybox, and a Python app server with sqlite and a zlib/json cache next to a
//! busybox gzip/sort batch job). The two QEMU processes run in two network namespaces joined
//! by a veth pair shaped with `tbf` (issue 10's link; `--rtt` puts `hde relay` in the path for
//! latency, since the kernel has no `netem`). For each method the source boots, its workload
//! runs for `--warmup` seconds, and it migrates to a fresh destination started with `-S`:
//!
//! * `tcp`: QEMU's plain stream (`migrate tcp:`);
//! * `xbzrle`: the same with the xbzrle capability (cache: a quarter of RAM);
//! * `multifd-zstd`: multifd (2 channels) with zstd compression, on both sides;
//! * `hde`: `exec:hde qemu-send` on the source, `-incoming exec:hde qemu-recv` on the
//!   destination, over hde-net's TLS.
//! * `pipe` (not run unless named): `exec:cat` into a FIFO that the destination reads with
//!   `exec:cat`, off the link: the floor of any adapter QEMU reaches through `exec:`, i.e. how
//!   fast the two QEMU processes themselves produce and load the stream on this machine.
//!
//! Every method gets `max-bandwidth` 10 GB/s (QEMU's default of 32 MiB/s would make the link
//! idle) and QEMU's default `downtime-limit` of 300 ms. Measured per method, end to end: the
//! time from `migrate` until the destination has loaded the whole stream; the downtime from
//! the source's `STOP` event until then; bytes on the link (the veth's counter); whether it
//! converged within `--timeout`; and the check: the destination's guest memory (`pmemsave`,
//! before the guest runs on) equals the source's final memory, and the guest then prints
//! heartbeats on the destination. The last line compares hde with the fastest of QEMU's
//! options that converged: time, downtime, and whether hde's check passed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _, Result};
use hde_corpus::guest::{Host, Vm, VmOptions};
use serde_json::{json, Value};

use crate::link::{Children, Link, ADDR};
use crate::{cargo, root, run};

/// The flags of `bench-qemu`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Guest RAM, MiB.
    #[arg(long, default_value_t = 512)]
    ram: u64,
    /// The link's rate as `tc` takes it (`1gbit`, `100mbit`), or `none` (the veth unshaped).
    #[arg(long, default_value = "1gbit")]
    rate: String,
    /// Round-trip time added by a relay, ms.
    #[arg(long, default_value_t = 0)]
    rtt: u64,
    /// Seconds the workload runs (after it is ready) before the migration starts.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Seconds a migration may take before it counts as not converged (and is cancelled).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// The methods, in order (default: tcp,xbzrle,multifd-zstd,hde).
    #[arg(long, value_delimiter = ',', default_value = "tcp,xbzrle,multifd-zstd,hde")]
    methods: Vec<String>,
    /// The workload's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results here as JSON (default: target/bench-qemu/RATE.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the stream the destination read (`hde` and `pipe` only, through `tee`) and check
    /// the guest RAM it carries (each page's last content) against both sides' memory: where
    /// the source's differs from what its own stream carried, the source never sent those
    /// pages' last content. Costs the destination a disk write; for diagnosis, not timing.
    #[arg(long)]
    capture: bool,
}

const QEMU_PORT: u16 = 7400;
const HDE_PORT: u16 = 7401;

/// Wall-clock seconds, comparable with QMP event timestamps (both VMs run on this host).
fn wall() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn status(vm: &mut Vm) -> Result<String> {
    Ok(vm.qmp("query-status", Value::Null)?["status"].as_str().unwrap_or_default().to_owned())
}

fn heartbeats(vm: &Vm) -> usize {
    vm.console().matches("WL-HB").count()
}

/// One method's migration, measured.
#[derive(Debug)]
struct Outcome {
    method: String,
    converged: bool,
    seconds: f64,
    downtime_ms: f64,
    link_bytes: u64,
    qemu: Value,
    equal: bool,
    runs_on: bool,
    note: String,
}

struct Bench<'a> {
    args: &'a Args,
    host: Host,
    hde: PathBuf,
    work: PathBuf,
    initrd: PathBuf,
    link: Link,
    qemu_target: String,
    hde_target: String,
}

impl Bench<'_> {
    fn vm(&self, side: usize, name: &str, extra: Vec<String>) -> Result<Vm> {
        let o = VmOptions {
            ram_mb: self.args.ram,
            initrd: self.initrd.clone(),
            dir: self.work.clone(),
            name: name.into(),
            extra,
            wrapper: self.link.wrapper(side),
            append: format!("wl.seed={}", self.args.seed),
        };
        Vm::start(&self.host, &o).with_context(|| format!("cannot start the {name} QEMU"))
    }

    fn identity(&self, side: &str) -> String {
        format!(
            "--identity {} --peers {}",
            self.work.join(side).display(),
            self.work.join(format!("peers-of-{side}")).display()
        )
    }

    fn fifo(&self) -> PathBuf {
        self.work.join("pipe.fifo")
    }

    fn capture(&self) -> PathBuf {
        self.work.join("stream.bin")
    }

    fn migrate(&self, method: &str) -> Result<Outcome> {
        if method == "pipe" && !self.fifo().exists() {
            run(Command::new("mkfifo").arg(self.fifo()))?;
        }
        eprintln!("bench-qemu: {method}: booting the source");
        let recv_log = self.work.join(format!("{method}.recv.err"));
        let send_log = self.work.join(format!("{method}.send.err"));
        let incoming = match method {
            "hde" => format!(
                "exec:{} qemu-recv --listen {}:{HDE_PORT} {} --wait {} 2>{}",
                self.hde.display(),
                ADDR[1],
                self.identity("b"),
                self.args.timeout + 600,
                recv_log.display()
            ),
            "pipe" => format!("exec:cat {}", self.fifo().display()),
            _ => "defer".into(),
        };
        let capturing = self.args.capture && matches!(method, "hde" | "pipe");
        let incoming = if capturing { format!("{incoming} | tee {}", self.capture().display()) } else { incoming };
        let mut src = self.vm(0, &format!("{method}-src"), Vec::new())?;
        src.wait_console("WL-READY", Duration::from_secs(900))?;
        let mut dst = self.vm(1, &format!("{method}-dst"), vec!["-S".into(), "-incoming".into(), incoming])?;
        std::thread::sleep(Duration::from_secs(self.args.warmup));

        src.qmp("migrate-set-parameters", json!({ "max-bandwidth": 10_000_000_000u64, "downtime-limit": 300 }))?;
        let uri = match method {
            "tcp" | "xbzrle" | "multifd-zstd" => {
                if method == "xbzrle" {
                    src.qmp(
                        "migrate-set-capabilities",
                        json!({ "capabilities": [{ "capability": "xbzrle", "state": true }] }),
                    )?;
                    src.qmp("migrate-set-parameters", json!({ "xbzrle-cache-size": (self.args.ram << 20) / 4 }))?;
                }
                if method == "multifd-zstd" {
                    for vm in [&mut src, &mut dst] {
                        vm.qmp(
                            "migrate-set-capabilities",
                            json!({ "capabilities": [{ "capability": "multifd", "state": true }] }),
                        )?;
                        vm.qmp(
                            "migrate-set-parameters",
                            json!({ "multifd-channels": 2, "multifd-compression": "zstd" }),
                        )?;
                    }
                }
                dst.qmp("migrate-incoming", json!({ "uri": format!("tcp:{}:{QEMU_PORT}", ADDR[1]) }))?;
                format!("tcp:{}", self.qemu_target)
            }
            "hde" => format!(
                "exec:{} qemu-send --to {} {} --key guest 2>{}",
                self.hde.display(),
                self.hde_target,
                self.identity("a"),
                send_log.display()
            ),
            "pipe" => format!("exec:cat > {}", self.fifo().display()),
            other => bail!("unknown method {other:?} (tcp, xbzrle, multifd-zstd, hde, pipe)"),
        };
        let before = self.link.tx_bytes()?;
        let start = wall();
        let t = Instant::now();
        src.qmp("migrate", json!({ "uri": uri }))?;
        eprintln!("bench-qemu: {method}: migrating");
        let mut converged = true;
        let mut note = String::new();
        let (qemu, loaded) = loop {
            let info = src.qmp("query-migrate", Value::Null)?;
            let s = info["status"].as_str().unwrap_or_default().to_owned();
            let d = status(&mut dst)?;
            if s == "failed" || s == "cancelled" {
                converged = false;
                note = format!("source: {s}");
                break (info, wall());
            }
            if s == "completed" && d != "inmigrate" {
                break (info, wall());
            }
            if t.elapsed() > Duration::from_secs(self.args.timeout) {
                src.qmp("migrate_cancel", Value::Null)?;
                converged = false;
                note = format!("not converged in {} s", self.args.timeout);
                break (info, wall());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let link_bytes = self.link.tx_bytes()? - before;
        let stop = src
            .events()
            .iter()
            .filter(|e| e["event"] == "STOP")
            .filter_map(|e| Some(e["timestamp"]["seconds"].as_f64()? + e["timestamp"]["microseconds"].as_f64()? / 1e6))
            .find(|&ts| ts >= start);
        let downtime_ms = stop.map_or(f64::NAN, |s| (loaded - s) * 1000.0);
        let (mut equal, mut runs_on) = (false, false);
        if converged {
            let (a, b) = (self.work.join("src.mem"), self.work.join("dst.mem"));
            let bytes = self.args.ram << 20;
            src.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": a.display().to_string() }))?;
            dst.qmp("pmemsave", json!({ "val": 0, "size": bytes, "filename": b.display().to_string() }))?;
            let differ = pages_differ(&a, &b)?;
            equal = differ.is_empty();
            if capturing {
                let carried = stream_ram(&self.capture(), bytes)?;
                let (s, d) = (std::fs::read(&a)?, std::fs::read(&b)?);
                for (side, mem) in [("source", &s), ("destination", &d)] {
                    let off: Vec<String> = differ_pages(&carried, mem)
                        .iter()
                        .filter(|p| !NOT_RAM.contains(p))
                        .map(|p| format!("{:#x}", p * 4096))
                        .collect();
                    eprintln!(
                        "bench-qemu: {method}: the stream's RAM and the {side}'s memory differ in {} pages {}",
                        off.len(),
                        off.iter().take(12).cloned().collect::<Vec<_>>().join(" ")
                    );
                }
                let _ = std::fs::remove_file(self.capture());
            }
            if !equal {
                let first: Vec<String> = differ.iter().take(8).map(|p| format!("{:#x}", p * 4096)).collect();
                note = format!(
                    "{} pages of guest memory differ, at {}... (dst status {})",
                    differ.len(),
                    first.join(" "),
                    status(&mut dst)?
                );
            }
            let _ = std::fs::remove_file(&a);
            let _ = std::fs::remove_file(&b);
            let seen = heartbeats(&dst);
            dst.qmp("cont", Value::Null)?;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(120) && heartbeats(&dst) < seen + 2 {
                std::thread::sleep(Duration::from_millis(250));
            }
            runs_on = heartbeats(&dst) >= seen + 2;
        }
        let logs: String = [&send_log, &recv_log].iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect();
        if !logs.trim().is_empty() {
            eprintln!("{}", logs.trim());
        }
        src.quit();
        dst.quit();
        Ok(Outcome {
            method: method.into(),
            converged,
            seconds: loaded - start,
            downtime_ms,
            link_bytes,
            qemu,
            equal,
            runs_on,
            note,
        })
    }
}

/// The 4 KiB pages that differ between two memory dumps (a dump of another length: all).
fn pages_differ(a: &Path, b: &Path) -> Result<Vec<usize>> {
    Ok(differ_pages(&std::fs::read(a)?, &std::fs::read(b)?))
}

/// The legacy VGA window and the BIOS area, where `pmemsave` reads devices and ROM, not RAM.
const NOT_RAM: std::ops::Range<usize> = 0xa0000 / 4096..0x100000 / 4096;

fn differ_pages(x: &[u8], y: &[u8]) -> Vec<usize> {
    if x.len() != y.len() {
        return (0..x.len().max(y.len()) / 4096).collect();
    }
    x.chunks(4096).zip(y.chunks(4096)).enumerate().filter(|(_, (p, q))| p != q).map(|(i, _)| i).collect()
}

/// The first `bytes` of `pc.ram` as a captured migration stream leaves them: each page's last
/// content, a zero-page record's fill included (compare outside `NOT_RAM`).
fn stream_ram(path: &Path, bytes: u64) -> Result<Vec<u8>> {
    use hde_qemu::stream::{Item, Parser};
    use std::io::Read as _;
    let mut ram = vec![0u8; usize::try_from(bytes)?];
    let mut parser = Parser::source(1 << 40);
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut first = None;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        parser.feed(&buf[..n]);
        while let Some(item) = parser.next_item()? {
            if first.is_none() {
                first = parser.blocks().iter().find(|b| b.name == "pc.ram").map(|b| b.first_page);
            }
            let (index, fill) = match item {
                Item::Page { index } => (index, None),
                Item::Zero { index, fill } => (index, Some(fill)),
                _ => continue,
            };
            let Some(p) = first.and_then(|f| index.checked_sub(f)).and_then(|p| usize::try_from(p).ok()) else {
                continue;
            };
            let Some(page) = ram.get_mut(p * 4096..p * 4096 + 4096) else { continue };
            match fill {
                Some(f) => page.fill(f),
                None => page.copy_from_slice(parser.page()),
            }
        }
    }
    parser.finish()?;
    ensure!(first.is_some(), "no pc.ram block in {}", path.display());
    Ok(ram)
}

pub(crate) fn run_bench(args: &Args) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "bench-qemu makes network namespaces: run it as root");
    let host = Host::find().map_err(|why| anyhow::anyhow!("cannot run a guest: {why}"))?;
    run(cargo().args(["build", "--release", "-p", "hde-cli"]))?;
    let hde = root().join("target/release/hde");
    let work = root().join("target/bench-qemu");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    run(Command::new("bash").arg(root().join("xtask/guest/make-guest.sh")).arg(&work))?;
    let initrd = work.join("initramfs.cpio.gz");
    for (dir, other) in [("a", "b"), ("b", "a")] {
        let out = Command::new(&hde).args(["keygen", "--out"]).arg(work.join(dir)).output()?;
        ensure!(out.status.success(), "hde keygen {dir}");
        std::fs::write(work.join(format!("peers-of-{other}")), &out.stdout)?;
    }
    let link = Link::new(&args.rate)?;
    // With --rtt, both kinds of migration reach the destination through a relay in the
    // source's namespace that holds each direction for half the round trip.
    let mut relays = Children(Vec::new());
    let mut target = |port: u16| link.target(&hde, args.rtt, port, &mut relays);
    let (qemu_target, hde_target) = (target(QEMU_PORT)?, target(HDE_PORT)?);
    let bench = Bench { args, host, hde, work: work.clone(), initrd, link, qemu_target, hde_target };
    let mut outcomes = Vec::new();
    for method in &args.methods {
        let o = bench.migrate(method)?;
        eprintln!(
            "bench-qemu: {}: {:.2} s, downtime {:.0} ms, {} bytes on the link, converged={} equal={} runs_on={} {}",
            o.method, o.seconds, o.downtime_ms, o.link_bytes, o.converged, o.equal, o.runs_on, o.note
        );
        outcomes.push(o);
    }
    let results: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "method": o.method, "converged": o.converged, "seconds": o.seconds,
                "downtime_ms": o.downtime_ms, "link_bytes": o.link_bytes, "equal": o.equal,
                "runs_on": o.runs_on, "note": o.note, "query_migrate": o.qemu,
            })
        })
        .collect();
    let path = args.json.clone().unwrap_or_else(|| work.join(format!("{}.json", args.rate)));
    let doc = json!({ "rate": args.rate, "rtt_ms": args.rtt, "ram_mb": args.ram, "warmup_s": args.warmup,
                      "seed": args.seed, "results": results });
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)?;
    println!("\n| method | converged | time (s) | downtime (ms) | bytes on the link | memory equal | runs on |");
    println!("|---|---|---:|---:|---:|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} |",
            o.method, o.converged, o.seconds, o.downtime_ms, o.link_bytes, o.equal, o.runs_on
        );
    }
    let hde = outcomes.iter().find(|o| o.method == "hde");
    let best = outcomes
        .iter()
        .filter(|o| o.method != "hde" && o.method != "pipe" && o.converged)
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds));
    // The goal compares hde with the fastest of QEMU's options: its time and its downtime.
    if let (Some(h), Some(b)) = (hde.filter(|h| h.converged), best) {
        println!(
            "qemu {}: hde_s={:.3} best_qemu_s={:.3} ratio={:.3} hde_downtime_ms={:.0} best_qemu_downtime_ms={:.0} equal={}",
            args.rate,
            h.seconds,
            b.seconds,
            h.seconds / b.seconds,
            h.downtime_ms,
            b.downtime_ms,
            h.equal && h.runs_on
        );
    }
    std::io::stdout().flush()?;
    eprintln!("bench-qemu: results in {}", path.display());
    Ok(())
}
