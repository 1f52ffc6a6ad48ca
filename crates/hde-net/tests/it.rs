//! The transport in one process: a server on a runtime of its own, senders through the
//! library, and hostile peers: unknown keys, garbage after the handshake, frames over the
//! limit, and a connection cut in the middle of a round (through a relay the test runs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hde_core::HdeConfig;
use hde_corpus::{write_corpus, CorpusConfig};
use hde_net::client::{self, SendOptions};
use hde_net::identity::{self, Identity, Peers};
use hde_net::server::{ServeOptions, Server};
use hde_net::{proto, Error};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-net-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config(node: u64) -> HdeConfig {
    let mut c = HdeConfig::new(node);
    c.threads = 2;
    c
}

/// A server and a client that accept each other.
struct Nodes {
    server: Identity,
    client: Identity,
}

impl Nodes {
    fn new() -> Self {
        Nodes { server: Identity::generate().unwrap(), client: Identity::generate().unwrap() }
    }
}

/// Starts a server on a thread of its own accepting `accepts`; it stops after 3 s with no
/// connection open.
fn start_server(
    server: &Identity,
    accepts: &Identity,
    dir: &Path,
    max_frame: u64,
) -> (SocketAddr, std::thread::JoinHandle<Result<(), Error>>) {
    let options = ServeOptions {
        identity: server.clone(),
        peers: Peers::from_certs(vec![accepts.certificate().clone()]),
        state: dir.join("recv-state"),
        out: Some(dir.join("out")),
        max_frame,
        config: config(2),
        max_idle: Some(Duration::from_secs(3)),
        log: true,
        fsync: true,
        sync_every: Duration::from_secs(3600),
        metrics: None,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async {
            let server = Server::bind("127.0.0.1:0".parse().unwrap(), options).await?;
            tx.send(server.local_addr()?).unwrap();
            server.run().await
        })
    });
    (rx.recv_timeout(Duration::from_secs(10)).unwrap(), handle)
}

fn options(to: SocketAddr, client: &Identity, server: &Identity, dir: &Path) -> SendOptions {
    SendOptions {
        to: to.to_string(),
        identity: client.clone(),
        peers: Peers::from_certs(vec![server.certificate().clone()]),
        key: "vm".into(),
        state: Some(dir.join("send-state")),
        config: config(1),
        keyframe: false,
        attempts: 6,
        limit_bytes_per_second: None,
        progress: None,
        bandwidth_given: false,
    }
}

