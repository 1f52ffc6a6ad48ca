//! `hde send`: the rounds of one key to one receiver.
//!
//! Two sides in one process. The encoder thread owns the node and its [`Sender`] session:
//! it encodes each round into chunks that leave while later segments are still being
//! compressed (a bounded channel: at most [`CHUNKS_IN_FLIGHT`] chunks wait), then waits for
//! the receiver's reply and commits the round only if it was applied. The network side (on
//! tokio) writes the chunks to the TLS connection, keeps the current frame's bytes until its
//! reply, and when the connection drops in the middle of a round it reconnects with backoff
//! and sends that frame again: rounds already confirmed are never resent, and a frame the
//! receiver had applied before the drop is confirmed again as a retry.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hde_core::delta::EncodeOptions;
use hde_core::index::{Candidate, Sketch};
use hde_core::session::{Base, Confirmed, Reply, Sender};
use hde_core::state::{SenderImage, StateDir};
use hde_core::{Hde, HdeConfig};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::identity::{self, Identity, Peers};
use crate::link::{self, LiveRate, Meter};
use crate::proto::{self, Hello, Message};
use crate::{Error, Result};

/// Chunks of a frame that may wait between the encoder and the socket.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Bytes per chunk.
pub const CHUNK: usize = 1 << 20;
/// The smallest frame whose sending time measures the link (smaller ones vanish into the
/// socket buffers).
const MEASURABLE: usize = 8 << 20;

/// What a sender needs.
#[derive(Debug)]
pub struct SendOptions {
    /// The receiver's address (`host:port`).
    pub to: String,
    /// This node's key pair.
    pub identity: Identity,
    /// The receivers it talks to.
    pub peers: Peers,
    /// The key (VM) of the rounds.
    pub key: String,
    /// Where the sender's baselines live between runs (a later send continues with deltas).
    pub state: Option<PathBuf>,
    /// The engine's configuration (mode, bandwidth, threads).
    pub config: HdeConfig,
    /// Make the first round a keyframe whatever the baseline.
    pub keyframe: bool,
    /// Connection attempts per round before giving up.
    pub attempts: u32,
    /// The most bytes per second to put on the link (as QEMU's `max-bandwidth`), if capped.
    pub limit_bytes_per_second: Option<f64>,
    /// Called as each round's segments go out and once more when the round is confirmed.
    pub progress: Option<ProgressHook>,
    /// The configured bandwidth is the user's: the first round starts from it, not from the
    /// rate a previous send to this receiver measured and left in `state`. (Measurements
    /// during the send replace it either way.)
    pub bandwidth_given: bool,
}

/// How far a round has come, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// The key's round (counted from the state directory, if any).
    pub round: u64,
    /// The image's bytes.
    pub input_bytes: u64,
    /// The image's bytes encoded and handed to the connection so far.
    pub input_done: u64,
    /// The frame's bytes handed to the connection so far (resends included).
    pub frame_bytes: u64,
    /// Seconds since the round started.
    pub seconds: f64,
    /// The receiver confirmed the round.
    pub confirmed: bool,
}

/// A progress callback ([`SendOptions::progress`]).
#[derive(Clone)]
pub struct ProgressHook(pub std::sync::Arc<dyn Fn(&Progress) + Send + Sync>);

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}

/// Keeps a frame's sending at or under a rate: each chunk waits until the bytes sent since
/// the frame's first chunk are due. Per frame, so the idle time between rounds earns no burst.
#[derive(Debug)]
struct Pacer {
    rate: Option<f64>,
    start: Option<Instant>,
    sent: u64,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        Pacer { rate: rate.filter(|r| *r > 0.0), start: None, sent: 0 }
    }

    async fn before(&mut self, bytes: usize) {
        let Some(rate) = self.rate else { return };
        let start = *self.start.get_or_insert_with(Instant::now);
        self.sent += bytes as u64;
        let due = start + Duration::from_secs_f64(self.sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }

    fn next_frame(&mut self) {
        self.start = None;
        self.sent = 0;
    }
}

