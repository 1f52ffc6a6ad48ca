//! `hde qemu-send` and `hde qemu-recv`: QEMU's live migration stream between two nodes.
//!
//! The sender reads the stream QEMU writes to its `exec:` channel, turns it into batches
//! ([`hde_qemu::MigrationSender`]) and writes them as chunks over one authenticated, encrypted
//! connection; the link rate measured from its socket writes steers the engine's codec choice
//! (hybrid mode) as in `hde send`. The receiver rebuilds the stream
//! ([`hde_qemu::MigrationReceiver`]) and writes each batch, once checked, to the destination
//! QEMU. At the end the receiver confirms that it wrote the whole stream (`Bye`) or says why
//! not (`Error`); the sender exits non-zero unless confirmed, so the source QEMU reports a
//! failed migration and the VM keeps running there.
//!
//! A migration is not resumed over a new connection: QEMU itself cannot resume a precopy
//! stream, so a dropped connection fails the migration cleanly and QEMU may start another.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hde_core::selector::Selector as _;
use hde_qemu::{MigrationReceiver, MigrationSender};
pub use hde_qemu::{Options as MigrationOptions, ReceiverStats, SenderStats};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::client::connect_hello;
use crate::identity::{self, Identity, Peers};
use crate::link::{LiveRate, Meter};
use crate::proto::{self, Hello, Message};
use crate::{Error, Result};

/// Bytes of the source stream read at a time.
const READ: usize = 256 << 10;
/// Pieces of the source stream read ahead of the encoder (4 MiB). Small on purpose: what
/// QEMU has written but HDE has not sent still has to go after QEMU stops the VM, and QEMU
/// predicts its downtime from how fast the pipe takes its bytes; a deep cushion would let it
/// believe the link faster than it is (a 64 MiB one doubled the downtime on a 256 MiB guest).
const READ_AHEAD: usize = 16;
/// Bytes per chunk on the connection.
const CHUNK: usize = 1 << 20;
/// Chunks that may wait between the encoder and the socket. Few: they are compressed bytes
/// that still have to cross the link after QEMU stops the VM (8 x 1 MiB is 0.7 s at
/// 100 Mbit/s), and while they fit, QEMU sees its pipe drain faster than the link.
const UP_IN_FLIGHT: usize = 2;
/// Chunks that may wait between the socket and the decoder (memory only: the receiver's
/// queue does not hide the link from QEMU).
const DOWN_IN_FLIGHT: usize = 8;

/// What `hde qemu-send` needs.
#[derive(Debug)]
pub struct QemuSendOptions {
    /// The receiver's address (`host:port`).
    pub to: String,
    /// This node's key pair.
    pub identity: Identity,
    /// The receivers it talks to.
    pub peers: Peers,
    /// The migration (key, engine configuration, batching).
    pub migration: MigrationOptions,
}

/// What `hde qemu-recv` needs.
#[derive(Debug)]
pub struct QemuRecvOptions {
    /// The address to listen on.
    pub listen: SocketAddr,
    /// This node's key pair.
    pub identity: Identity,
    /// The senders accepted.
    pub peers: Peers,
    /// The migration (key, engine configuration, limits).
    pub migration: MigrationOptions,
    /// Give up when no sender has connected after this long.
    pub wait: Option<Duration>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(Error::Connection)
}

