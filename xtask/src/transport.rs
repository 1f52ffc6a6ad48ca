//! `cargo xtask bench-transport`: the transport choice of issue 15, measured both ways.
//!
//! The same payload goes through the same shaped link (two network namespaces, a veth pair,
//! `tbf` at `--rate`) over TCP + TLS 1.3 (tokio-rustls, as `hde-net` speaks it) and over QUIC
//! (quinn), both with `hde-net`'s pinned-key mutual authentication (the same rustls configs).
//! Per run: the time to connect and authenticate, and the time from the client's start until
//! the server has every byte and its one-byte reply is back. Runs alternate between the two.
//!
//! Latency comes from a relay inside the client process (this kernel has no `netem`): for
//! QUIC a UDP relay that holds every datagram `rtt / 2` each way (the congestion controller
//! sees the round trip); for TCP `hde-net`'s byte relay, which ends the client's TCP
//! connection and opens another to the server: the delay is on the data and the replies, not
//! on TCP's own acknowledgements, so TCP's window grows as on a short link. With `--rtt` the
//! comparison therefore favours TCP on bulk throughput; handshakes count their round trips
//! as the protocols make them (the relay's own TCP handshake with the client is local).
//!
//! `--rate none` runs on loopback without namespaces: what each stack costs in CPU at full
//! speed (2 cores here).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use hde_net::identity::{self, Identity, Peers};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::link::Link;

/// Arguments of `cargo xtask bench-transport`.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// The link's rate as tc writes it (10mbit, 100mbit, 1gbit), or `none` for loopback.
    #[arg(long, default_value = "100mbit")]
    rate: String,
    /// Round-trip time added by the relays, in milliseconds.
    #[arg(long, default_value_t = 0)]
    rtt: u64,
    /// Bytes to move per run (K, M, G suffixes).
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    bytes: u64,
    /// Runs per transport; figures are medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Where to write the JSON results (default: target/bench-transport/results.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Arguments of the hidden `transport-peer` (one side of one transport).
#[derive(clap::Args)]
pub(crate) struct PeerArgs {
    /// `serve` or `send`.
    role: String,
    /// `tls` or `quic`.
    #[arg(long)]
    proto: String,
    /// Server: address to listen on; client: address to reach.
    #[arg(long)]
    addr: SocketAddr,
    /// Directory with `server/` and `client/` identities.
    #[arg(long)]
    keys: PathBuf,
    /// Client: bytes to send.
    #[arg(long, default_value_t = 0)]
    bytes: u64,
    /// Client: round trip to add, in milliseconds.
    #[arg(long, default_value_t = 0)]
    rtt: u64,
    /// Server: connections to serve before exiting.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    hde_core::units::parse_size(s).map_err(|e| e.to_string())
}

const TLS_PORT: u16 = 7170;
const QUIC_PORT: u16 = 7171;
/// quinn's flow-control windows, raised to hold the bandwidth-delay product of the links
/// measured here (its defaults cap a stream near 1.25 MB per round trip; Linux autotunes
/// TCP's buffers up to 6 MB).
const WINDOW: u32 = 16 << 20;

fn identities(dir: &Path) -> Result<(Identity, Identity)> {
    let (server, client) = (dir.join("server"), dir.join("client"));
    if !server.join("key").exists() {
        Identity::generate()?.write(&server)?;
        Identity::generate()?.write(&client)?;
    }
    Ok((Identity::load(&server)?, Identity::load(&client)?))
}

fn quic_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u32(WINDOW));
    t.receive_window(quinn::VarInt::from_u32(WINDOW));
    t.send_window(u64::from(WINDOW));
    t
}

/// One side of one transport (run inside a namespace by `bench-transport`).
pub(crate) fn peer(a: &PeerArgs) -> Result<()> {
    let (server_id, client_id) = identities(&a.keys)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        match (a.role.as_str(), a.proto.as_str()) {
            ("serve", "tls") => serve_tls(a, &server_id, &client_id).await,
            ("serve", "quic") => serve_quic(a, &server_id, &client_id).await,
            ("send", proto) => {
                let (connect_s, total_s) = send(a, proto, &server_id, &client_id).await?;
                println!("{}", json!({ "connect_s": connect_s, "total_s": total_s }));
                Ok(())
            }
            (role, proto) => bail!("unknown role {role} or protocol {proto}"),
        }
    })
}

/// Reads a length, then that many bytes, then answers one byte.
async fn drain(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
) -> Result<()> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len).await?;
    let mut left = u64::from_le_bytes(len);
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = r.read(&mut buf[..usize::try_from(left.min(1 << 20))?]).await?;
        if n == 0 {
            bail!("the stream ended {left} bytes early");
        }
        left -= n as u64;
    }
    w.write_all(b"k").await?;
    w.flush().await?;
    Ok(())
}

