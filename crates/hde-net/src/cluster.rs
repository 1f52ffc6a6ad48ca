//! The baseline index between nodes: what a node holds, kept in its replica; anti-entropy
//! with its peers; the answers to senders' queries; and each node's view, for people.
//!
//! * A node's own holdings come from its state directory, which its `hde serve` (received
//!   rounds) and its `hde send` processes (sent rounds) share: [`rescan`] records each key's
//!   newest saved baseline with a sketch of its pages, and removes keys no longer saved.
//! * Every period a node runs the four-message digest exchange of `hde_crdt` with one peer,
//!   chosen at random among those whose serve address its peers file gives, over the same
//!   authenticated TLS connections as frames ([`sync_with`]). Membership is that static list;
//!   there is no failure detector: a peer that does not answer is tried again later.
//! * A sender asks the node it sends to what that node holds ([`Message::Query`]): the node
//!   answers from its replica.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use hde_core::delta::BaselineId;
use hde_core::index::{BaselineMeta, Sketch};
use hde_core::state::{Side, StateDir};
use hde_core::Hde;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;

use crate::proto::{self, Message, Offer};
use crate::{Error, Result};

/// What a serving node counts, besides the engine's metrics.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Rounds applied (retries included).
    pub rounds: AtomicU64,
    /// Frame bytes received.
    pub frame_bytes: AtomicU64,
    /// The last frame's receive rate, bytes per second (as `f64` bits).
    pub link_rate_bits: AtomicU64,
    /// Refusals, by reason.
    pub refusals: Mutex<BTreeMap<&'static str, u64>>,
    /// Index exchanges this node started that completed.
    pub syncs: AtomicU64,
    /// Index exchanges that failed (peer unreachable, refused, broken).
    pub sync_failures: AtomicU64,
    /// Bytes of index messages sent and received, both roles.
    pub sync_bytes: AtomicU64,
    /// Queries answered.
    pub queries: AtomicU64,
}

impl ServeStats {
    /// Counts a refusal.
    pub fn refused(&self, reason: &'static str) {
        *self.refusals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(reason).or_default() += 1;
    }

    /// The last frame's receive rate, bytes per second.
    pub fn link_rate(&self) -> f64 {
        f64::from_bits(self.link_rate_bits.load(Ordering::Relaxed))
    }
}

/// Sketches already computed, by key: a rescan hashes only baselines that changed.
pub type SketchCache = HashMap<String, (BaselineId, Sketch)>;

/// Records in `hde`'s replica what `dir` holds: for each key, the newest baseline saved on
/// either side, with its size, the file's time and a sketch; keys no longer saved are removed.
/// Returns the number of keys held.
pub fn rescan(hde: &Hde, dir: &StateDir, cache: &mut SketchCache) -> Result<usize> {
    let mut best: BTreeMap<String, (Side, BaselineId, u64)> = BTreeMap::new();
    for (key, side, id, len) in dir.holdings()? {
        let newer = best.get(&key).is_none_or(|(_, held, _)| id.seq > held.seq);
        if newer {
            best.insert(key, (side, id, len));
        }
    }
    for (key, &(side, id, len)) in &best {
        let sketch = match cache.get(key) {
            Some((cached, sketch)) if *cached == id => sketch.clone(),
            _ => match dir.sketch(side, key, hde) {
                Ok(Some(sketch)) => sketch,
                // Unreadable now (being replaced, its source gone): offered without a sketch.
                _ => Sketch::default(),
            },
        };
        cache.insert(key.clone(), (id, sketch.clone()));
        let time_ms = dir
            .modified(side, key)
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let meta = BaselineMeta {
            holder: 0,
            seq: id.seq,
            checksum: id.checksum,
            size: len,
            codec: String::new(),
            keyframe: false,
            time_ms,
            sketch,
        };
        hde.note_held(key, meta);
    }
    let node = hde.config().node_id;
    for (holding, _) in hde.index_entries() {
        if holding.node == node && !best.contains_key(&holding.key) {
            hde.forget_held(&holding.key);
            cache.remove(&holding.key);
        }
    }
    Ok(best.len())
}