/// One round as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundReport {
    /// The round of the key, counted from its first (0).
    pub round: u64,
    /// A keyframe (else a delta).
    pub keyframe: bool,
    /// The other key whose baseline the round was a delta against (a key sent to this
    /// receiver for the first time, against the most similar baseline it held).
    pub base: Option<String>,
    /// The image's size.
    pub input_bytes: u64,
    /// Bytes of frames sent for it (a refused delta and its keyframe both count).
    pub frame_bytes: u64,
    /// From the start of its encoding until the receiver's confirmation.
    pub seconds: f64,
    /// Connections it took (1 when nothing dropped).
    pub attempts: u32,
    /// The delivery rate the network side measured for it, bytes per second (0: the frame was
    /// too small to tell, or was resent).
    pub link_bytes_per_second: f64,
}

/// From the encoder to the network side.
enum Up {
    Chunk(Vec<u8>),
    End,
    Done,
}

/// From the network side to the encoder.
struct Down {
    reply: Reply,
    attempts: u32,
    link_bytes_per_second: f64,
}

/// A `Write` that cuts the frame into chunks for the network side.
struct ChunkWriter<'a> {
    up: &'a mpsc::Sender<Up>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.up
                .blocking_send(Up::Chunk(chunk))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the connection side stopped"))?;
        }
        Ok(())
    }
}

/// The encoder thread: every round, in order.
fn encoder(
    options: &SendOptions,
    images: &[PathBuf],
    mut first_image: Option<hde_core::fsio::ImageFile>,
    offers: &[Candidate],
    up: &mpsc::Sender<Up>,
    down: &std::sync::mpsc::Receiver<Result<Down>>,
    live: &LiveRate,
) -> Result<Vec<RoundReport>> {
    let hde = Hde::new(options.config.clone())?;
    if let Some(rate) =
        options.state.as_deref().filter(|_| !options.bandwidth_given).and_then(|dir| link::remembered(dir, &options.to))
    {
        // Where the last send to this receiver left the link.
        hde.set_bandwidth(capped(rate, options.limit_bytes_per_second));
    }
    let state = options.state.as_ref().map(StateDir::open).transpose()?;
    let mut rounds = match &state {
        Some(dir) => {
            let (rounds, ignored) = dir.restore_sender_or_replace(&hde, &options.key, options.keyframe)?;
            if let Some(e) = ignored {
                eprintln!("hde send: ignoring the saved baseline of {}: {e}", options.key);
            }
            rounds
        }
        None => 0,
    };
    let sender = Sender::new(&hde);
    let base = if options.keyframe { Base::None } else { sender.adopt(&options.key, offers, state.as_ref()) };
    let mut reports = Vec::with_capacity(images.len());
    for (i, path) in images.iter().enumerate() {
        let file = match first_image.take().filter(|_| i == 0) {
            Some(file) => file,
            None => hde_core::fsio::open_image(path).map_err(|source| Error::Io { path: path.clone(), source })?,
        };
        let image = file.image;
        // The last round's baseline is kept as page hashes only (saved with --state, or
        // dropped when this process ends): no copy of the image for it.
        let last = i + 1 == images.len();
        let start = Instant::now();
        let mut keyframe = options.keyframe && i == 0;
        let mut frame_bytes = 0;
        let mut attempts = 0;
        loop {
            let mut w = ChunkWriter { up, buf: Vec::with_capacity(CHUNK) };
            let encode = EncodeOptions {
                force_keyframe: keyframe,
                hashes_only: last,
                known_zero: file.holes.clone(),
                ..EncodeOptions::default()
            };
            let sent_before = frame_bytes;
            let mut observe = |w: &hde_core::Written| {
                // The link as measured so far steers the next segments' codecs.
                if let Some(rate) = live.get() {
                    hde.set_bandwidth(capped(rate, options.limit_bytes_per_second));
                }
                if let Some(hook) = &options.progress {
                    (hook.0)(&Progress {
                        round: rounds,
                        input_bytes: image.len() as u64,
                        input_done: w.input_bytes,
                        frame_bytes: sent_before + w.frame_bytes,
                        seconds: start.elapsed().as_secs_f64(),
                        confirmed: false,
                    });
                }
            };
            let flight = sender.encode_observed(&options.key, &image, &mut w, encode, &mut observe)?;
            w.flush().map_err(Error::Connection)?;
            up.blocking_send(Up::End).map_err(|_| gone())?;
            frame_bytes += flight.summary().output_bytes;
            let is_keyframe = flight.summary().header.round.is_keyframe();
            let answer = down.recv().map_err(|_| gone())??;
            attempts += answer.attempts;
            match sender.confirm(flight, &answer.reply)? {
                Confirmed::Committed(_) => {
                    if let Some(dir) = &state {
                        // A regular file is kept by reference; anything else (a pipe) as a copy.
                        let file = Some(path.as_path()).filter(|p| p.metadata().is_ok_and(|m| m.is_file()));
                        dir.save_sender(&hde, &options.key, SenderImage { bytes: &image, file }, rounds + 1)?;
                    }
                    if answer.link_bytes_per_second > 0.0 {
                        // The link as measured over the whole frame feeds hybrid mode's cost
                        // model, and the next send to this receiver starts from it.
                        hde.set_bandwidth(answer.link_bytes_per_second);
                        if let Some(dir) = &options.state {
                            if let Err(e) = link::remember(dir, &options.to, answer.link_bytes_per_second) {
                                eprintln!("hde send: cannot remember the link rate in {}: {e}", dir.display());
                            }
                        }
                    }
                    if let Some(hook) = &options.progress {
                        (hook.0)(&Progress {
                            round: rounds,
                            input_bytes: image.len() as u64,
                            input_done: image.len() as u64,
                            frame_bytes,
                            seconds: start.elapsed().as_secs_f64(),
                            confirmed: true,
                        });
                    }
                    reports.push(RoundReport {
                        round: rounds,
                        keyframe: is_keyframe,
                        base: match (&base, i) {
                            (Base::Other { key, .. }, 0) if !is_keyframe => Some(key.clone()),
                            _ => None,
                        },
                        input_bytes: image.len() as u64,
                        frame_bytes,
                        seconds: start.elapsed().as_secs_f64(),
                        attempts,
                        link_bytes_per_second: answer.link_bytes_per_second,
                    });
                    rounds += 1;
                    break;
                }
                // The receiver lacks the baseline this delta needs: a keyframe, by itself.
                Confirmed::Refused { reason, .. } if reason.needs_keyframe() && !is_keyframe => keyframe = true,
                Confirmed::Refused { reason, message } => {
                    return Err(Error::Refused {
                        key: options.key.clone(),
                        round: rounds,
                        reason: reason.name(),
                        message,
                    })
                }
            }
        }
    }
    Ok(reports)
}