/// Reads QEMU's migration stream from `input` until its end and sends it; returns once the
/// receiver confirmed that it wrote the whole stream.
pub fn qemu_send(options: &QemuSendOptions, input: impl Read + Send + 'static) -> Result<SenderStats> {
    let mut sender = MigrationSender::new(&options.migration)?;
    let tls = identity::client_config(&options.identity, options.peers.clone())?;
    let connector = TlsConnector::from(Arc::new(tls));
    let node = options.migration.config.node_id;
    let live = LiveRate::default();
    let rt = runtime()?;
    rt.block_on(async {
        let (mut tls, _hello) = connect_hello(&connector, &options.to, node).await?;
        let (up, mut chunks) = mpsc::channel::<Vec<u8>>(UP_IN_FLIGHT);
        let encoder_live = live.clone();
        let encoder = std::thread::Builder::new()
            .name("hde-qemu-send".into())
            .spawn(move || encode(&mut sender, input, &up, &encoder_live).map(|()| sender.stats().clone()))
            .map_err(Error::Connection)?;
        let mut meter = Meter::default();
        let mut sent = Ok(());
        while let Some(chunk) = chunks.recv().await {
            let t = Instant::now();
            if let Err(e) = proto::write_chunk(&mut tls, &chunk).await {
                sent = Err(e);
                break;
            }
            meter.chunk(chunk.len(), t.elapsed(), &live);
        }
        drop(chunks);
        let encoded = encoder.join().map_err(|_| Error::Protocol { what: "the encoder thread panicked".into() })?;
        sent?;
        let stats = match encoded {
            Ok(stats) => stats,
            Err(e) => {
                // Tell the receiver why, so it stops without waiting for more.
                let _ = proto::write(&mut tls, &Message::Error(e.to_string())).await;
                let _ = tls.shutdown().await;
                return Err(e);
            }
        };
        proto::write(&mut tls, &Message::FrameEnd).await?;
        tls.flush().await.map_err(Error::Connection)?;
        match proto::read(&mut tls).await? {
            Some(Message::Bye) => {
                let _ = tls.shutdown().await;
                Ok(stats)
            }
            Some(Message::Error(text)) => Err(Error::Protocol { what: format!("the receiver said: {text}") }),
            other => Err(Error::Protocol {
                what: format!("expected the receiver's confirmation, got {}", proto::describe(other.as_ref())),
            }),
        }
    })
}

/// Reads QEMU's stream into pieces on a thread of its own, so that QEMU keeps writing while a
/// batch is encoded (its pipe holds only 64 KiB); at most [`READ_AHEAD`] pieces wait. Pieces
/// the encoder is done with come back through the second channel and are read into again,
/// rather than each read faulting in fresh memory.
fn read_ahead(
    mut input: impl Read + Send + 'static,
) -> (std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>, std::sync::mpsc::SyncSender<Vec<u8>>) {
    let (tx, rx) = std::sync::mpsc::sync_channel(READ_AHEAD);
    let (spare_tx, spare) = std::sync::mpsc::sync_channel::<Vec<u8>>(READ_AHEAD + 2);
    std::thread::spawn(move || loop {
        let mut buf = spare.try_recv().unwrap_or_default();
        buf.resize(READ, 0);
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        }
    });
    (rx, spare_tx)
}

/// The encoder thread: stream in, chunks out.
fn encode(
    sender: &mut MigrationSender,
    input: impl Read + Send + 'static,
    up: &mpsc::Sender<Vec<u8>>,
    live: &LiveRate,
) -> Result<()> {
    let mut out = Vec::new();
    let gone = || Error::Protocol { what: "the connection side stopped".into() };
    let (pieces, spare) = read_ahead(input);
    for piece in pieces {
        let piece = piece.map_err(|e| Error::Io { path: "standard input".into(), source: e })?;
        if let Some(rate) = live.get() {
            sender.encoder().selector().set_bandwidth(rate);
        }
        sender.push(&piece, &mut out)?;
        // Never full (the pieces in flight are at most its capacity); it fails only once the
        // reader has stopped, and then the piece is simply dropped.
        let _ = spare.try_send(piece);
        for piece in out.chunks(CHUNK) {
            up.blocking_send(piece.to_vec()).map_err(|_| gone())?;
        }
        out.clear();
    }
    sender.finish(&mut out)?;
    for piece in out.chunks(CHUNK) {
        up.blocking_send(piece.to_vec()).map_err(|_| gone())?;
    }
    Ok(())
}

