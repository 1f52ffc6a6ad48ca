//! Carries HDE sessions between nodes: `hde serve` and `hde send`.
//!
//! The layer above `hde-core`: it owns the runtime (tokio) and the sockets, and hands frames
//! to the synchronous, tested session types of `hde_core::session` (the sans-I/O shape of
//! quinn over quinn-proto). Encoding and decoding run on threads of their own; the async side
//! only moves bytes.
//!
//! * [`identity`]: key pairs, the peers a node accepts, and the TLS 1.3 configurations that
//!   pin them (rustls with ring; mutual authentication, no plaintext mode).
//! * [`proto`]: the length-checked messages inside TLS (hello, frame chunks, replies).
//! * [`server`]: a receiver for many senders and keys at once.
//! * [`client`]: the rounds of one key to one receiver, resent over a new connection when one
//!   drops in the middle of a round.
//! * [`link`]: the link rate, measured from the sender's socket writes while a frame goes
//!   out (it steers hybrid mode per segment) and remembered in the state directory.
//! * [`migrate`]: QEMU's live migration stream between two nodes (`hde qemu-send`,
//!   `hde qemu-recv`).
//! * [`relay`]: a TCP relay that adds latency, for tests and benchmarks (no `netem` here).
//!
//! Why TLS over TCP and not QUIC: kernel TCP with large buffers is the mature baseline on the
//! links HDE targets (datacenter to WAN), and one ordered stream per sender is what a round
//! needs; see `docs/ARCHITECTURE.md` for what was measured and what was not.
//!
//! # Example
//!
//! The rounds of one VM to a receiver (`hde serve` on the other node), as `hde send` does:
//! the first is a keyframe unless the receiver holds a baseline of the key, the others are
//! deltas, each confirmed by the receiver once its image verified.
//!
//! ```no_run
//! use std::path::{Path, PathBuf};
//!
//! use hde_core::HdeConfig;
//! use hde_net::client::{send, SendOptions};
//! use hde_net::identity::{Identity, Peers};
//!
//! // This node's key pair and the receivers it trusts, as `hde keygen` writes them.
//! let identity = Identity::load(Path::new("/etc/hde/node"))?;
//! let config = HdeConfig::new(identity.node_id());
//! let options = SendOptions {
//!     to: "10.0.0.2:7170".into(),
//!     identity,
//!     peers: Peers::load(Path::new("/etc/hde/peers"))?,
//!     key: "vm-42".into(),
//!     state: Some(PathBuf::from("/var/lib/hde")),
//!     config,
//!     keyframe: false,
//!     attempts: 3,
//!     limit_bytes_per_second: None,
//!     progress: None,
//!     bandwidth_given: false,
//! };
//! let rounds = [PathBuf::from("round0.raw"), PathBuf::from("round1.raw")];
//! for report in send(&options, &rounds)? {
//!     println!("round {}: {} of {} bytes", report.round, report.frame_bytes, report.input_bytes);
//! }
//! # Ok::<(), hde_net::Error>(())
//! ```

pub mod client;
pub mod cluster;
pub mod identity;
pub mod link;
pub mod metrics;
pub mod migrate;
pub mod proto;
pub mod relay;
pub mod server;

use std::path::PathBuf;

/// Everything that can go wrong in `hde-net`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A local file (key, peers, state) could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key or peers file is unusable, or TLS could not be configured with it.
    #[error("{what}")]
    Identity {
        /// What is wrong.
        what: String,
    },
    /// The connection failed (refused, reset, closed mid-message).
    #[error("connection: {0}")]
    Connection(#[source] std::io::Error),
    /// The TLS handshake failed: most often a key the other side does not accept.
    #[error("handshake with {peer} failed: {what}")]
    Handshake {
        /// The address of the other side.
        peer: String,
        /// What rustls said, and what it most likely means.
        what: String,
    },
    /// The other side broke the protocol (an unknown or over-long message, a wrong version).
    #[error("protocol: {what}")]
    Protocol {
        /// What was wrong.
        what: String,
    },
    /// The receiver refused a round and a keyframe could not fix it.
    #[error("the receiver refused round {round} of {key:?} ({reason}): {message}")]
    Refused {
        /// The key.
        key: String,
        /// The round, counted per key.
        round: u64,
        /// The refusal's name.
        reason: &'static str,
        /// The receiver's message.
        message: String,
    },
    /// The engine failed.
    #[error(transparent)]
    Core(#[from] hde_core::Error),
    /// A QEMU migration stream could not be carried (`hde qemu-send`, `hde qemu-recv`).
    #[error(transparent)]
    Migration(#[from] hde_qemu::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Explains a TLS handshake failure to a person.
pub(crate) fn handshake_error(peer: impl std::fmt::Display, e: &std::io::Error) -> Error {
    let text = e.to_string();
    let hint = if ["BadCertificate", "ApplicationVerificationFailure", "AccessDenied", "UnknownCA"]
        .iter()
        .any(|k| text.contains(k))
    {
        " (the other side's key is not in this side's --peers file, or this side's key is not in the other's)"
    } else if text.contains("CertificateRequired") || text.contains("certificate required") {
        " (the client presented no key)"
    } else {
        ""
    };
    Error::Handshake { peer: peer.to_string(), what: format!("{text}{hint}") }
}
