//! `hde serve`: a receiver for many senders and keys at once.
//!
//! Connections are accepted and spoken to on the tokio runtime; frames are applied by a
//! worker that owns the node and its [`Receiver`] session (its baselines, restored from and
//! saved to the state directory). A frame is not buffered: its chunks go, as they arrive,
//! through a bounded channel (`QUEUE` chunks of at most 1 MiB) to a thread of its own that
//! rebuilds segments as their records complete and writes them to `out/<key>.raw` if asked.
//! Frames of different keys are applied at once; frames of one key one after the other. A
//! frame over `max_frame` bytes is refused with a reply (the connection stays usable). The
//! state is saved, and only then the round confirmed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hde_core::fsio::{AtomicFile, Existing};
use hde_core::session::{Receiver, Refusal, Reply};
use hde_core::state::StateDir;
use hde_core::{Hde, HdeConfig};

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::cluster::{self, Periods, ServeStats, SketchCache};
use crate::identity::{self, Identity, Peers};
use crate::proto::{self, Hello, Message};
use crate::{Error, Result};

/// What a server needs.
#[derive(Debug)]
pub struct ServeOptions {
    /// This node's key pair.
    pub identity: Identity,
    /// The senders it accepts.
    pub peers: Peers,
    /// Where baselines live between runs.
    pub state: PathBuf,
    /// Where each key's latest verified image is written (`DIR/<key>.raw`), if anywhere.
    pub out: Option<PathBuf>,
    /// The largest frame accepted, in bytes (the memory a connection may hold).
    pub max_frame: u64,
    /// The engine's configuration (threads, limits).
    pub config: HdeConfig,
    /// Stop after this long with no connection open (tests; a daemon passes `None`).
    pub max_idle: Option<Duration>,
    /// Print a line on stderr per round applied and per connection refused.
    pub log: bool,
    /// Flush each image written to `out` to stable storage before confirming its round.
    /// Without it a power cut can lose the latest image; its baseline then fails its checksum
    /// and the sender's next round is a keyframe, never a wrong image.
    pub fsync: bool,
    /// How often the node rescans its state for the index and runs an anti-entropy exchange
    /// with one peer (those with an address in `peers`).
    pub sync_every: Duration,
    /// Where to serve Prometheus metrics (`/metrics`) and a health check (`/health`).
    pub metrics: Option<SocketAddr>,
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    metrics: Option<TcpListener>,
    acceptor: TlsAcceptor,
    options: ServeOptions,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Chunks a connection may queue for its frame's decoder before it waits (each at most
/// 1 MiB: the memory one frame in flight holds besides its image).
const QUEUE: usize = 8;

/// Where a connection puts its frame's chunks.
type ChunkSender = mpsc::Sender<Vec<u8>>;

/// A frame on its way in: its chunks as they arrive, and where its reply goes.
struct Job {
    chunks: mpsc::Receiver<Vec<u8>>,
    done: oneshot::Sender<Reply>,
}

/// The chunks of one frame as a `Read`: blocks until the next chunk arrives; the end of the
/// frame (or a connection gone) is the end of the stream.
struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    read: u64,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.read += n as u64;
        Ok(n)
    }
}