fn gone() -> Error {
    Error::Protocol { what: "the connection side stopped".into() }
}

/// An authenticated connection to a node.
pub(crate) type Tls = TlsStream<TcpStream>;

/// Connects, authenticates and exchanges hellos.
pub(crate) async fn connect(connector: &TlsConnector, to: &str, node: u64) -> Result<TlsStream<TcpStream>> {
    connect_hello(connector, to, node).await.map(|(tls, _)| tls)
}

/// [`connect`], returning the receiver's hello too.
pub(crate) async fn connect_hello(
    connector: &TlsConnector,
    to: &str,
    node: u64,
) -> Result<(TlsStream<TcpStream>, Hello)> {
    let tcp = TcpStream::connect(to).await.map_err(Error::Connection)?;
    let _ = tcp.set_nodelay(true);
    let name =
        ServerName::try_from(identity::NODE_NAME).map_err(|e| Error::Identity { what: e.to_string() })?.to_owned();
    let mut tls = connector.connect(name, tcp).await.map_err(|e| crate::handshake_error(to, &e))?;
    proto::write(&mut tls, &Message::Hello(Hello::new(node, u64::MAX))).await?;
    tls.flush().await.map_err(Error::Connection)?;
    match proto::read(&mut tls).await {
        Ok(Some(Message::Hello(h))) if h.magic == proto::MAGIC && h.version == proto::VERSION => Ok((tls, h)),
        Ok(Some(Message::Hello(h))) => Err(Error::Protocol {
            what: format!("the receiver speaks protocol version {}, this sender {}", h.version, proto::VERSION),
        }),
        Ok(Some(Message::Error(text))) => Err(Error::Protocol { what: format!("the receiver said: {text}") }),
        Ok(other) => Err(Error::Protocol {
            what: format!("expected the receiver's hello, got {}", proto::describe(other.as_ref())),
        }),
        // A server that refuses our key closes right after the handshake: rustls reports the
        // alert on the first read.
        Err(Error::Connection(e)) => Err(crate::handshake_error(to, &e)),
        Err(e) => Err(e),
    }
}

