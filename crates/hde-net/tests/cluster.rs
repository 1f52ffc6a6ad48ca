//! Nodes that know what each other holds, in one process: two servers whose index replicas
//! meet by anti-entropy, a VM that goes A -> B -> A, a new VM sent against a similar one,
//! and the metrics endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hde_core::HdeConfig;
use hde_corpus::{write_corpus, CorpusConfig};
use hde_net::client::{self, SendOptions};
use hde_net::cluster;
use hde_net::identity::{Identity, Peers};
use hde_net::server::{ServeOptions, Server};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A node: its identity and the directory its serve and its sends share.
struct Node {
    id: Identity,
    dir: PathBuf,
}

/// Ports picked by binding port 0 first (the peers file needs addresses before the servers
/// start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn peers(nodes: &[(&Node, SocketAddr)]) -> Peers {
    let mut peers = Peers::from_certs(Vec::new());
    for (n, addr) in nodes {
        peers = peers.with_address(n.id.certificate().clone(), addr.to_string());
    }
    peers
}

/// Starts `node`'s server on `addr`; it stops after 4 s without a sender.
fn serve(
    node: &Node,
    addr: SocketAddr,
    peers: Peers,
    metrics: bool,
) -> (Option<SocketAddr>, std::thread::JoinHandle<Result<(), hde_net::Error>>) {
    let mut config = HdeConfig::new(node.id.node_id());
    config.threads = 2;
    let options = ServeOptions {
        identity: node.id.clone(),
        peers,
        state: node.dir.join("state"),
        out: Some(node.dir.join("out")),
        max_frame: 1 << 30,
        config,
        max_idle: Some(Duration::from_secs(4)),
        log: true,
        fsync: false,
        sync_every: Duration::from_millis(150),
        metrics: metrics.then(|| "127.0.0.1:0".parse().unwrap()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let server = Server::bind(addr, options).await?;
            tx.send(server.metrics_addr()?).unwrap();
            server.run().await
        })
    });
    (rx.recv_timeout(Duration::from_secs(10)).unwrap(), handle)
}

fn send(from: &Node, to: SocketAddr, peers: &Peers, key: &str, images: &[PathBuf]) -> Vec<client::RoundReport> {
    let mut config = HdeConfig::new(from.id.node_id());
    config.threads = 2;
    let options = SendOptions {
        to: to.to_string(),
        identity: from.id.clone(),
        peers: peers.clone(),
        key: key.into(),
        state: Some(from.dir.join("state")),
        config,
        keyframe: false,
        attempts: 4,
        limit_bytes_per_second: None,
        progress: None,
        bandwidth_given: false,
    };
    client::send(&options, images).unwrap()
}

/// Waits until every node's replica has the same digest and `check` holds for them.
fn converge(asker: &Identity, peers: &Peers, check: impl Fn(&hde_core::index::Index) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let views = cluster::status(asker, peers).unwrap();
        let first = views[0].digest();
        if first.is_some()
            && views.iter().all(|v| v.digest() == first)
            && views.iter().all(|v| v.index.as_ref().is_ok_and(&check))
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "replicas did not converge: {views:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `image` with its pages moved about and a byte of every other one changed: another VM
/// booted from the same image (the index finds it by the pages both have whole).
fn moved(image: &[u8]) -> Vec<u8> {
    let n = image.len() / 4096;
    let mut out = Vec::with_capacity(image.len());
    for i in 0..n {
        let q = (i * 389 + 17) % n;
        let mut page = image[q * 4096..(q + 1) * 4096].to_vec();
        if i % 2 == 1 {
            page[(i * 61) % 4096] ^= 0x33;
        }
        out.extend_from_slice(&page);
    }
    out
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_vm_that_comes_back_and_a_similar_new_vm_start_as_deltas() {
    let dir = tmp("back");
    let files =
        write_corpus(&dir.join("corpus"), &CorpusConfig { size: 4 << 20, rounds: 4, ..CorpusConfig::default() })
            .unwrap();
    let a = Node { id: Identity::generate().unwrap(), dir: dir.join("a") };
    let b = Node { id: Identity::generate().unwrap(), dir: dir.join("b") };
    let (addr_a, addr_b) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let peers = peers(&[(&a, addr_a), (&b, addr_b)]);
    let (metrics, server_a) = serve(&a, addr_a, peers.clone(), true);
    let (_, server_b) = serve(&b, addr_b, peers.clone(), false);

    // A -> B: a keyframe, then a delta.
    let there = send(&a, addr_b, &peers, "vm", &files[..2]);
    assert_eq!(there.iter().map(|r| r.keyframe).collect::<Vec<_>>(), [true, false]);
    assert!(same(&b.dir.join("out/vm.raw"), &files[1]));

    // B -> A: A held round 1 (as its sender): the first round back is a delta.
    let back = send(&b, addr_a, &peers, "vm", &files[2..3]);
    assert!(!back[0].keyframe, "{back:?}");
    assert!(back[0].frame_bytes * 5 < there[0].frame_bytes, "{back:?} against {there:?}");
    assert!(same(&a.dir.join("out/vm.raw"), &files[2]));

    // Both replicas learn who holds what.
    let a_node = a.id.node_id();
    let b_node = b.id.node_id();
    converge(&a.id, &peers, |index| {
        let held: Vec<(&str, u64)> = index.iter().map(|(h, _)| (h.key.as_str(), h.node)).collect();
        held.contains(&("vm", a_node)) && held.contains(&("vm", b_node))
    });

    // A VM A never held, like the one it holds: B sends it against A's "vm".
    let other = dir.join("other.raw");
    std::fs::write(&other, moved(&std::fs::read(&files[2]).unwrap())).unwrap();
    let new = send(&b, addr_a, &peers, "vm2", std::slice::from_ref(&other));
    assert_eq!(new[0].base.as_deref(), Some("vm"), "{new:?}");
    assert!(new[0].frame_bytes * 3 < there[0].frame_bytes, "{new:?} against {there:?}");
    assert!(same(&a.dir.join("out/vm2.raw"), &other));

    // The metrics say so.
    let text = http_get(metrics.unwrap(), "/metrics");
    for line in ["hde_rounds_applied_total 2", "hde_index_queries_total 2", "hde_baselines_held 2"] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // What A received: two deltas (one against another key), counted on the receiving side.
    let value = |name: &str| -> f64 {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(f64::NAN)
    };
    let received = (back[0].frame_bytes + new[0].frame_bytes) as f64;
    assert!((value("hde_decoded_frame_bytes_total") - received).abs() < 1024.0, "{text}");
    assert!(value("hde_compression_ratio") > 0.0 && value("hde_compression_ratio") < 0.2, "{text}");
    assert_eq!(value("hde_delta_hit_rate"), 1.0, "{text}");
    assert!(text.contains(r#"side="decode""#), "no decoded codec counted:\n{text}");
    assert!(http_get(metrics.unwrap(), "/health").ends_with("ok\n"));
    assert!(http_get(metrics.unwrap(), "/nothing").starts_with("HTTP/1.1 404"));

    server_a.join().unwrap().unwrap();
    server_b.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