/// Waits for one sender, writes the stream it sends to `output`, and returns once it is
/// whole. `ready` is called with the address listened on (for a port chosen by the system).
pub fn qemu_recv(
    options: &QemuRecvOptions,
    output: impl Write + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<ReceiverStats> {
    let mut receiver = MigrationReceiver::new(&options.migration)?;
    let tls = identity::server_config(&options.identity, options.peers.clone())?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let node = options.migration.config.node_id;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = TcpListener::bind(options.listen).await.map_err(Error::Connection)?;
        ready(listener.local_addr().map_err(Error::Connection)?);
        let deadline = options.wait.map(|w| tokio::time::Instant::now() + w);
        // The first sender that authenticates is the migration; others are turned away.
        let mut tls = loop {
            let accepted = match deadline {
                Some(d) => tokio::time::timeout_at(d, listener.accept())
                    .await
                    .map_err(|_| Error::Protocol { what: "no sender connected in time".into() })?,
                None => listener.accept().await,
            };
            let (stream, peer) = accepted.map_err(Error::Connection)?;
            let _ = stream.set_nodelay(true);
            match acceptor.accept(stream).await {
                Ok(tls) => break tls,
                Err(e) => eprintln!("hde qemu-recv: {}", crate::handshake_error(peer, &e)),
            }
        };
        match proto::read(&mut tls).await? {
            Some(Message::Hello(h)) if h.magic == proto::MAGIC && h.version == proto::VERSION => {}
            other => {
                return Err(Error::Protocol {
                    what: format!("expected a hello, got {}", proto::describe(other.as_ref())),
                })
            }
        }
        proto::write(&mut tls, &Message::Hello(Hello::new(node, u64::MAX))).await?;
        tls.flush().await.map_err(Error::Connection)?;

        let (down, chunks) = std::sync::mpsc::sync_channel::<Vec<u8>>(DOWN_IN_FLIGHT);
        let decoder = std::thread::Builder::new()
            .name("hde-qemu-recv".into())
            .spawn(move || {
                let mut output = output;
                for chunk in chunks {
                    receiver.push(&chunk, &mut output)?;
                }
                output.flush().map_err(|e| Error::Io { path: "standard output".into(), source: e })?;
                Ok(receiver.finish()?)
            })
            .map_err(Error::Connection)?;
        let mut down = Some(down);
        let outcome = loop {
            match proto::read(&mut tls).await {
                Ok(Some(Message::Chunk(bytes))) => {
                    let Some(tx) = down.as_ref() else { continue };
                    // The decoder stopped on an error: stop reading and report it below.
                    let tx = tx.clone();
                    if tokio::task::spawn_blocking(move || tx.send(bytes)).await.ok().and_then(Result::ok).is_none() {
                        down = None;
                        break None;
                    }
                }
                Ok(Some(Message::FrameEnd)) => break None,
                Ok(Some(Message::Error(text))) => {
                    break Some(Error::Protocol { what: format!("the sender said: {text}") })
                }
                Ok(other) => {
                    break Some(Error::Protocol {
                        what: format!("unexpected {} in a migration", proto::describe(other.as_ref())),
                    })
                }
                Err(e) => break Some(e),
            }
        };
        drop(down);
        let decoded = tokio::task::spawn_blocking(move || decoder.join())
            .await
            .map_err(|_| Error::Protocol { what: "the decoder thread failed".into() })?
            .map_err(|_| Error::Protocol { what: "the decoder thread panicked".into() })?;
        let result = match (outcome, decoded) {
            (Some(e), _) => Err(e),
            (None, Ok(stats)) => Ok(stats),
            (None, Err(e)) => Err(e),
        };
        let reply = match &result {
            Ok(_) => Message::Bye,
            Err(e) => Message::Error(e.to_string()),
        };
        let _ = proto::write(&mut tls, &reply).await;
        let _ = tls.flush().await;
        let _ = tls.shutdown().await;
        result
    })
}
