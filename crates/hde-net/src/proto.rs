//! The messages nodes exchange inside TLS, and their framing.
//!
//! Every message is a 5-byte head (type, then payload length as u32 little-endian) and its
//! payload. The length is checked against the type's limit before anything is allocated or
//! read, so a peer cannot make a node reserve more than [`MAX_CHUNK`] per message. Control
//! messages carry MessagePack (serde + rmp-serde); frame bytes travel as raw chunks.
//!
//! A connection: each side sends [`Hello`] (the client first) and checks the other's
//! protocol version; then the client sends frames as chunks closed by `FrameEnd`, and the
//! server answers each frame with one `Reply`; `Bye` ends it. Between frames the client may
//! ask what baselines the server holds for a key (`Query`, answered by `Offers`), and a node
//! may run an anti-entropy exchange of the baseline index (`Sync` messages, each answered by
//! a `Sync` or by `SyncDone`). [`decode`] is a fuzz target: no input makes it panic.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use hde_core::delta::BaselineId;
use hde_core::index::{Candidate, Sketch};
use hde_core::session::{Refusal, Reply};

use crate::{Error, Result};

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Identifies the protocol in [`Hello`].
pub const MAGIC: [u8; 4] = *b"HDEN";
/// The largest control message (hello, reply, error).
pub const MAX_CONTROL: u32 = 64 << 10;
/// The largest chunk of frame bytes.
pub const MAX_CHUNK: u32 = 4 << 20;
/// The largest index anti-entropy message (the entries of the leaves that differ, and the
/// writer's whole causal context: about 300 bytes an entry).
pub const MAX_SYNC: u32 = 32 << 20;

const HELLO: u8 = 1;
const CHUNK: u8 = 2;
const FRAME_END: u8 = 3;
const REPLY: u8 = 4;
const BYE: u8 = 5;
const ERROR: u8 = 6;
const QUERY: u8 = 7;
const OFFERS: u8 = 8;
const SYNC: u8 = 9;
const SYNC_DONE: u8 = 10;
const INDEX_QUERY: u8 = 11;
const INDEX: u8 = 12;

/// The first message of each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's protocol version.
    pub version: u16,
    /// The node's id (for metrics and the replicated index).
    pub node: u64,
    /// Capability bits: [`CAP_INDEX`].
    pub caps: u32,
    /// The largest frame the node accepts (a server) or may send (a client), in bytes.
    pub max_frame: u64,
}

/// Capability: the node answers `Query`, `Sync` and `IndexQuery` (it keeps the replicated
/// baseline index). A client asks only a server whose hello has it.
pub const CAP_INDEX: u32 = 1;

impl Hello {
    /// This build's hello.
    pub fn new(node: u64, max_frame: u64) -> Self {
        Hello { magic: MAGIC, version: VERSION, node, caps: CAP_INDEX, max_frame }
    }
}

/// [`Reply`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum WireReply {
    Applied { key: String, seq: u64, checksum: u64 },
    Refused { key: String, reason: String, holds: Option<(u64, u64)>, message: String },
}

const REFUSALS: [Refusal; 6] = [
    Refusal::MissingBaseline,
    Refusal::BaselineMismatch,
    Refusal::Stale,
    Refusal::Corrupt,
    Refusal::OverLimit,
    Refusal::Failed,
];

impl From<&Reply> for WireReply {
    fn from(reply: &Reply) -> Self {
        match reply {
            Reply::Applied { key, holds } => {
                WireReply::Applied { key: key.clone(), seq: holds.seq, checksum: holds.checksum }
            }
            Reply::Refused { key, reason, holds, message } => WireReply::Refused {
                key: key.clone(),
                reason: reason.name().to_owned(),
                holds: holds.map(|h| (h.seq, h.checksum)),
                message: message.clone(),
            },
        }
    }
}

impl From<WireReply> for Reply {
    fn from(wire: WireReply) -> Self {
        match wire {
            WireReply::Applied { key, seq, checksum } => Reply::Applied { key, holds: BaselineId { seq, checksum } },
            WireReply::Refused { key, reason, holds, message } => Reply::Refused {
                key,
                // A reason this build does not know is a failure of the peer's.
                reason: REFUSALS.into_iter().find(|r| r.name() == reason).unwrap_or(Refusal::Failed),
                holds: holds.map(|(seq, checksum)| BaselineId { seq, checksum }),
                message,
            },
        }
    }
}

/// A baseline a node offers to a sender of a key (an index [`Candidate`] on the wire).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// The key it belongs to.
    pub key: String,
    /// Its sequence.
    pub seq: u64,
    /// Its image checksum.
    pub checksum: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Estimated pages in common with the sender's image.
    pub shared_pages: u64,
    /// Estimated resemblance, in millionths.
    pub resemblance_ppm: u32,
}