/// Asks the receiver what it holds that the first round of `key` (of sketch `sketch`) could
/// be encoded against; nothing if it keeps no index.
async fn query(tls: &mut TlsStream<TcpStream>, hello: &Hello, key: &str, sketch: Sketch) -> Result<Vec<Candidate>> {
    if hello.caps & proto::CAP_INDEX == 0 {
        return Ok(Vec::new());
    }
    proto::write(tls, &Message::Query { key: key.to_owned(), sketch }).await?;
    tls.flush().await.map_err(Error::Connection)?;
    match proto::read(tls).await? {
        Some(Message::Offers(offers)) => Ok(offers.iter().map(Candidate::from).collect()),
        other => Err(Error::Protocol { what: format!("expected offers, got {}", proto::describe(other.as_ref())) }),
    }
}

/// Sends `frame` on `tls` and waits for its reply.
async fn exchange(tls: &mut TlsStream<TcpStream>, frame: &[u8], pacer: &mut Pacer) -> Result<Reply> {
    pacer.next_frame();
    for chunk in frame.chunks(CHUNK) {
        pacer.before(chunk.len()).await;
        proto::write_chunk(tls, chunk).await?;
    }
    proto::write(tls, &Message::FrameEnd).await?;
    tls.flush().await.map_err(Error::Connection)?;
    await_reply(tls).await
}

async fn await_reply(tls: &mut TlsStream<TcpStream>) -> Result<Reply> {
    match proto::read(tls).await? {
        Some(Message::Reply(reply)) => Ok(reply),
        Some(Message::Error(text)) => Err(Error::Protocol { what: format!("the receiver said: {text}") }),
        other => Err(Error::Connection(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("expected a reply, got {}", proto::describe(other.as_ref())),
        ))),
    }
}

/// `rate` under the sender's own cap, if it has one.
fn capped(rate: f64, cap: Option<f64>) -> f64 {
    cap.map_or(rate, |cap| rate.min(cap))
}

/// Whether `e` is worth a new connection (not a refusal of our key, not a protocol break).
fn retryable(e: &Error) -> bool {
    matches!(e, Error::Connection(_))
}

