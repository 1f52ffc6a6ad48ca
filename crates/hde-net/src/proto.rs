//! The messages nodes exchange inside TLS, and their framing.
//!
//! Every message is a 5-byte head (type, then payload length as u32 little-endian) and its
//! payload. The length is checked against the type's limit before anything is allocated or
//! read, so a peer cannot make a node reserve more than [`MAX_CHUNK`] per message. Control
//! messages carry MessagePack (serde + rmp-serde); frame bytes travel as raw chunks.
//!
//! A connection: each side sends [`Hello`] (the client first) and checks the other's
//! protocol version; then the client sends frames as chunks closed by `FrameEnd`, and the
//! server answers each frame with one `Reply`; `Bye` ends it. [`decode`] is a fuzz target:
//! no input makes it panic.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use hde_core::delta::BaselineId;
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

const HELLO: u8 = 1;
const CHUNK: u8 = 2;
const FRAME_END: u8 = 3;
const REPLY: u8 = 4;
const BYE: u8 = 5;
const ERROR: u8 = 6;

/// The first message of each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// The sender's protocol version.
    pub version: u16,
    /// The node's id (for metrics and the replicated index).
    pub node: u64,
    /// Capability bits (none defined in version 1).
    pub caps: u32,
    /// The largest frame the node accepts (a server) or may send (a client), in bytes.
    pub max_frame: u64,
}

impl Hello {
    /// This build's hello.
    pub fn new(node: u64, max_frame: u64) -> Self {
        Hello { magic: MAGIC, version: VERSION, node, caps: 0, max_frame }
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
        HELLO | REPLY | ERROR => Ok(MAX_CONTROL),
        CHUNK => Ok(MAX_CHUNK),
        FRAME_END | BYE => Ok(0),
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
                let _ = decode(kind % 8, rest);
            }
        }
    }
}