async fn serve_tls(a: &PeerArgs, server: &Identity, client: &Identity) -> Result<()> {
    let config = identity::server_config(server, Peers::from_certs(vec![client.certificate().clone()]))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(a.addr).await?;
    println!("listening");
    for _ in 0..a.count {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let tls = acceptor.accept(tcp).await?;
        let (mut r, mut w) = tokio::io::split(tls);
        drain(&mut r, &mut w).await?;
        let mut tls = r.unsplit(w);
        let _ = tls.shutdown().await;
    }
    Ok(())
}

async fn serve_quic(a: &PeerArgs, server: &Identity, client: &Identity) -> Result<()> {
    let config = identity::server_config(server, Peers::from_certs(vec![client.certificate().clone()]))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(config)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(quic_transport()));
    let endpoint = quinn::Endpoint::server(config, a.addr)?;
    println!("listening");
    for _ in 0..a.count {
        let incoming = endpoint.accept().await.context("the endpoint closed")?;
        let conn = incoming.await?;
        let (mut w, mut r) = conn.accept_bi().await?;
        drain(&mut r, &mut w).await?;
        w.finish()?;
        // Until the client has the reply and closes.
        let _ = conn.closed().await;
    }
    endpoint.wait_idle().await;
    Ok(())
}

/// Sends `a.bytes` and waits for the reply; returns (connect seconds, total seconds).
async fn send(a: &PeerArgs, proto: &str, server: &Identity, client: &Identity) -> Result<(f64, f64)> {
    let payload: Vec<u8> = (0..1u64 << 20).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect();
    let one_way = Duration::from_millis(a.rtt / 2);
    let start = Instant::now();
    let mut head = a.bytes.to_le_bytes().to_vec();
    let config = identity::client_config(client, Peers::from_certs(vec![server.certificate().clone()]))?;
    let name = rustls::pki_types::ServerName::try_from(identity::NODE_NAME)?.to_owned();
    let connect_s;
    match proto {
        "tls" => {
            let to = if a.rtt > 0 {
                hde_net::relay::DelayRelay::start(a.addr, one_way, Duration::from_secs(600))?.addr()
            } else {
                a.addr
            };
            let tcp = tokio::net::TcpStream::connect(to).await?;
            let _ = tcp.set_nodelay(true);
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
            connect_s = start.elapsed().as_secs_f64();
            write_payload(&mut tls, &mut head, a.bytes, &payload).await?;
            let mut k = [0u8; 1];
            tls.read_exact(&mut k).await?;
        }
        "quic" => {
            let to = if a.rtt > 0 { udp_relay(a.addr, one_way).await? } else { a.addr };
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config)?;
            let mut config = quinn::ClientConfig::new(Arc::new(crypto));
            config.transport_config(Arc::new(quic_transport()));
            let bind: SocketAddr = if to.ip().is_loopback() { "127.0.0.1:0" } else { "0.0.0.0:0" }.parse()?;
            let mut endpoint = quinn::Endpoint::client(bind)?;
            endpoint.set_default_client_config(config);
            let conn = endpoint.connect(to, identity::NODE_NAME)?.await?;
            connect_s = start.elapsed().as_secs_f64();
            let (mut w, mut r) = conn.open_bi().await?;
            write_payload(&mut w, &mut head, a.bytes, &payload).await?;
            let mut k = [0u8; 1];
            r.read_exact(&mut k).await?;
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
        }
        other => bail!("unknown protocol {other}"),
    }
    Ok((connect_s, start.elapsed().as_secs_f64()))
}

async fn write_payload(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    head: &mut Vec<u8>,
    bytes: u64,
    payload: &[u8],
) -> Result<()> {
    w.write_all(head).await?;
    head.clear();
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(payload.len() as u64))?;
        w.write_all(&payload[..n]).await?;
        left -= n as u64;
    }
    w.flush().await?;
    Ok(())
}