/// [`rescan`] on a blocking thread, with the cache shared between the periodic task and the
/// connections (one rescan at a time).
pub async fn rescan_shared(
    hde: &std::sync::Arc<Hde>,
    state: &std::path::Path,
    cache: &std::sync::Arc<Mutex<SketchCache>>,
) {
    let (h, dir, c) = (hde.clone(), state.to_owned(), cache.clone());
    let _ = tokio::task::spawn_blocking(move || {
        let dir = StateDir::open(&dir)?;
        let mut cache = c.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rescan(&h, &dir, &mut cache)
    })
    .await;
}

/// The answer to a sender's query: what this node holds for `key` or like `sketch`.
pub fn offers(hde: &Hde, key: &str, sketch: &Sketch) -> Vec<Offer> {
    hde.candidates(hde.config().node_id, key, sketch).iter().map(Offer::from).collect()
}

/// Handles one index message of a peer that started an exchange; returns what to answer.
pub fn answer_sync(hde: &Hde, bytes: &[u8], stats: &ServeStats) -> Message {
    stats.sync_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    match hde.index_sync_handle(bytes) {
        Ok(Some(reply)) => {
            stats.sync_bytes.fetch_add(reply.len() as u64, Ordering::Relaxed);
            Message::Sync(reply)
        }
        Ok(None) => Message::SyncDone,
        Err(e) => Message::Error(format!("bad index message: {e}")),
    }
}

/// What one exchange moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Messages both ways.
    pub messages: u32,
    /// Bytes both ways (payloads).
    pub bytes: u64,
}

/// Runs one anti-entropy exchange with the node at `addr` (started by this node), on an
/// already authenticated stream.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(hde: &Hde, tls: &mut S) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let mut out = hde.index_sync_start();
    loop {
        report.messages += 1;
        report.bytes += out.len() as u64;
        proto::write(tls, &Message::Sync(out)).await?;
        tls.flush().await.map_err(Error::Connection)?;
        match proto::read(tls).await? {
            Some(Message::Sync(bytes)) => {
                report.messages += 1;
                report.bytes += bytes.len() as u64;
                match hde.index_sync_handle(&bytes)? {
                    Some(next) => out = next,
                    None => break,
                }
            }
            Some(Message::SyncDone) => break,
            Some(Message::Error(text)) => return Err(Error::Protocol { what: format!("the peer said: {text}") }),
            other => {
                return Err(Error::Protocol {
                    what: format!("expected an index message, got {}", proto::describe(other.as_ref())),
                })
            }
        }
    }
    let _ = proto::write(tls, &Message::Bye).await;
    let _ = tls.shutdown().await;
    Ok(report)
}

/// How long a node waits for a peer's connection and hello (a peer cut off must not stall
/// the periods of the others).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

async fn connect_in_time(connector: &TlsConnector, addr: &str, node: u64) -> Result<crate::client::Tls> {
    match tokio::time::timeout(CONNECT_TIMEOUT, crate::client::connect(connector, addr, node)).await {
        Ok(connected) => connected,
        Err(_) => Err(Error::Connection(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{addr} did not answer within {} s", CONNECT_TIMEOUT.as_secs()),
        ))),
    }
}

/// Connects to `addr` and runs one exchange.
pub async fn sync_with(connector: &TlsConnector, addr: &str, hde: &Hde) -> Result<SyncReport> {
    let mut tls = connect_in_time(connector, addr, hde.config().node_id).await?;
    exchange(hde, &mut tls).await
}

/// Asks the node at `addr` for its whole replica (its view of the index).
pub async fn fetch_index(connector: &TlsConnector, addr: &str, node: u64) -> Result<Vec<u8>> {
    let mut tls = connect_in_time(connector, addr, node).await?;
    proto::write(&mut tls, &Message::IndexQuery).await?;
    tls.flush().await.map_err(Error::Connection)?;
    let answer = match proto::read(&mut tls).await? {
        Some(Message::Index(bytes)) => bytes,
        Some(Message::Error(text)) => return Err(Error::Protocol { what: format!("the peer said: {text}") }),
        other => {
            return Err(Error::Protocol { what: format!("expected an index, got {}", proto::describe(other.as_ref())) })
        }
    };
    let _ = proto::write(&mut tls, &Message::Bye).await;
    let _ = tls.shutdown().await;
    Ok(answer)
}

/// A small, seedable choice of peer per period (xorshift; not for anything secret).
#[derive(Debug)]
pub struct PeerChoice(u64);

