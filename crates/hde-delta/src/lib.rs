//! The delta layer of HDE: pages and baselines, not codecs.
//!
//! A round of a VM image is described page by page with the cheapest description that holds
//! (design brief §3):
//!
//! 1. **unchanged** against the baseline the receiver holds (a compare, or a hash compare when
//!    the encoder keeps hashes only): one class byte;
//! 2. **zero**: one class byte;
//! 3. **duplicate** of a baseline page or of an earlier page of this image (xxh3-128 index,
//!    verified byte for byte when content is held): a page index;
//! 4. **small change**: XOR against the old page with zero runs, kept only when at most
//!    `xor_max_bytes`;
//! 5. **literal**: the page's bytes, and when its old version is known, that old version joins
//!    the segment's *reference*, which the engine gives the codec (zstd matches into it the way
//!    `zstd --patch-from` does, but over the changed pages only).
//!
//! This crate never runs a codec: an encoded round borrows the image and builds, on demand and
//! one segment at a time, four byte streams ([`SegmentStreams`]) and the reference for its
//! literals; `hde-core` compresses them with
//! the codec the selector picks, and on the other side decompresses them, asking the prepared
//! round for the same reference.
//!
//! # Baselines and agreement
//!
//! [`PageDeltaEncoder`] keeps per key exactly what the receiver will hold: `encode` leaves the
//! baseline as it is and `commit` (called once the frame is out) replaces it. Each round names
//! the baseline it applies to ([`BaselineId`]: sequence and image checksum) and carries the
//! checksum of the image it produces. [`PageDeltaDecoder`] refuses a delta for a baseline it
//! does not hold, a stale sequence, or an image whose checksum differs, with a typed error:
//! never a wrong image.
//!
//! Keyframes come from the [`Policy`] (delta chain, refresh interval, baseline age), from
//! eviction under `max_baselines` / `max_memory_usage`, or on request. Images larger than the
//! memory budget can be tracked with [`BaselineContent::Bounded`]: 16 bytes of hash per page
//! plus a bounded cache of recently changed pages.
//!
//! # Parallelism
//!
//! Images are cut into segments (default 4 MiB for keyframes, 16 MiB for deltas, which carry a
//! fraction of the pages) processed on `threads` threads; the output is the same for any
//! thread count. Duplicates are found over the whole image in a short sequential pass over
//! changed pages after the parallel scan; streams are built per segment by whoever asks (the
//! engine's workers). Shared state (the baseline stores) is behind `hde_sync`,
//! model-checked by loom under `--cfg hde_loom`.
//!
//! # Example
//!
//! Three rounds of an image, each a page changed; the streams travel as they are here (the
//! engine, `hde-core`, compresses them):
//!
//! ```
//! use hde_delta::{DeltaConfig, DeltaDecoder, DeltaEncoder, EncodeOptions, PageDeltaDecoder, PageDeltaEncoder, Round};
//!
//! let config = DeltaConfig::default();
//! let (encoder, decoder) = (PageDeltaEncoder::new(config.clone())?, PageDeltaDecoder::new(config)?);
//! let mut image = vec![0u8; 1 << 20];
//! for round in 0..3u8 {
//!     image[4096 * usize::from(round) + 1] = round + 1;
//!     let encoded = encoder.encode("vm", &image, EncodeOptions::default())?;
//!     assert_eq!(encoded.header().is_keyframe(), round == 0);
//!     let prepared = decoder.prepare("vm", encoded.header())?;
//!     let rebuilt = decoder.apply("vm", prepared, &encoded.segments())?;
//!     assert_eq!(rebuilt.as_slice(), &image[..]);
//!     encoder.commit(encoded)?;
//! }
//! # Ok::<(), hde_delta::Error>(())
//! ```

mod baseline;
mod checksum;
mod clock;
mod config;
mod decoder;
mod encoder;
mod error;
mod image;
mod page;
mod par;
mod payload;
mod persist;
mod similar;

pub use crate::checksum::checksum;
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::config::{BaselineContent, DeltaConfig, Policy};
pub use crate::decoder::{AppliedSegment, DeltaDecoder, PageCopy, PageDeltaDecoder, Prepared, PreparedRound};
pub use crate::encoder::{
    BaselineInfo, DeltaEncoder, EncodeOptions, EncodedRound, EncoderStats, KeyframeReason, PageDeltaEncoder, Round,
};
pub use crate::error::{Error, Result};
pub use crate::image::{try_zeroed, Image, SharedBytes, ZeroRanges};
pub use crate::page::is_zero;
pub use crate::payload::{
    check_layout, page_stream, BaselineId, ClassCounts, PageClass, RoundHeader, SegmentShape, SegmentStreams,
    StreamRole, StreamSpec, MAX_STREAMS, PAGE_LAYOUT,
};
pub use crate::persist::{ReceiverBaselines, SenderBaselines};