/// A UDP relay on loopback to `to` that holds every datagram `one_way` in each direction, in
/// order (one queue per direction); for the one client of a run.
async fn udp_relay(to: SocketAddr, one_way: Duration) -> Result<SocketAddr> {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let back = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    // Socket buffers that hold a round trip of a 1 Gbit/s link: the relay must not be where
    // datagrams are lost (root may exceed rmem_max with the FORCE options).
    for socket in [&front, &back] {
        big_buffers(socket);
    }
    let (front, back) = (Arc::new(front), Arc::new(back));
    back.connect(to).await?;
    let addr = front.local_addr()?;
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    type Queue = tokio::sync::mpsc::UnboundedSender<(Instant, Vec<u8>)>;
    let (up, mut up_rx): (Queue, _) = tokio::sync::mpsc::unbounded_channel();
    let (down, mut down_rx): (Queue, _) = tokio::sync::mpsc::unbounded_channel();
    {
        let (front, client) = (front.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(from);
                let _ = up.send((Instant::now() + one_way, buf[..n].to_vec()));
            }
        });
    }
    {
        let back = back.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = back.recv(&mut buf).await {
                let _ = down.send((Instant::now() + one_way, buf[..n].to_vec()));
            }
        });
    }
    tokio::spawn(async move {
        while let Some((due, packet)) = up_rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let _ = back.send(&packet).await;
        }
    });
    tokio::spawn(async move {
        while let Some((due, packet)) = down_rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            let to = *client.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(to) = to {
                let _ = front.send_to(&packet, to).await;
            }
        }
    });
    Ok(addr)
}

fn big_buffers(socket: &impl std::os::fd::AsRawFd) {
    let size: libc::c_int = 32 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: a valid socket descriptor and a c_int option value of the stated length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                std::ptr::from_ref(&size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn spawn_server(link: Option<&Link>, exe: &Path, proto: &str, addr: &str, keys: &Path, count: usize) -> Result<Child> {
    let mut cmd = match link {
        Some(link) => link.exec(1, exe),
        None => Command::new(exe),
    };
    cmd.args(["transport-peer", "serve", "--proto", proto, "--addr", addr, "--count", &count.to_string()])
        .arg("--keys")
        .arg(keys)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("cannot start a transport peer")?;
    let line = crate::link::first_line(&mut child)?;
    if line != "listening" {
        bail!("the {proto} server did not start: {line:?}");
    }
    Ok(child)
}

/// `cargo xtask bench-transport`.
pub(crate) fn run_bench(a: &Args) -> Result<()> {
    let exe = std::env::current_exe()?;
    let keys = crate::root().join("target/bench-transport/keys");
    identities(&keys)?;
    let link = if a.rate == "none" { None } else { Some(Link::new(&a.rate)?) };
    let host = if link.is_some() { crate::link::ADDR[1] } else { "127.0.0.1" };
    let mut results = Vec::new();
    let mut servers = Vec::new();
    for (proto, port) in [("tls", TLS_PORT), ("quic", QUIC_PORT)] {
        servers.push(spawn_server(link.as_ref(), &exe, proto, &format!("{host}:{port}"), &keys, a.runs)?);
    }
    let mut figures: Vec<(&str, Vec<f64>, Vec<f64>)> =
        vec![("tls", Vec::new(), Vec::new()), ("quic", Vec::new(), Vec::new())];
    for run in 0..a.runs {
        for (i, (proto, port)) in [("tls", TLS_PORT), ("quic", QUIC_PORT)].into_iter().enumerate() {
            let mut cmd = match &link {
                Some(link) => link.exec(0, &exe),
                None => Command::new(&exe),
            };
            cmd.args(["transport-peer", "send", "--proto", proto, "--addr", &format!("{host}:{port}")])
                .args(["--bytes", &a.bytes.to_string(), "--rtt", &a.rtt.to_string()])
                .arg("--keys")
                .arg(&keys);
            let out = cmd.output().context("cannot run a transport client")?;
            if !out.status.success() {
                bail!("{proto} run {run}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let connect = v["connect_s"].as_f64().unwrap_or(f64::NAN);
            let total = v["total_s"].as_f64().unwrap_or(f64::NAN);
            eprintln!("{proto} run {run}: connect {connect:.4} s, total {total:.3} s");
            figures[i].1.push(connect);
            figures[i].2.push(total);
        }
    }
    for mut s in servers {
        let _ = s.wait();
    }
    println!("| transport | link | rtt ms | MiB | connect s | total s | Mbit/s |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (proto, connect, total) in figures {
        let (c, t) = (median(connect), median(total));
        let mbit = a.bytes as f64 * 8.0 / t / 1e6;
        let name = if proto == "tls" { "TCP + TLS 1.3 (tokio-rustls)" } else { "QUIC (quinn)" };
        println!("| {name} | {} | {} | {} | {c:.4} | {t:.3} | {mbit:.1} |", a.rate, a.rtt, a.bytes >> 20);
        results.push(json!({
            "transport": proto, "rate": a.rate, "rtt_ms": a.rtt, "bytes": a.bytes, "runs": a.runs,
            "connect_s": c, "total_s": t, "mbit_per_s": mbit,
        }));
    }
    let path = a.json.clone().unwrap_or_else(|| crate::root().join("target/bench-transport/results.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