impl From<&Candidate> for Offer {
    fn from(c: &Candidate) -> Self {
        Offer {
            key: c.key.clone(),
            seq: c.id.seq,
            checksum: c.id.checksum,
            size: c.size,
            shared_pages: c.shared_pages,
            resemblance_ppm: (c.resemblance.clamp(0.0, 1.0) * 1e6) as u32,
        }
    }
}

impl From<&Offer> for Candidate {
    fn from(o: &Offer) -> Self {
        Candidate {
            key: o.key.clone(),
            id: BaselineId { seq: o.seq, checksum: o.checksum },
            size: o.size,
            resemblance: f64::from(o.resemblance_ppm.min(1_000_000)) / 1e6,
            shared_pages: o.shared_pages,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WireQuery {
    key: String,
    sketch: Sketch,
}

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The first message of each side.
    Hello(Hello),
    /// Bytes of the frame being sent.
    Chunk(Vec<u8>),
    /// The frame is complete.
    FrameEnd,
    /// The answer to one frame.
    Reply(Reply),
    /// The sender is done.
    Bye,
    /// The peer gives up on the connection, and says why.
    Error(String),
    /// What baselines do you hold that a sender of `key`, with an image of `sketch`, could
    /// encode against?
    Query {
        /// The key to be sent.
        key: String,
        /// The sketch of its first image.
        sketch: Sketch,
    },
    /// The answer to a `Query`: the key's own baseline first, then the most similar others.
    Offers(Vec<Offer>),
    /// A message of the index anti-entropy exchange (`hde_crdt`'s sync, encoded).
    Sync(Vec<u8>),
    /// The anti-entropy exchange is over.
    SyncDone,
    /// Send me your whole replica of the index (`hde cluster status`).
    IndexQuery,
    /// A node's whole replica of the index (`ORMap` bytes).
    Index(Vec<u8>),
}

fn control<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    rmp_serde::to_vec(value).unwrap_or_default()
}

/// What a message (or the end of the stream) is, for messages to people.
pub fn describe(m: Option<&Message>) -> &'static str {
    match m {
        None => "end of stream",
        Some(Message::Hello(_)) => "hello",
        Some(Message::Chunk(_)) => "frame chunk",
        Some(Message::FrameEnd) => "frame end",
        Some(Message::Reply(_)) => "reply",
        Some(Message::Bye) => "bye",
        Some(Message::Error(_)) => "error",
        Some(Message::Query { .. }) => "query",
        Some(Message::Offers(_)) => "offers",
        Some(Message::Sync(_)) => "index sync",
        Some(Message::SyncDone) => "index sync end",
        Some(Message::IndexQuery) => "index query",
        Some(Message::Index(_)) => "index",
    }
}

