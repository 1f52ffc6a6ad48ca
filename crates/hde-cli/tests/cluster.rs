//! Four `hde serve` processes, each in a network namespace of its own on one bridge: their
//! replicas of the baseline index converge after random updates, a node cut off by a link
//! set down misses what happens meanwhile, and all agree again once the link is back.
//! Prints the time to converge and the bytes exchanged against the size of the state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hde_corpus::{write_corpus, CorpusConfig};

mod common;

use common::{ip, ok, s};

const NODES: usize = 4;
const PORT: u16 = 7070;
const METRICS: u16 = 9100;

/// A hub namespace with a bridge, and a namespace per node joined to it by a veth pair;
/// servers killed and namespaces removed on drop.
struct Cluster {
    hub: String,
    nodes: Vec<String>,
    servers: Vec<Child>,
    /// The servers' stdout, kept open while they run.
    outputs: Vec<BufReader<std::process::ChildStdout>>,
}

impl Cluster {
    fn addr(i: usize) -> String {
        format!("10.214.9.{}", i + 1)
    }

    /// The hub's end of node `i`'s veth pair.
    fn hub_dev(&self, i: usize) -> String {
        format!("hh{}n{i}", std::process::id() % 100_000)
    }

    fn new() -> Option<Cluster> {
        let pid = std::process::id();
        let mut c = Cluster {
            hub: format!("hde-hub-{pid}"),
            nodes: (0..NODES).map(|i| format!("hde-n{i}-{pid}")).collect(),
            servers: Vec::new(),
            outputs: Vec::new(),
        };
        let setup = |c: &mut Cluster| -> Result<(), String> {
            ip(&["netns", "add", &c.hub])?;
            ip(&["-n", &c.hub, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &c.hub, "link", "set", "br0", "up"])?;
            for i in 0..NODES {
                let (ns, hub_dev, dev) = (c.nodes[i].clone(), c.hub_dev(i), format!("hn{}n{i}", pid % 100_000));
                ip(&["netns", "add", &ns])?;
                ip(&["link", "add", &dev, "type", "veth", "peer", "name", &hub_dev])?;
                ip(&["link", "set", &dev, "netns", &ns])?;
                ip(&["link", "set", &hub_dev, "netns", &c.hub])?;
                ip(&["-n", &c.hub, "link", "set", &hub_dev, "master", "br0"])?;
                ip(&["-n", &c.hub, "link", "set", &hub_dev, "up"])?;
                ip(&["-n", &ns, "addr", "add", &format!("{}/24", Self::addr(i)), "dev", &dev])?;
                ip(&["-n", &ns, "link", "set", &dev, "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        match setup(&mut c) {
            Ok(()) => Some(c),
            Err(why) => {
                eprintln!("skipped: cannot make network namespaces for a cluster: {why}");
                None
            }
        }
    }

    /// A command inside node `i`'s namespace.
    fn exec(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[i], program]);
        c
    }

    fn hde(&self, i: usize) -> Command {
        self.exec(i, env!("CARGO_BIN_EXE_hde"))
    }

    /// Cuts node `i` off (its link on the hub set down), or brings it back.
    fn link(&self, i: usize, up: bool) {
        ip(&["-n", &self.hub, "link", "set", &self.hub_dev(i), if up { "up" } else { "down" }]).unwrap();
    }

    /// Node `i`'s counter `name` from its metrics endpoint (curl inside its namespace).
    fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let url = format!("http://{}:{METRICS}/metrics", Self::addr(i));
        let out = self.exec(i, "curl").args(["-s", "--max-time", "5", &url]).output().ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// The replicas as `hde cluster status --json` sees them from node 0: whether they agree,
/// and each reachable node's entries as (key, holder) pairs.
fn status(c: &Cluster, dir: &Path) -> (bool, Vec<Vec<(String, String)>>) {
    let out = c
        .hde(0)
        .args(["cluster", "status", "--json", "--identity", s(&dir.join("id0")), "--peers", s(&dir.join("peers"))])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    for n in v["nodes"].as_array().unwrap() {
        if let Some(e) = n["error"].as_str() {
            eprintln!("status: node {} at {}: {e}", n["node"], n["address"]);
        }
    }
    let views = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["entries"].as_array())
        .map(|e| {
            let mut held: Vec<(String, String)> = e
                .iter()
                .map(|x| (x["key"].as_str().unwrap().to_owned(), x["holder"].as_str().unwrap().to_owned()))
                .collect();
            held.sort();
            held
        })
        .collect();
    (v["agree"].as_bool().unwrap(), views)
}

/// Waits until every node answers, all agree, and each holds `want` entries; returns how long.
fn converge(c: &Cluster, dir: &Path, want: usize) -> Duration {
    let start = Instant::now();
    loop {
        let (agree, views) = status(c, dir);
        if agree && views.len() == NODES && views.iter().all(|v| v.len() == want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no convergence: agree {agree}, {views:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Node `i` records a baseline of `key`: `hde encode --state` of `image` into its state.
fn update(c: &Cluster, dir: &Path, i: usize, key: &str, image: &Path) {
    let state = dir.join(format!("state{i}"));
    let out = c
        .hde(i)
        .args(["encode", "-f", "--key", key, "--state", s(&state), "-o", "/dev/null", s(image)])
        .output()
        .unwrap();
    ok(&out, "encode --state");
}

fn sync_bytes(c: &Cluster) -> Option<f64> {
    (0..NODES).map(|i| c.metric(i, "hde_index_sync_bytes_total")).sum()
}

#[test]
fn replicas_converge_and_heal_after_a_partition() {
    let dir = common::tmp("cli-cluster", "converge");
    let Some(mut c) = Cluster::new() else { return };
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 1 << 20, rounds: 6, ..CorpusConfig::default() })
            .unwrap();
    let mut peers = String::new();
    for i in 0..NODES {
        let out = common::hde(&["keygen", "--out", s(&dir.join(format!("id{i}")))]);
        ok(&out, "keygen");
        peers.push_str(&format!("{} {}:{PORT}\n", String::from_utf8(out.stdout).unwrap().trim(), Cluster::addr(i)));
    }
    std::fs::write(dir.join("peers"), peers).unwrap();
    for i in 0..NODES {
        let mut child = c
            .hde(i)
            .args(["serve", "--listen", &format!("{}:{PORT}", Cluster::addr(i)), "--max-idle", "120"])
            .args(["--metrics", &format!("{}:{METRICS}", Cluster::addr(i)), "--sync-every", "0.25"])
            .args(["--identity", s(&dir.join(format!("id{i}"))), "--peers", s(&dir.join("peers"))])
            .args(["--state", s(&dir.join(format!("state{i}"))), "--threads", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on"), "{line}");
        c.servers.push(child);
        c.outputs.push(out);
    }

    // Random updates: 12 baselines of 5 keys spread over the nodes (a fixed LCG: repeatable).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) as usize % n
    };
    let mut held = std::collections::BTreeSet::new();
    for k in 0..12 {
        let (node, key) = (next(NODES), format!("vm-{}", next(5)));
        update(&c, &dir, node, &key, &files[k % files.len()]);
        held.insert((key, node));
    }
    let t = converge(&c, &dir, held.len());
    let bytes = sync_bytes(&c);
    let state = c.metric(0, "hde_index_state_bytes");
    let show = |v: Option<f64>| v.map_or("unmeasured (no curl)".to_owned(), |b| format!("{b:.0}"));
    eprintln!(
        "converged: {} entries on {NODES} nodes in {:.2} s; index messages so far {} bytes, one replica {} bytes",
        held.len(),
        t.as_secs_f64(),
        show(bytes),
        show(state)
    );

    // Node 3 cut off: updates on both sides of the cut.
    c.link(3, false);
    update(&c, &dir, 3, "vm-cut", &files[0]);
    update(&c, &dir, 0, "vm-main", &files[1]);
    held.insert(("vm-cut".into(), 3));
    held.insert(("vm-main".into(), 0));
    let start = Instant::now();
    loop {
        let (agree, views) = status(&c, &dir);
        assert!(!agree && views.len() == NODES - 1, "node 3 answered across the cut: {views:?}");
        assert!(views.iter().all(|v| !v.iter().any(|(k, _)| k == "vm-cut")), "vm-cut crossed the cut");
        if views.iter().all(|v| v.iter().any(|(k, _)| k == "vm-main")) {
            eprintln!(
                "cut: the other side agreed on vm-main within {:.2} s (each status waits 3 s for the cut node)",
                start.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the others did not learn vm-main: {views:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Healed: everyone learns both.
    c.link(3, true);
    let t = converge(&c, &dir, held.len());
    eprintln!("healed: {} entries agree {:.2} s after the link came back", held.len(), t.as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}