/// A file name for `key` in `--out`: the key itself where it is a plain name, its hex
/// otherwise (a key is any UTF-8, a file name is not).
pub fn image_name(key: &str) -> String {
    let plain =
        !key.starts_with('.') && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain {
        format!("{key}.raw")
    } else {
        format!("x{}.raw", key.bytes().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

/// Applies one frame as it arrives: decode and verify (into `out/<key>.raw` if asked), save
/// the state, confirm. One key's frames are applied one at a time (`locks`).
fn apply(receiver: &Receiver<'_>, how: &Applying, locks: &KeyLocks, chunks: mpsc::Receiver<Vec<u8>>) -> Reply {
    let reply = apply_frame(receiver, how, locks, chunks);
    match &reply {
        Reply::Applied { .. } => {
            how.stats.rounds.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Refused { reason, .. } => how.stats.refused(reason.name()),
    }
    reply
}

fn apply_frame(receiver: &Receiver<'_>, how: &Applying, locks: &KeyLocks, chunks: mpsc::Receiver<Vec<u8>>) -> Reply {
    let mut r = ChunkReader { chunks, chunk: Vec::new(), at: 0, read: 0 };
    let header = match receiver.read_header(&mut r) {
        Ok(header) => header,
        Err(e) => return receiver.refusal("", &e),
    };
    let key = header.key.clone();
    let lock = locks.of(&key);
    let _held = lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let applied = match &how.out {
        // The image written to --out is also the baseline the state keeps (a link, not a copy).
        Some(dir) if !receiver.is_retry(&header) => receive_to_out(receiver, dir, header, &mut r, how.fsync),
        _ => receiver.receive_body(header, &mut r).map(|got| (got, None)),
    };
    let (got, path) = match applied {
        Ok(a) => a,
        Err(e) => return receiver.refusal(&key, &e),
    };
    let finished = match &path {
        Some(path) => receiver.finish_linked(&got, path),
        None => receiver.finish(&got),
    };
    match finished {
        Ok(reply) => {
            if how.log {
                eprintln!(
                    "hde serve: {key}: round {} {} ({} bytes)",
                    got.rounds.saturating_sub(1),
                    if got.retry { "confirmed again (a resend)" } else { "applied" },
                    r.read
                );
            }
            reply
        }
        Err(e) => receiver.refusal(&key, &e),
    }
}

/// Decodes the frame's body into `dir/<key>.raw` (replaced atomically once whole).
///
/// The image a round replaces is kept as the key's spare (`dir/.<key>.raw.spare`, a second
/// name of the same file); the round after next is decoded over it, writing only the blocks
/// that differ from what it holds (two rounds of changes, not the whole image) and renamed
/// into place. A spare that is the current image itself (after a crash between renames) is
/// dropped, never written; whatever else it holds is compared, never trusted.
fn receive_to_out(
    receiver: &Receiver<'_>,
    dir: &Path,
    header: hde_core::frame::FrameHeader,
    r: &mut ChunkReader,
    fsync: bool,
) -> hde_core::Result<(hde_core::session::Received, Option<PathBuf>)> {
    std::fs::create_dir_all(dir)?;
    let name = image_name(&header.key);
    let path = dir.join(&name);
    let spare = dir.join(format!(".{name}.spare"));
    let Some(file) = open_spare(&spare, &path) else {
        let file = AtomicFile::create(&path)?;
        let got = receiver.receive_body_to_file(header, r, file.file())?;
        // The image this one replaces becomes the spare.
        let _ = std::fs::hard_link(&path, &spare);
        file.commit(Existing::Replace, fsync)?;
        return Ok((got, Some(path)));
    };
    let got = receiver.receive_body_over_file(header, r, &file)?;
    if fsync {
        file.sync_all()?;
    }
    // The current image keeps a name as the next spare, then the spare takes its place.
    let next = dir.join(format!(".{name}.spare.next"));
    let _ = std::fs::remove_file(&next);
    let kept = std::fs::hard_link(&path, &next).is_ok();
    std::fs::rename(&spare, &path)?;
    if kept {
        std::fs::rename(&next, &spare)?;
    }
    if fsync {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok((got, Some(path)))
}

/// The spare image file of a key, open for reading and writing, if there is one that is not
/// the current image (`current`) itself.
fn open_spare(spare: &Path, current: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt as _;
    if !std::fs::symlink_metadata(spare).ok()?.is_file() {
        let _ = std::fs::remove_file(spare);
        return None;
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(spare).ok()?;
    let meta = file.metadata().ok()?;
    let same = std::fs::metadata(current).is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
    if same || !meta.is_file() {
        let _ = std::fs::remove_file(spare);
        return None;
    }
    Some(file)
}

/// One lock per key: frames of a key are applied in turn, frames of different keys at once.
#[derive(Default)]
struct KeyLocks(std::sync::Mutex<std::collections::HashMap<String, Arc<std::sync::Mutex<()>>>>);

impl KeyLocks {
    fn of(&self, key: &str) -> Arc<std::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key.to_owned()).or_default().clone()
    }
}

/// What the worker does with an applied frame besides saving the state.
struct Applying {
    out: Option<PathBuf>,
    log: bool,
    fsync: bool,
    stats: Arc<ServeStats>,
}

/// The worker: owns the node and the session; each frame is applied on a thread of its own
/// as its chunks arrive.
fn worker(hde: Arc<Hde>, state: PathBuf, how: Applying, mut jobs: mpsc::Receiver<Job>) -> Result<()> {
    let receiver = Receiver::with_state(&hde, StateDir::open(&state)?);
    let locks = KeyLocks::default();
    std::thread::scope(|scope| {
        while let Some(job) = jobs.blocking_recv() {
            let (receiver, how, locks) = (&receiver, &how, &locks);
            scope.spawn(move || {
                let reply = apply(receiver, how, locks, job.chunks);
                let _ = job.done.send(reply);
            });
        }
    });
    Ok(())
}

impl Server {
    /// Binds `listen` and prepares TLS.
    pub async fn bind(listen: SocketAddr, options: ServeOptions) -> Result<Self> {
        let tls = identity::server_config(&options.identity, options.peers.clone())?;
        let listener = TcpListener::bind(listen).await.map_err(Error::Connection)?;
        let metrics = match options.metrics {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(Error::Connection)?),
            None => None,
        };
        Ok(Server { listener, metrics, acceptor: TlsAcceptor::from(Arc::new(tls)), options })
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::Connection)
    }

    /// The address the metrics endpoint is bound to, if any.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics.as_ref().map(|l| l.local_addr().map_err(Error::Connection)).transpose()
    }

    /// Serves until `max_idle` passes with no connection open (forever without it).
    pub async fn run(self) -> Result<()> {
        let Server { listener, metrics, acceptor, options } = self;
        let (jobs, queue) = mpsc::channel::<Job>(4);
        let hde = Arc::new(Hde::new(options.config.clone())?);
        let stats = Arc::new(ServeStats::default());
        let node = hde.config().node_id;
        let log = options.log;
        let how = Applying { out: options.out.clone(), log, fsync: options.fsync, stats: stats.clone() };
        let (h, state) = (hde.clone(), options.state.clone());
        let worker = std::thread::spawn(move || worker(h, state, how, queue));
        // The index: this node's holdings first, then a rescan and an exchange every period.
        let cache = Arc::new(std::sync::Mutex::new(SketchCache::new()));
        cluster::rescan_shared(&hde, &options.state, &cache).await;
        let connector =
            TlsConnector::from(Arc::new(identity::client_config(&options.identity, options.peers.clone())?));
        let mut background = Vec::new();
        {
            let peers = options.peers.addresses().to_vec();
            let mut periods =
                Periods::new(hde.clone(), options.state.clone(), cache.clone(), peers, connector, stats.clone());
            let every = options.sync_every.max(Duration::from_millis(50));
            background.push(tokio::spawn(async move {
                loop {
                    periods.tick().await;
                    tokio::time::sleep(every).await;
                }
            }));
        }
        if let Some(listener) = metrics {
            background.push(tokio::spawn(crate::metrics::serve(listener, hde.clone(), stats.clone())));
        }
        let open = Arc::new(AtomicUsize::new(0));
        let mut idle_since = std::time::Instant::now();
        loop {
            let accepted = match options.max_idle {
                Some(idle) => match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
                    Ok(a) => a,
                    Err(_) => {
                        // Idle means no sender connected for `idle` (index exchanges between
                        // nodes do not count), not just no new connection.
                        if open.load(Ordering::SeqCst) > 0 {
                            idle_since = std::time::Instant::now();
                        } else if idle_since.elapsed() >= idle {
                            break;
                        }
                        continue;
                    }
                },
                None => listener.accept().await,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: say so once a tenth of a second
                    // rather than spin.
                    eprintln!("hde serve: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, jobs) = (acceptor.clone(), jobs.clone());
            let side = Side {
                hde: hde.clone(),
                stats: stats.clone(),
                state: options.state.clone(),
                cache: cache.clone(),
                open: open.clone(),
                node,
                max_frame: options.max_frame,
            };
            tokio::spawn(async move {
                let result = connection(stream, peer, acceptor, jobs, side).await;
                if let (Err(e), true) = (result, log) {
                    match e {
                        Error::Handshake { .. } => eprintln!("hde serve: refused: {e}"),
                        e => eprintln!("hde serve: {peer}: {e}"),
                    }
                }
            });
        }
        for task in background {
            task.abort();
        }
        drop(jobs);
        // The worker ends when the last connection's sender half is gone.
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(|e| Error::Protocol { what: format!("worker: {e}") })?
            .map_err(|_| Error::Protocol { what: "the worker thread panicked".into() })?
    }
}

/// What a connection shares with the server.
struct Side {
    hde: Arc<Hde>,
    stats: Arc<ServeStats>,
    /// The state directory and the sketches computed of it (a query rescans it first).
    state: PathBuf,
    cache: Arc<std::sync::Mutex<SketchCache>>,
    /// Connections that carry rounds (counted for `max_idle`).
    open: Arc<AtomicUsize>,
    node: u64,
    max_frame: u64,
}

/// Counts a connection as a sender's from its first round-related message until it ends.
struct Busy(Option<Arc<AtomicUsize>>);

impl Busy {
    fn mark(&mut self, open: &Arc<AtomicUsize>) {
        if self.0.is_none() {
            open.fetch_add(1, Ordering::SeqCst);
            self.0 = Some(open.clone());
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(open) = &self.0 {
            open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One connection: handshake, hello, then frames, queries and index exchanges until `Bye`.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    jobs: mpsc::Sender<Job>,
    side: Side,
) -> Result<()> {
    let Side { hde, stats, state, cache, open, node, max_frame } = side;
    let mut busy = Busy(None);
    let _ = stream.set_nodelay(true);
    let mut tls = acceptor.accept(stream).await.map_err(|e| crate::handshake_error(peer, &e))?;
    match proto::read(&mut tls).await? {
        Some(Message::Hello(h)) if h.magic == proto::MAGIC && h.version == proto::VERSION => {}
        Some(Message::Hello(h)) => {
            let text =
                format!("protocol version {} is not spoken here (this node speaks {})", h.version, proto::VERSION);
            let _ = proto::write(&mut tls, &Message::Error(text.clone())).await;
            let _ = tls.shutdown().await;
            return Err(Error::Protocol { what: text });
        }
        other => {
            return Err(Error::Protocol { what: format!("expected a hello, got {}", proto::describe(other.as_ref())) })
        }
    }
    proto::write(&mut tls, &Message::Hello(Hello::new(node, max_frame))).await?;
    tls.flush().await.map_err(Error::Connection)?;
    // The frame being received: its chunks' way to the decoder (gone once the frame is over
    // the limit: the decoder then sees it end early), its answer, and the bytes so far.
    let mut inflight: Option<(Option<ChunkSender>, oneshot::Receiver<Reply>)> = None;
    let mut received: u64 = 0;
    let mut first_chunk = None;
    let mut over = false;
    let stopped = || Error::Protocol { what: "the receiver's worker stopped".into() };
    loop {
        match proto::read(&mut tls).await? {
            None | Some(Message::Bye) => return Ok(()),
            Some(Message::Query { key, sketch }) => {
                busy.mark(&open);
                stats.queries.fetch_add(1, Ordering::Relaxed);
                // What a send from this node saved a moment ago counts: rescan first.
                cluster::rescan_shared(&hde, &state, &cache).await;
                let offers = cluster::offers(&hde, &key, &sketch);
                proto::write(&mut tls, &Message::Offers(offers)).await?;
                tls.flush().await.map_err(Error::Connection)?;
            }
            Some(Message::Sync(bytes)) => {
                let answer = cluster::answer_sync(&hde, &bytes, &stats);
                let bad = matches!(answer, Message::Error(_));
                proto::write(&mut tls, &answer).await?;
                tls.flush().await.map_err(Error::Connection)?;
                if bad {
                    return Err(Error::Protocol { what: "a malformed index message".into() });
                }
            }
            Some(Message::IndexQuery) => {
                proto::write(&mut tls, &Message::Index(hde.export_crdt_state())).await?;
                tls.flush().await.map_err(Error::Connection)?;
            }
            Some(Message::Chunk(bytes)) => {
                busy.mark(&open);
                first_chunk.get_or_insert_with(std::time::Instant::now);
                received += bytes.len() as u64;
                // Counted as it arrives: a scrape during a long frame sees it move.
                stats.frame_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                if over || received > max_frame {
                    // Refused at FrameEnd; the decoder sees the frame end early, the rest is
                    // dropped as it comes.
                    over = true;
                    if let Some((chunks, _)) = inflight.as_mut() {
                        *chunks = None;
                    }
                    continue;
                }
                if inflight.is_none() {
                    let (chunks, queue) = mpsc::channel(QUEUE);
                    let (done, answer) = oneshot::channel();
                    jobs.send(Job { chunks: queue, done }).await.map_err(|_| stopped())?;
                    inflight = Some((Some(chunks), answer));
                }
                if let Some((Some(chunks), _)) = &inflight {
                    // A decoder that stopped reading (a retry, a corrupt frame) has its answer
                    // ready at FrameEnd: the rest of the frame is dropped.
                    let _ = chunks.send(bytes).await;
                }
            }
            Some(Message::FrameEnd) => {
                // Dropping the chunks' sender ends the frame for its decoder.
                let answer = inflight.take().map(|(_, answer)| answer);
                let reply = match (over, answer) {
                    (true, answer) => {
                        // Wait for the decoder to give up on the cut frame before replying.
                        if let Some(answer) = answer {
                            let _ = answer.await;
                        }
                        Reply::Refused {
                            key: String::new(),
                            reason: Refusal::OverLimit,
                            holds: None,
                            message: format!("frame over this receiver's limit of {max_frame} bytes (--max-memory)"),
                        }
                    }
                    (false, Some(answer)) => answer.await.map_err(|_| stopped())?,
                    (false, None) => {
                        // An empty frame: the decoder reads nothing and says what is wrong.
                        let (done, answer) = oneshot::channel();
                        jobs.send(Job { chunks: mpsc::channel(1).1, done }).await.map_err(|_| stopped())?;
                        answer.await.map_err(|_| stopped())?
                    }
                };
                if let Some(t) = first_chunk.take() {
                    if received >= 8 << 20 {
                        let rate = received as f64 / t.elapsed().as_secs_f64().max(1e-6);
                        stats.link_rate_bits.store(rate.to_bits(), Ordering::Relaxed);
                    }
                }
                received = 0;
                over = false;
                proto::write(&mut tls, &Message::Reply(reply)).await?;
                tls.flush().await.map_err(Error::Connection)?;
            }
            Some(other) => {
                let text = format!("unexpected {} from a sender", proto::describe(Some(&other)));
                let _ = proto::write(&mut tls, &Message::Error(text.clone())).await;
                return Err(Error::Protocol { what: text });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_plain_or_hex() {
        assert_eq!(image_name("vm-1.a_b"), "vm-1.a_b.raw");
        assert_eq!(image_name("../etc"), "x2e2e2f657463.raw");
        assert_eq!(image_name("a/b"), "x612f62.raw");
    }
}