impl PeerChoice {
    /// Seeded from the node id and the time.
    pub fn new(node: u64) -> Self {
        let t = UNIX_EPOCH.elapsed().map_or(0, |d| d.as_nanos() as u64);
        PeerChoice((node ^ t) | 1)
    }

    /// An index below `n` (`n > 0`).
    pub fn pick(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// The periodic side of a node's index: each period rescans the state and starts one
/// exchange with a random peer, in a task of its own, so that a peer that is cut off (and
/// holds its exchange until [`CONNECT_TIMEOUT`]) never delays the periods; a peer with an
/// exchange still under way is not picked again until it ends.
pub struct Periods {
    hde: std::sync::Arc<Hde>,
    state: std::path::PathBuf,
    cache: std::sync::Arc<Mutex<SketchCache>>,
    peers: Vec<(u64, String)>,
    connector: TlsConnector,
    stats: std::sync::Arc<ServeStats>,
    choice: PeerChoice,
    busy: std::sync::Arc<Mutex<std::collections::HashSet<u64>>>,
}

impl std::fmt::Debug for Periods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Periods").field("state", &self.state).field("peers", &self.peers).finish_non_exhaustive()
    }
}

impl Periods {
    /// The periods of `hde`'s node, whose peers (with serve addresses) are `peers`.
    pub fn new(
        hde: std::sync::Arc<Hde>,
        state: std::path::PathBuf,
        cache: std::sync::Arc<Mutex<SketchCache>>,
        peers: Vec<(u64, String)>,
        connector: TlsConnector,
        stats: std::sync::Arc<ServeStats>,
    ) -> Self {
        let node = hde.config().node_id;
        let peers = peers.into_iter().filter(|(id, _)| *id != node).collect();
        let busy = std::sync::Arc::default();
        Periods { hde, state, cache, peers, connector, stats, choice: PeerChoice::new(node), busy }
    }

    /// One period: a rescan, then an exchange started with a random free peer. Errors are
    /// counted, not returned: a later period tries again.
    pub async fn tick(&mut self) {
        rescan_shared(&self.hde, &self.state, &self.cache).await;
        let (peer, addr) = {
            let mut busy = self.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let free: Vec<&(u64, String)> = self.peers.iter().filter(|(id, _)| !busy.contains(id)).collect();
            if free.is_empty() {
                return;
            }
            let (peer, addr) = free[self.choice.pick(free.len())].clone();
            busy.insert(peer);
            (peer, addr)
        };
        let (hde, connector, stats, busy) =
            (self.hde.clone(), self.connector.clone(), self.stats.clone(), self.busy.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), sync_with(&connector, &addr, &hde)).await {
                Ok(Ok(report)) => {
                    stats.syncs.fetch_add(1, Ordering::Relaxed);
                    stats.sync_bytes.fetch_add(report.bytes, Ordering::Relaxed);
                }
                _ => {
                    stats.sync_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&peer);
        });
    }
}

/// One node's view of the index, as [`status`] found it.
#[derive(Debug)]
pub struct NodeView {
    /// The node's id.
    pub node: u64,
    /// Its serve address.
    pub addr: String,
    /// Its replica, or why it could not be had.
    pub index: std::result::Result<hde_core::index::Index, String>,
}

impl NodeView {
    /// The replica's [`digest`](hde_core::index::digest), if it was had.
    pub fn digest(&self) -> Option<u64> {
        self.index.as_ref().ok().map(hde_core::index::digest)
    }
}

/// Asks every node of `peers` that has an address for its replica (as `identity`).
pub fn status(identity: &crate::identity::Identity, peers: &crate::identity::Peers) -> Result<Vec<NodeView>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Error::Connection)?;
    let tls = crate::identity::client_config(identity, peers.clone())?;
    let connector = TlsConnector::from(std::sync::Arc::new(tls));
    let mut views = Vec::new();
    for (node, addr) in peers.addresses() {
        let fetched = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), fetch_index(&connector, addr, identity.node_id())).await
        });
        let index = match fetched {
            Ok(Ok(bytes)) => hde_core::index::Index::from_bytes(&bytes, &hde_core::crdt::Limits::default())
                .map_err(|e| format!("a malformed index: {e}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 30 s".to_owned()),
        };
        views.push(NodeView { node: *node, addr: addr.clone(), index });
    }
    Ok(views)
}
