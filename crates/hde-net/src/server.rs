//! `hde serve`: a receiver for many senders and keys at once.
//!
//! Connections are accepted and spoken to on the tokio runtime; frames are applied on one
//! worker thread that owns the node and its [`Receiver`] session (its baselines, restored
//! from and saved to the state directory). A frame is buffered whole (at most `max_frame`
//! bytes; more is refused with a reply, the connection stays usable), applied, its image
//! written to `out/<key>.raw` if asked, the state saved, and only then confirmed.

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
use tokio_rustls::TlsAcceptor;

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
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
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

struct Job {
    frame: Vec<u8>,
    done: oneshot::Sender<Reply>,
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

fn write_image(dir: &Path, key: &str, image: &[u8], fsync: bool) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(image_name(key));
    let file = AtomicFile::create(&path)?;
    hde_core::state::write_sparse(file.file(), 0, image)?;
    file.commit(Existing::Replace, fsync)?;
    Ok(path)
}

/// Applies one frame: decode and verify, write the image, save the state, confirm.
fn apply(receiver: &Receiver<'_>, how: &Applying, frame: &[u8]) -> Reply {
    let (out, log) = (how.out.as_deref(), how.log);
    let key = match receiver.prepare(frame) {
        Ok((header, _)) => header.key,
        Err(e) => return receiver.refusal("", &e),
    };
    let got = match receiver.receive(frame) {
        Ok(got) => got,
        Err(e) => return receiver.refusal(&key, &e),
    };
    // The image written to --out is also the baseline the state keeps (a link, not a copy).
    let finished = match out {
        Some(dir) if !got.retry => match write_image(dir, &key, &got.image, how.fsync) {
            Ok(path) => receiver.finish_linked(&got, &path),
            Err(e) => return receiver.refusal(&key, &hde_core::Error::Io(e)),
        },
        _ => receiver.finish(&got),
    };
    match finished {
        Ok(reply) => {
            if !log {
                return reply;
            }
            eprintln!(
                "hde serve: {key}: round {} {} ({} bytes)",
                got.rounds.saturating_sub(1),
                if got.retry { "confirmed again (a resend)" } else { "applied" },
                frame.len()
            );
            reply
        }
        Err(e) => receiver.refusal(&key, &e),
    }
}

/// What the worker does with an applied frame besides saving the state.
struct Applying {
    out: Option<PathBuf>,
    log: bool,
    fsync: bool,
}

/// The worker thread: owns the node and the session, applies frames one at a time.
fn worker(config: HdeConfig, state: PathBuf, how: Applying, mut jobs: mpsc::Receiver<Job>) -> Result<()> {
    let hde = Hde::new(config)?;
    let receiver = Receiver::with_state(&hde, StateDir::open(&state)?);
    while let Some(job) = jobs.blocking_recv() {
        let reply = apply(&receiver, &how, &job.frame);
        let _ = job.done.send(reply);
    }
    Ok(())
}

impl Server {
    /// Binds `listen` and prepares TLS.
    pub async fn bind(listen: SocketAddr, options: ServeOptions) -> Result<Self> {
        let tls = identity::server_config(&options.identity, options.peers.clone())?;
        let listener = TcpListener::bind(listen).await.map_err(Error::Connection)?;
        Ok(Server { listener, acceptor: TlsAcceptor::from(Arc::new(tls)), options })
    }

    /// The address actually bound (port 0 picks one).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::Connection)
    }

    /// Serves until `max_idle` passes with no connection open (forever without it).
    pub async fn run(self) -> Result<()> {
        let Server { listener, acceptor, options } = self;
        let (jobs, queue) = mpsc::channel::<Job>(4);
        let (config, state, out) = (options.config.clone(), options.state.clone(), options.out.clone());
        let node = config.node_id;
        let log = options.log;
        let how = Applying { out, log, fsync: options.fsync };
        let worker = std::thread::spawn(move || worker(config, state, how, queue));
        let open = Arc::new(AtomicUsize::new(0));
        let mut idle_since = std::time::Instant::now();
        loop {
            let accepted = match options.max_idle {
                Some(idle) => match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
                    Ok(a) => a,
                    Err(_) => {
                        // Idle means no connection open for `idle`, not just no new one.
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
            idle_since = std::time::Instant::now();
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("hde serve: accept: {e}");
                    continue;
                }
            };
            let (acceptor, jobs, open) = (acceptor.clone(), jobs.clone(), open.clone());
            let max_frame = options.max_frame;
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let result = connection(stream, peer, acceptor, jobs, node, max_frame).await;
                if let (Err(e), true) = (result, log) {
                    match e {
                        Error::Handshake { .. } => eprintln!("hde serve: refused: {e}"),
                        e => eprintln!("hde serve: {peer}: {e}"),
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        drop(jobs);
        // The worker ends when the last connection's sender half is gone.
        tokio::task::spawn_blocking(move || worker.join())
            .await
            .map_err(|e| Error::Protocol { what: format!("worker: {e}") })?
            .map_err(|_| Error::Protocol { what: "the worker thread panicked".into() })?
    }
}

/// One connection: handshake, hello, then frames until `Bye`.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    jobs: mpsc::Sender<Job>,
    node: u64,
    max_frame: u64,
) -> Result<()> {
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
    let mut frame = Vec::new();
    let mut over = false;
    loop {
        match proto::read(&mut tls).await? {
            None | Some(Message::Bye) => return Ok(()),
            Some(Message::Chunk(bytes)) => {
                if over || frame.len() as u64 + bytes.len() as u64 > max_frame {
                    // Refused at FrameEnd; the bytes are dropped as they come.
                    over = true;
                    frame = Vec::new();
                } else {
                    frame.extend_from_slice(&bytes);
                }
            }
            Some(Message::FrameEnd) => {
                let reply = if over {
                    Reply::Refused {
                        key: String::new(),
                        reason: Refusal::OverLimit,
                        holds: None,
                        message: format!("frame over this receiver's limit of {max_frame} bytes (--max-memory)"),
                    }
                } else {
                    let (done, answer) = oneshot::channel();
                    jobs.send(Job { frame: std::mem::take(&mut frame), done })
                        .await
                        .map_err(|_| Error::Protocol { what: "the receiver's worker stopped".into() })?;
                    answer.await.map_err(|_| Error::Protocol { what: "the receiver's worker stopped".into() })?
                };
                frame = Vec::new();
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
