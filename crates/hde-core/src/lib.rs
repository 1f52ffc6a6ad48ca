//! The HDE engine: one API over the layers.
//!
//! `hde-core` composes the codec, delta, selector and CRDT layers through their boundary
//! traits, with the default implementations as type defaults, into the encoder, decoder and
//! wire format a migration tool uses (`docs/ARCHITECTURE.md` in the repository):
//!
//! * [`Encoder`]: the delta layer classifies a round's pages; each segment's streams, as the
//!   layer's layout describes them, are compressed on worker threads (index streams with
//!   zstd-1, content with the selector's choice, against the layer's reference when chosen),
//!   written as frame records, and the baseline advances only once the whole frame is out.
//! * [`Decoder`]: reads and validates the frame ([`frame`], specified in `docs/FORMAT.md`),
//!   checks it applies to the baseline it holds, decompresses the streams (a referenced stream
//!   against the same reference, which the delta layer rebuilds from its own baseline) and rebuilds and verifies the image.
//!
//! Both are generic over the layers (`DeltaEncoder`/`DeltaDecoder`, `Selector`, [`CodecBank`])
//! with the defaults as type defaults. The layers are re-exported, so the CLI and users reach
//! them through this one crate.
//!
//! [`Hde`] is a node: an encoder and a decoder configured by one validated [`HdeConfig`],
//! [`Metrics`] and a [`Health`] check, and a CRDT replica of [`BaselineMeta`] (which node holds
//! which baseline version of which key) that peers exchange with `export_crdt_state` and
//! `merge_remote_crdt`.
//!
//! # Example
//!
//! Rounds of an image through an encoder and a decoder, as frames (what `hde encode` and `hde
//! decode` do; [`session`] adds the exchange with a receiver over a connection, and
//! [`state::StateDir`] keeps baselines between processes):
//!
//! ```
//! use hde_core::{delta::DeltaConfig, selector::SelectorConfig, Decoder, Encoder};
//!
//! let encoder = Encoder::new(DeltaConfig::default(), SelectorConfig::default())?;
//! let decoder = Decoder::new(DeltaConfig::default())?;
//! let mut x = 1u64; // a megabyte of noise, which no codec shrinks
//! let mut image: Vec<u8> = (0..1 << 20)
//!     .map(|_| {
//!         x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
//!         (x >> 56) as u8
//!     })
//!     .collect();
//! let keyframe = encoder.compress("vm", &image)?;
//! image[12_345] ^= 1;
//! let delta = encoder.compress("vm", &image)?;
//! assert!(delta.len() < keyframe.len() / 10);
//! decoder.decompress(&keyframe)?;
//! let (header, rebuilt) = decoder.decompress(&delta)?;
//! assert!(!header.round.is_keyframe());
//! assert_eq!(rebuilt.as_slice(), &image[..]);
//! # Ok::<(), hde_core::Error>(())
//! ```

pub mod frame;
pub mod fsio;
pub mod index;
pub mod session;
pub mod state;
pub mod units;

mod alloc;
mod config;
mod engine;
mod error;
mod ledger;
mod node;
mod pipeline;

pub use crate::config::HdeConfig;
pub use crate::engine::{
    reference_gain, DecodeCounters, Decoder, Encoder, FrameReport, FrameSummary, StreamReport, Written,
    INTERNET_DELTA_SEGMENT,
};
pub use crate::error::{Error, Result};
pub use crate::index::BaselineMeta;
pub use crate::node::{Hde, Health, Metrics};

/// A zeroed buffer of `len` bytes for a large image (a guest's RAM, a decoded round), backed
/// by transparent huge pages where the kernel grants them on request: filling it then takes
/// one page fault per 2 MiB instead of one per 4 KiB. Where the system refuses the memory the
/// answer is an error ([`Error::Delta`] wrapping the delta layer's out-of-memory), not an
/// abort.
pub fn zeroed_image(len: usize) -> Result<Vec<u8>> {
    Ok(alloc::zeroed(len)?)
}
pub use hde_codec as codec;
pub use hde_codec::CodecBank;
pub use hde_crdt as crdt;
pub use hde_delta as delta;
pub use hde_selector as selector;