/// The network side: forwards chunks, returns replies, reconnects and resends on a drop.
async fn network(
    options: &SendOptions,
    connector: TlsConnector,
    first: TlsStream<TcpStream>,
    mut up: mpsc::Receiver<Up>,
    down: std::sync::mpsc::Sender<Result<Down>>,
    live: &LiveRate,
) -> Result<()> {
    let node = options.config.node_id;
    let mut conn = Some(first);
    let mut frame: Vec<u8> = Vec::new();
    // Socket writes of the current frame and how long the link made them wait.
    let mut meter = Meter::default();
    let mut pacer = Pacer::new(options.limit_bytes_per_second);
    while let Some(message) = up.recv().await {
        match message {
            Up::Chunk(bytes) => {
                if let Some(tls) = conn.as_mut() {
                    pacer.before(bytes.len()).await;
                    let t = Instant::now();
                    if proto::write_chunk(tls, &bytes).await.is_err() {
                        conn = None; // resent whole once the frame is complete
                    }
                    meter.chunk(bytes.len(), t.elapsed(), live);
                }
                frame.extend_from_slice(&bytes);
            }
            Up::End => {
                let mut attempts = 1;
                let mut reply = match conn.as_mut() {
                    Some(tls) => match proto::write(tls, &Message::FrameEnd).await {
                        Ok(()) => match tls.flush().await {
                            Ok(()) => await_reply(tls).await,
                            Err(e) => Err(Error::Connection(e)),
                        },
                        Err(e) => Err(e),
                    },
                    None => Err(Error::Connection(std::io::Error::new(std::io::ErrorKind::NotConnected, "dropped"))),
                };
                let mut backoff = Duration::from_millis(100);
                while let Err(e) = &reply {
                    if !retryable(e) || attempts >= options.attempts.max(1) {
                        break;
                    }
                    eprintln!("hde send: {}: {e}; reconnecting in {} ms", options.to, backoff.as_millis());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    attempts += 1;
                    reply = match connect(&connector, &options.to, node).await {
                        Ok(mut tls) => {
                            let r = exchange(&mut tls, &frame, &mut pacer).await;
                            conn = Some(tls);
                            r
                        }
                        Err(e) => Err(e),
                    };
                }
                // The delivery rate: bytes over the time the socket kept us waiting. A frame
                // that fits the socket buffers says nothing about the link (0: unknown).
                // Under --limit-rate the link is the cap where the cap is lower (the pacer's
                // waits are not counted as busy): what a round can count on.
                let measured = meter.end_frame(MEASURABLE as u64);
                let rate = match measured {
                    Some(rate) if attempts == 1 => capped(rate, options.limit_bytes_per_second),
                    _ => 0.0,
                };
                pacer.next_frame();
                frame.clear();
                let failed = reply.is_err();
                if reply.is_err() {
                    conn = None;
                }
                let _ = down.send(reply.map(|reply| Down { reply, attempts, link_bytes_per_second: rate }));
                if failed {
                    return Ok(());
                }
            }
            Up::Done => break,
        }
    }
    if let Some(mut tls) = conn {
        let _ = proto::write(&mut tls, &Message::Bye).await;
        let _ = tls.shutdown().await;
    }
    Ok(())
}

/// Sends `images` (the rounds of `options.key`, in order); returns once the receiver has
/// confirmed the last one.
///
/// Before the first round the sender asks the receiver's index what it holds (see
/// [`Sender::adopt`]): a key the receiver held before continues with a delta, and a key it
/// never held may start as a delta against the most similar baseline both hold.
pub fn send(options: &SendOptions, images: &[PathBuf]) -> Result<Vec<RoundReport>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(Error::Connection)?;
    let tls = identity::client_config(&options.identity, options.peers.clone())?;
    let connector = TlsConnector::from(Arc::new(tls));
    let node = options.config.node_id;
    let (mut first, hello) = runtime.block_on(connect_hello(&connector, &options.to, node))?;
    // The first image, mapped once: sketched for the receiver's index here, encoded below.
    let mut first_image = None;
    let offers = match (images.first(), options.keyframe) {
        (Some(path), false) if hello.caps & proto::CAP_INDEX != 0 => {
            let file = hde_core::fsio::open_image(path).map_err(|source| Error::Io { path: path.clone(), source })?;
            let (ps, threads) = (options.config.delta.page_size, options.config.threads);
            let sketch = Sketch::of_sparse_image(&file.image, file.holes.as_ref(), ps, threads);
            first_image = Some(file);
            runtime.block_on(query(&mut first, &hello, &options.key, sketch))?
        }
        _ => Vec::new(),
    };
    let (up_tx, up_rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let (down_tx, down_rx) = std::sync::mpsc::channel();
    let live = LiveRate::default();
    let encoder_live = live.clone();
    std::thread::scope(|scope| {
        let encoding = scope.spawn(move || {
            let result = encoder(options, images, first_image, &offers, &up_tx, &down_rx, &encoder_live);
            let _ = up_tx.blocking_send(Up::Done);
            result
        });
        let net = runtime.block_on(network(options, connector, first, up_rx, down_tx, &live));
        let reports = encoding.join().map_err(|_| Error::Protocol { what: "the encoder thread panicked".into() })?;
        // The network's own error (e.g. a refused handshake) explains the encoder's.
        net?;
        reports
    })
}
