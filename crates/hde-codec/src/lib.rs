//! Bytes in, bytes out: the codec layer of HDE.
//!
//! This crate knows nothing of pages, baselines or frames. It turns a byte slice into a smaller
//! byte slice and back, optionally against a *reference*: older bytes the decoder also holds,
//! which the compressor may copy from (what `zstd --patch-from` does for whole files, and what
//! the delta layer does for the old versions of changed pages).
//!
//! # The boundary
//!
//! [`Codec`] is the trait upper layers program against. It has three required methods and a
//! few provided ones, and forwards through `&mut C` and `Box<C>`, so a user can plug in a codec
//! of their own. Buffers always belong to the caller:
//!
//! * compression *appends* to a `Vec<u8>` the caller owns, so many streams can be packed into
//!   one buffer with no copy and no allocation once the buffer has grown;
//! * decompression writes into a `&mut [u8]` whose length is the caller's limit. A stream that
//!   claims (or produces) more is [`Error::OutputTooLarge`]; nothing is ever allocated from a
//!   size the input states.
//!
//! # Implementations
//!
//! * [`Raw`]: stored bytes, for data nothing can shrink.
//! * [`Lz4`]: `lz4_flex` block format, the fastest; its hash table is reused across calls.
//! * [`Zstd`]: levels 1..=22, optional 128 MiB long window, and a *raw-content reference* with
//!   match-finder tables sized to it. Without that sizing, low levels silently ignore a
//!   multi-MiB reference (their default tables are too small to reach it); with it, the
//!   reference turns a 10.8 MiB delta into 2.6 MiB on real guest memory (design brief §1).
//!
//! [`CodecSet`] owns one instance of each, and of every codec the user adds
//! ([`CodecSet::with_codec`], under a [`CustomId`]), and dispatches by [`CodecSpec`]
//! (compression) or [`CodecId`] (decompression): the object a worker thread keeps so that no
//! compression context is allocated per call. [`CodecBank`] is what an engine asks of such a
//! set. [`CodecSpec`] is the one name of a codec choice in every layer: the selector picks
//! one, the engine runs it, metrics print it.
//!
//! # Detecting a wrong reference
//!
//! A zstd stream compressed against a reference carries zstd's content checksum (4 bytes), so
//! decoding it with a different reference is [`Error::ChecksumMismatch`], not wrong bytes.
//! The LZ4 block format and raw bytes carry no checksum and cannot tell; the frame layer above
//! checks an xxh3 of every reconstructed image, which catches that case too.
//!
//! # Example
//!
//! A page compressed against its old version, as `zstd --patch-from` would, and back:
//!
//! ```
//! use hde_codec::{CodecSet, CodecSpec, ZstdParams};
//!
//! let old: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
//! let mut page = old.clone();
//! page[100..108].copy_from_slice(b"changed!");
//! let mut codecs = CodecSet::new();
//! let spec = CodecSpec::Zstd(ZstdParams::new(3)?);
//! let mut stored = Vec::new();
//! codecs.compress(spec, &page, &old, &mut stored)?;
//! assert!(stored.len() < 100);
//! let mut back = vec![0u8; page.len()];
//! codecs.decompress(spec.id(), &stored, &old, &mut back)?;
//! assert_eq!(back, page);
//! # Ok::<(), hde_codec::Error>(())
//! ```

mod error;
mod lz4;
mod measure;
mod raw;
mod set;
mod spec;
mod zstd;

pub use crate::error::{Error, Result};
pub use crate::lz4::Lz4;
pub use crate::measure::{measure, Measured};
pub use crate::raw::Raw;
pub use crate::set::{CodecBank, CodecSet};
pub use crate::spec::{CodecId, CodecSpec, CustomId, ParseCodecSpecError, ZstdParams};
pub use crate::zstd::Zstd;

/// A compressor/decompressor of byte slices: the boundary of the codec layer.
///
/// Implementations keep their contexts inside (hence `&mut self`) and reuse them across calls.
/// `reference` is older content the decoder will also hold; an empty slice means none. A codec
/// that cannot use a reference ignores it, and its output still decodes with or without one.
pub trait Codec {
    /// The wire id of the streams this codec writes and reads.
    fn id(&self) -> CodecId;

    /// Compresses `input` against `reference`, appending the stream to `out`.
    ///
    /// Returns the number of bytes appended.
    fn compress_into(&mut self, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize>;

    /// Decompresses `input` against `reference` into `out`, whose length is the most the caller
    /// accepts.
    ///
    /// Returns the number of bytes written; bytes of `out` past that are unspecified. A stream
    /// that would produce more than `out.len()` bytes is [`Error::OutputTooLarge`].
    fn decompress_into(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize>;

    /// An upper bound of the compressed size of `input_len` bytes (used to reserve space).
    fn compress_bound(&self, input_len: usize) -> usize {
        // Generous enough for every codec here: zstd's and LZ4's worst cases are below it.
        input_len + input_len / 8 + 64
    }

    /// Decompresses into `out` and checks the stream produced exactly `out.len()` bytes.
    fn decompress_exact(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<()> {
        let actual = self.decompress_into(input, reference, out)?;
        if actual != out.len() {
            return Err(Error::LengthMismatch { codec: self.id(), expected: out.len(), actual });
        }
        Ok(())
    }

    /// Compresses `input` into a new vector (convenience for tests and one-off use).
    fn compress(&mut self, input: &[u8], reference: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.compress_bound(input.len()));
        self.compress_into(input, reference, &mut out)?;
        Ok(out)
    }
}

impl<C: Codec + ?Sized> Codec for &mut C {
    fn id(&self) -> CodecId {
        (**self).id()
    }
    fn compress_into(&mut self, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        (**self).compress_into(input, reference, out)
    }
    fn decompress_into(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        (**self).decompress_into(input, reference, out)
    }
    fn compress_bound(&self, input_len: usize) -> usize {
        (**self).compress_bound(input_len)
    }
}

impl<C: Codec + ?Sized> Codec for Box<C> {
    fn id(&self) -> CodecId {
        (**self).id()
    }
    fn compress_into(&mut self, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        (**self).compress_into(input, reference, out)
    }
    fn decompress_into(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        (**self).decompress_into(input, reference, out)
    }
    fn compress_bound(&self, input_len: usize) -> usize {
        (**self).compress_bound(input_len)
    }
}
