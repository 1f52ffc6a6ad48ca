//! QEMU's live migration through HDE.
//!
//! QEMU takes any program as its migration channel (`migrate exec:CMD` on the source,
//! `-incoming exec:CMD` on the destination). `hde qemu-send` reads the source's stream on its
//! standard input, `hde qemu-recv` writes the stream the destination reads; this crate is
//! what stands between the two, without I/O of its own:
//!
//! * [`stream`] parses the migration stream: the RAM section's page records, the framing
//!   around them, and the device state after RAM, passed through unparsed.
//! * [`MigrationSender`] cuts the stream into batches. A batch's RAM pages become one round
//!   of the page hierarchy (issue 13's dirty pages, as a small image): the image is the
//!   batch's pages one after the other, its baseline what the destination already holds at
//!   those addresses, followed by the pages it holds elsewhere with the same content as one of
//!   the batch's (found by a hash index of everything sent). A page resent with the same
//!   content costs a class byte, a small change travels as a patch, a page that moved as a
//!   duplicate, the rest as literals compressed against the old content. A batch costs time
//!   and memory in proportion to its pages, not to the guest's RAM. Everything else (the
//!   batch's *skeleton*: the stream without the pages' bodies) is compressed with zstd.
//! * [`MigrationReceiver`] applies each round to its copy of the guest's RAM and rebuilds the
//!   batch's bytes from the skeleton and that copy, checks them against the sender's checksum
//!   of the same bytes, and only then hands them on: the destination QEMU reads the source's
//!   stream byte for byte, or HDE stops with a typed error and QEMU sees the migration fail.
//!
//! The batches travel in a small container ([`wire`]) that `hde-net` carries over its
//! authenticated, encrypted transport.
//!
//! # Example
//!
//! A stream through a sender and a receiver in one process (`hde qemu-send` and
//! `hde qemu-recv` put a TLS connection between them):
//!
//! ```no_run
//! use hde_core::HdeConfig;
//! use hde_qemu::{MigrationReceiver, MigrationSender, Options};
//!
//! let options = Options::new("vm-42", HdeConfig::new(1));
//! let mut sender = MigrationSender::new(&options)?;
//! let mut receiver = MigrationReceiver::new(&options)?;
//! let source: Vec<u8> = std::fs::read("migration.bin")?; // what QEMU wrote
//! let (mut wire, mut rebuilt) = (Vec::new(), Vec::new());
//! for chunk in source.chunks(1 << 16) {
//!     sender.push(chunk, &mut wire)?;
//!     receiver.push(&wire, &mut rebuilt)?;
//!     wire.clear();
//! }
//! sender.finish(&mut wire)?;
//! receiver.push(&wire, &mut rebuilt)?;
//! receiver.finish()?;
//! assert_eq!(rebuilt, source);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod receiver;
mod reuse;
mod sender;
pub mod stream;
pub mod wire;

use std::time::Duration;

use hde_core::HdeConfig;

pub use crate::receiver::{MigrationReceiver, ReceiverStats};
pub use crate::sender::{MigrationSender, SenderStats};

/// Everything that can go wrong between QEMU's stream and HDE's.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The migration stream holds something this adapter does not read (see [`stream`]).
    #[error("migration stream at byte {offset}: {what}")]
    Stream {
        /// Where in the stream.
        offset: u64,
        /// What was found.
        what: String,
    },
    /// The stream ended before the device state after RAM (the source stopped midway).
    #[error("migration stream ends at byte {offset}, before the device state")]
    Truncated {
        /// Where it ended.
        offset: u64,
    },
    /// A container record is malformed (wrong tag, over its limit, out of order).
    #[error("migration container: {what}")]
    Container {
        /// What was wrong.
        what: String,
    },
    /// The bytes rebuilt for a batch differ from the bytes the sender read.
    #[error(
        "batch {batch}: the rebuilt stream differs from the source's (checksum {got:#018x}, expected {expected:#018x})"
    )]
    Mismatch {
        /// The batch, counted from 0.
        batch: u64,
        /// Checksum of the rebuilt bytes.
        got: u64,
        /// The sender's checksum.
        expected: u64,
    },
    /// The engine failed to encode or decode a round.
    #[error(transparent)]
    Core(#[from] hde_core::Error),
    /// Compressing or decompressing a skeleton failed.
    #[error("skeleton: {0}")]
    Skeleton(#[source] std::io::Error),
    /// Writing the rebuilt stream failed (the destination QEMU went away).
    #[error("writing the rebuilt stream: {0}")]
    Output(#[source] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What both sides of a migration agree on.
#[derive(Debug, Clone)]
pub struct Options {
    /// The key the guest's RAM is a baseline of (a VM's name).
    pub key: String,
    /// The engine's configuration (mode, bandwidth, threads); the delta policy's keyframe
    /// rules are switched off, since a migration's rounds only ever build on the last one.
    pub config: HdeConfig,
    /// Most bytes of guest RAM accepted (a stream announcing more is refused before anything
    /// is allocated).
    pub max_ram: u64,
    /// A batch is sent once its pages reach this many bytes.
    pub batch_bytes: usize,
    /// A batch is sent at the end of a RAM part once it is this old (QEMU's own bandwidth
    /// estimate then sees its bytes leave).
    pub batch_age: Duration,
    /// zstd level of the skeletons.
    pub skeleton_level: i32,
}

impl Options {
    /// Defaults: 8 MiB batches, sent at the end of a RAM part once 50 ms old, RAM up to 1 TiB.
    ///
    /// Small batches keep what QEMU has handed over but HDE has not sent small (it must still
    /// go after QEMU stops the VM); each costs a frame and a page list.
    pub fn new(key: impl Into<String>, config: HdeConfig) -> Self {
        Options {
            key: key.into(),
            config,
            max_ram: 1 << 40,
            batch_bytes: 8 << 20,
            batch_age: Duration::from_millis(50),
            skeleton_level: 3,
        }
    }

    fn delta_config(&self) -> hde_core::delta::DeltaConfig {
        let mut delta = self.config.delta_config();
        let forever = Duration::from_secs(365 * 24 * 3600);
        delta.policy.max_delta_chain = u32::MAX;
        delta.policy.baseline_interval = forever;
        delta.policy.max_baseline_age = forever;
        delta.page_size = stream::PAGE;
        delta.max_image_size = delta.max_image_size.max(self.max_ram);
        delta.policy.max_memory_usage = delta.policy.max_memory_usage.max(self.max_ram.saturating_mul(2));
        delta
    }
}