/// The bytes of `message`, head included.
pub fn encode(message: &Message) -> Vec<u8> {
    let (kind, payload) = match message {
        Message::Hello(h) => (HELLO, control(h)),
        Message::Chunk(bytes) => (CHUNK, bytes.clone()),
        Message::FrameEnd => (FRAME_END, Vec::new()),
        Message::Reply(r) => (REPLY, control(&WireReply::from(r))),
        Message::Bye => (BYE, Vec::new()),
        Message::Error(text) => (ERROR, control(text)),
        Message::Query { key, sketch } => (QUERY, control(&WireQuery { key: key.clone(), sketch: sketch.clone() })),
        Message::Offers(offers) => (OFFERS, control(offers)),
        Message::Sync(bytes) => (SYNC, bytes.clone()),
        Message::SyncDone => (SYNC_DONE, Vec::new()),
        Message::IndexQuery => (INDEX_QUERY, Vec::new()),
        Message::Index(bytes) => (INDEX, bytes.clone()),
    };
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The largest payload a message of `kind` may have, or an error for an unknown kind.
fn limit(kind: u8) -> Result<u32> {
    match kind {
        HELLO | REPLY | ERROR | QUERY | OFFERS => Ok(MAX_CONTROL),
        CHUNK => Ok(MAX_CHUNK),
        SYNC | INDEX => Ok(MAX_SYNC),
        FRAME_END | BYE | SYNC_DONE | INDEX_QUERY => Ok(0),
        _ => Err(Error::Protocol { what: format!("unknown message type {kind}") }),
    }
}

/// Decodes the payload of a message of `kind` (the head already checked).
pub fn decode(kind: u8, payload: &[u8]) -> Result<Message> {
    let max = limit(kind)?;
    if payload.len() as u64 > u64::from(max) {
        return Err(Error::Protocol { what: format!("message of {} bytes over the limit of {max}", payload.len()) });
    }
    let bad = |e: rmp_serde::decode::Error| Error::Protocol { what: format!("malformed message: {e}") };
    Ok(match kind {
        HELLO => Message::Hello(rmp_serde::from_slice(payload).map_err(bad)?),
        CHUNK => Message::Chunk(payload.to_vec()),
        FRAME_END => Message::FrameEnd,
        REPLY => Message::Reply(rmp_serde::from_slice::<WireReply>(payload).map_err(bad)?.into()),
        BYE => Message::Bye,
        QUERY => {
            let q: WireQuery = rmp_serde::from_slice(payload).map_err(bad)?;
            if !q.sketch.is_valid() {
                return Err(Error::Protocol { what: "malformed sketch in a query".into() });
            }
            Message::Query { key: q.key, sketch: q.sketch }
        }
        OFFERS => {
            let offers: Vec<Offer> = rmp_serde::from_slice(payload).map_err(bad)?;
            if offers.len() > hde_core::index::MAX_CANDIDATES {
                return Err(Error::Protocol { what: format!("{} offers, more than asked for", offers.len()) });
            }
            Message::Offers(offers)
        }
        SYNC => Message::Sync(payload.to_vec()),
        SYNC_DONE => Message::SyncDone,
        INDEX_QUERY => Message::IndexQuery,
        INDEX => Message::Index(payload.to_vec()),
        _ => Message::Error(rmp_serde::from_slice(payload).map_err(bad)?),
    })
}

/// Decodes one whole message (head and payload) from `bytes`: the fuzz target's entry point.
pub fn decode_bytes(bytes: &[u8]) -> Result<Message> {
    let (&kind, rest) = bytes.split_first().ok_or(Error::Protocol { what: "empty message".into() })?;
    let len = rest.get(..4).ok_or(Error::Protocol { what: "message head cut short".into() })?;
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    if len > limit(kind)? {
        return Err(Error::Protocol { what: format!("message of {len} bytes over the limit") });
    }
    let payload = &rest[4..];
    if payload.len() != len as usize {
        return Err(Error::Protocol { what: "message length differs from its head".into() });
    }
    decode(kind, payload)
}

/// Reads one message; `None` at a clean end of the stream (before a head).
pub async fn read(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Message>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(Error::Connection(e)),
    }
    r.read_exact(&mut head[1..]).await.map_err(Error::Connection)?;
    let kind = head[0];
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    let max = limit(kind)?;
    if len > max {
        return Err(Error::Protocol { what: format!("message of {len} bytes over the limit of {max}") });
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await.map_err(Error::Connection)?;
    decode(kind, &payload).map(Some)
}

/// Writes one message.
pub async fn write(w: &mut (impl AsyncWrite + Unpin), message: &Message) -> Result<()> {
    w.write_all(&encode(message)).await.map_err(Error::Connection)
}

/// Writes a chunk of frame bytes without copying them into a message first.
pub async fn write_chunk(w: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<()> {
    let mut head = [CHUNK, 0, 0, 0, 0];
    head[1..].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
    w.write_all(&head).await.map_err(Error::Connection)?;
    w.write_all(bytes).await.map_err(Error::Connection)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello::new(7, 1 << 30)),
            Message::Chunk(vec![1, 2, 3]),
            Message::FrameEnd,
            Message::Reply(Reply::Applied { key: "vm".into(), holds: BaselineId { seq: 3, checksum: 9 } }),
            Message::Reply(Reply::Refused {
                key: "vm".into(),
                reason: Refusal::BaselineMismatch,
                holds: Some(BaselineId { seq: 2, checksum: 1 }),
                message: "no".into(),
            }),
            Message::Bye,
            Message::Error("bad".into()),
            Message::Query { key: "vm".into(), sketch: Sketch::of_hashes(&[5, 9, 1]) },
            Message::Offers(vec![Offer {
                key: "other".into(),
                seq: 4,
                checksum: 5,
                size: 6,
                shared_pages: 7,
                resemblance_ppm: 8,
            }]),
            Message::Sync(vec![1, 2]),
            Message::SyncDone,
            Message::IndexQuery,
            Message::Index(vec![3]),
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(decode_bytes(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn over_long_and_unknown_messages_are_refused() {
        let mut chunk = vec![CHUNK];
        chunk.extend_from_slice(&(MAX_CHUNK + 1).to_le_bytes());
        assert!(decode_bytes(&chunk).is_err());
        assert!(decode_bytes(&[99, 0, 0, 0, 0]).is_err());
        assert!(decode_bytes(&[FRAME_END, 1, 0, 0, 0, 0]).is_err());
        assert!(decode_bytes(&[]).is_err());
    }

    proptest! {
        #[test]
        fn no_bytes_make_decode_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_bytes(&bytes);
            if let Some((&kind, rest)) = bytes.split_first() {
                let _ = decode(kind % 14, rest);
            }
        }
    }
}