fn corpus(dir: &Path, rounds: usize, size: usize) -> Vec<PathBuf> {
    write_corpus(&dir.join("corpus"), &CorpusConfig { size, rounds, ..CorpusConfig::default() }).unwrap()
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn rounds_arrive_exact_and_a_later_send_continues_with_deltas() {
    let dir = tmp("rounds");
    let files = corpus(&dir, 4, 4 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut o = options(addr, &n.client, &n.server, &dir);
    let log = seen.clone();
    o.progress = Some(client::ProgressHook(std::sync::Arc::new(move |p| log.lock().unwrap().push(*p))));
    let reports = client::send(&o, &files[..3]).unwrap();
    // Progress: per round, input done never goes back, and the last event is the confirmation
    // with the round's frame bytes.
    let seen = seen.lock().unwrap();
    for (round, report) in reports.iter().enumerate() {
        let events: Vec<&client::Progress> = seen.iter().filter(|p| p.round == round as u64).collect();
        assert!(events.len() >= 2, "round {round}: {events:?}");
        assert!(events.windows(2).all(|w| w[0].input_done <= w[1].input_done), "{events:?}");
        let last = events.last().unwrap();
        assert!(last.confirmed && last.input_done == last.input_bytes && last.frame_bytes == report.frame_bytes);
        assert_eq!(events.iter().filter(|p| p.confirmed).count(), 1);
    }
    let kinds: Vec<bool> = reports.iter().map(|r| r.keyframe).collect();
    assert_eq!(kinds, [true, false, false]);
    assert!(reports[1].frame_bytes * 5 < reports[0].frame_bytes, "{reports:?}");
    assert!(same(&dir.join("out/vm.raw"), &files[2]));
    // Another send of the key (the state kept): round 3 is a delta of round 2.
    let reports = client::send(&options(addr, &n.client, &n.server, &dir), &files[3..]).unwrap();
    assert_eq!((reports[0].round, reports[0].keyframe), (3, false), "{reports:?}");
    assert!(same(&dir.join("out/vm.raw"), &files[3]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The receiver decodes a delta over the key's spare image (the one the last round
/// replaced), writing only what differs; a spare that holds garbage of another length, or
/// that is the current image itself (a crash between renames), never makes a wrong image.
#[test]
fn rounds_written_over_the_spare_image_are_exact_whatever_it_holds() {
    let dir = tmp("spare");
    let files = corpus(&dir, 6, 4 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    let (out, spare) = (dir.join("out/vm.raw"), dir.join("out/.vm.raw.spare"));
    let send = |i: usize| {
        let reports = client::send(&options(addr, &n.client, &n.server, &dir), &files[i..=i]).unwrap();
        assert!(same(&out, &files[i]), "round {i}");
        reports[0].keyframe
    };
    assert!(send(0));
    assert!(!send(1));
    // Round 2 over the spare (round 0's image).
    assert!(spare.exists());
    assert!(!send(2));
    // Garbage of another length in the spare.
    std::fs::write(&spare, vec![0x5a; 3 << 20]).unwrap();
    assert!(!send(3));
    // The spare is the current image itself: dropped, not written.
    std::fs::remove_file(&spare).unwrap();
    std::fs::hard_link(&out, &spare).unwrap();
    let current = std::fs::read(&out).unwrap();
    assert!(!send(4));
    assert!(current == std::fs::read(&files[3]).unwrap());
    assert!(!send(5));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_key_is_refused_in_the_handshake_on_both_sides() {
    let dir = tmp("unknown");
    let files = corpus(&dir, 1, 1 << 20);
    let n = Nodes::new();
    let stranger = Identity::generate().unwrap();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    // A client the server does not know.
    let err = client::send(&options(addr, &stranger, &n.server, &dir), &files).unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("--peers"), "{err}");
    // A server the client does not know (it pins another key).
    let err = client::send(&options(addr, &n.client, &stranger, &dir), &files).unwrap_err();
    assert!(matches!(err, Error::Handshake { .. }), "{err}");
    assert!(!dir.join("out").exists(), "a frame was applied");
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TLS connection of `client` to the server, hello exchanged.
async fn raw_connection(
    addr: SocketAddr,
    client: &Identity,
    server: &Identity,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tls = identity::client_config(client, Peers::from_certs(vec![server.certificate().clone()])).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut conn = connector.connect(ServerName::try_from("hde-node").unwrap(), tcp).await.unwrap();
    proto::write(&mut conn, &proto::Message::Hello(proto::Hello::new(9, u64::MAX))).await.unwrap();
    conn.flush().await.unwrap();
    assert!(matches!(proto::read(&mut conn).await.unwrap(), Some(proto::Message::Hello(_))));
    conn
}

#[test]
fn garbage_after_the_handshake_and_frames_over_the_limit_are_refused_and_the_server_lives() {
    let dir = tmp("garbage");
    let files = corpus(&dir, 1, 4 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 2 << 20);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // Garbage: an unknown message type, then a head claiming 4 GiB.
        for garbage in [&[0x77u8, 1, 0, 0, 0, 0][..], &[2, 0xff, 0xff, 0xff, 0xff]] {
            let mut conn = raw_connection(addr, &n.client, &n.server).await;
            conn.write_all(garbage).await.unwrap();
            conn.flush().await.unwrap();
            let mut rest = Vec::new();
            // The server closes the connection (a reset is a close too).
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest)).await.unwrap();
        }
        // A frame over the 2 MiB limit: a typed refusal, and the connection still serves.
        let mut conn = raw_connection(addr, &n.client, &n.server).await;
        for _ in 0..3 {
            proto::write_chunk(&mut conn, &vec![7u8; 1 << 20]).await.unwrap();
        }
        proto::write(&mut conn, &proto::Message::FrameEnd).await.unwrap();
        conn.flush().await.unwrap();
        match proto::read(&mut conn).await.unwrap() {
            Some(proto::Message::Reply(hde_core::session::Reply::Refused { reason, .. })) => {
                assert_eq!(reason, hde_core::session::Refusal::OverLimit)
            }
            other => panic!("{other:?}"),
        }
        // Bytes that are not a frame: refused as corrupt.
        proto::write_chunk(&mut conn, b"not a frame").await.unwrap();
        proto::write(&mut conn, &proto::Message::FrameEnd).await.unwrap();
        conn.flush().await.unwrap();
        match proto::read(&mut conn).await.unwrap() {
            Some(proto::Message::Reply(hde_core::session::Reply::Refused { reason, .. })) => {
                assert_eq!(reason, hde_core::session::Refusal::Corrupt)
            }
            other => panic!("{other:?}"),
        }
        proto::write(&mut conn, &proto::Message::Bye).await.unwrap();
        conn.flush().await.unwrap();
    });
    // After all that, a real sender is served (a 4 MiB image makes a frame under 2 MiB).
    let reports = client::send(&options(addr, &n.client, &n.server, &dir), &files).unwrap();
    assert_eq!(reports.len(), 1);
    assert!(same(&dir.join("out/vm.raw"), &files[0]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay on loopback that cuts its first `cuts` connections after forwarding
/// `after` bytes from the client; later connections pass whole. Stops after 30 s.
fn cutting_relay(to: SocketAddr, cuts: usize, after: usize) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for conn in listener.incoming() {
            if std::time::Instant::now() > deadline {
                break;
            }
            let Ok(client) = conn else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = std::net::TcpStream::connect(to) else { continue };
            let limit = if n < cuts { Some(after) } else { None };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pipe(c2, s2, limit));
            std::thread::spawn(move || pipe(server, client, None));
        }
    });
    addr
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, limit: Option<usize>) {
    use std::io::{Read as _, Write as _};
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        total += n;
        if limit.is_some_and(|l| total >= l) {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_connection_cut_mid_round_is_resent_and_the_round_completes() {
    let dir = tmp("cut");
    let files = corpus(&dir, 2, 8 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    // The first connection dies after 1 MiB of the keyframe.
    let relay = cutting_relay(addr, 1, 1 << 20);
    let reports = client::send(&options(relay, &n.client, &n.server, &dir), &files).unwrap();
    assert_eq!(reports[0].attempts, 2, "{reports:?}");
    assert_eq!(reports[1].attempts, 1, "{reports:?}");
    assert!(!reports[1].keyframe, "the confirmed round 0 was not resent: round 1 is a delta");
    assert!(same(&dir.join("out/vm.raw"), &files[1]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn limit_rate_caps_what_goes_on_the_link() {
    let dir = tmp("limit");
    let files = corpus(&dir, 1, 8 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    // 16 Mbit/s: the ~2 MB keyframe takes about a second on the wire, not milliseconds.
    let mut o = options(addr, &n.client, &n.server, &dir);
    o.limit_bytes_per_second = Some(2e6);
    let reports = client::send(&o, &files).unwrap();
    let floor = reports[0].frame_bytes as f64 / 2e6;
    assert!(
        reports[0].seconds >= floor * 0.9,
        "{} s for {} bytes at 2 MB/s",
        reports[0].seconds,
        reports[0].frame_bytes
    );
    assert!(same(&dir.join("out/vm.raw"), &files[0]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rounds_cross_a_20_ms_round_trip_relay() {
    let dir = tmp("delay");
    let files = corpus(&dir, 3, 4 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    let relay = hde_net::relay::DelayRelay::start(addr, Duration::from_millis(10), Duration::from_secs(30)).unwrap();
    let reports = client::send(&options(relay.addr(), &n.client, &n.server, &dir), &files).unwrap();
    // Each round waits for its reply: at least one round trip apiece.
    for r in &reports {
        assert!(r.seconds >= 0.02, "{r:?}");
    }
    assert_eq!(reports.iter().filter(|r| r.keyframe).count(), 1);
    assert!(same(&dir.join("out/vm.raw"), &files[2]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_sender_does_not_hold_back_another_key() {
    // Frames are decoded as they arrive, each on a thread of its own: a key trickling in at
    // 1 MB/s must not make another key's round wait for it.
    let dir = tmp("two-keys");
    let files = corpus(&dir, 1, 8 << 20);
    let n = Nodes::new();
    let (addr, server) = start_server(&n.server, &n.client, &dir, 1 << 30);
    let mut slow = options(addr, &n.client, &n.server, &dir);
    slow.key = "slow".into();
    slow.state = None;
    slow.limit_bytes_per_second = Some(1e6);
    let slow_files = files.clone();
    let slow = std::thread::spawn(move || client::send(&slow, &slow_files).unwrap());
    // Let the slow frame start (its first chunks are on the server).
    std::thread::sleep(Duration::from_millis(400));
    let mut fast = options(addr, &n.client, &n.server, &dir);
    fast.key = "fast".into();
    fast.state = None;
    let fast_reports = client::send(&fast, &files).unwrap();
    let slow_reports = slow.join().unwrap();
    assert!(
        fast_reports[0].seconds * 2.0 < slow_reports[0].seconds,
        "fast {} s, slow {} s",
        fast_reports[0].seconds,
        slow_reports[0].seconds
    );
    assert!(same(&dir.join("out/fast.raw"), &files[0]));
    assert!(same(&dir.join("out/slow.raw"), &files[0]));
    server.join().unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
