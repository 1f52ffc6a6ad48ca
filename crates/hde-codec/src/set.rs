//! One instance of every codec, dispatched by spec or id.

use crate::{Codec, CodecId, CodecSpec, Lz4, Raw, Result, Zstd};

/// A worker's codecs: one of each, contexts kept for the life of the set.
///
/// An encoder thread keeps one `CodecSet` and runs whatever [`CodecSpec`] the selector picks;
/// a decoder thread dispatches on the [`CodecId`] read from the wire. Switching zstd levels
/// reuses the same zstd context.
#[derive(Debug, Default)]
pub struct CodecSet {
    raw: Raw,
    lz4: Lz4,
    zstd: Zstd,
}

impl CodecSet {
    /// An empty set; contexts are created on first use.
    pub fn new() -> Self {
        CodecSet::default()
    }

    /// The codec for `spec`, configured for it.
    pub fn for_spec(&mut self, spec: CodecSpec) -> &mut dyn Codec {
        match spec {
            CodecSpec::Raw => &mut self.raw,
            CodecSpec::Lz4 => &mut self.lz4,
            CodecSpec::Zstd(params) => {
                self.zstd.set_params(params);
                &mut self.zstd
            }
        }
    }

    /// The codec that decodes streams of `id`.
    pub fn for_id(&mut self, id: CodecId) -> &mut dyn Codec {
        match id {
            CodecId::Raw => &mut self.raw,
            CodecId::Lz4 => &mut self.lz4,
            CodecId::Zstd => &mut self.zstd,
        }
    }

    /// Compresses with `spec`, appending to `out`; returns the bytes appended.
    pub fn compress(&mut self, spec: CodecSpec, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        self.for_spec(spec).compress_into(input, reference, out)
    }

    /// Decompresses a stream of codec `id` into `out` (its length is the limit).
    pub fn decompress(&mut self, id: CodecId, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        self.for_id(id).decompress_into(input, reference, out)
    }
}
