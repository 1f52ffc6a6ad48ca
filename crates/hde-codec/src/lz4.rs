//! LZ4 through `lz4_flex`'s block format.

use lz4_flex::block::{self, CompressTable, DecompressError};

use crate::{Codec, CodecId, Error, Result};

/// LZ4 block format: the fastest codec, for links faster than a core can compress with zstd.
///
/// The stream is a bare LZ4 block (no length, no checksum): the frame layer stores lengths and
/// checksums once for all streams. The hash table is kept and reused across calls. With a
/// reference, LZ4 can only reach its last 64 KiB (the format's window), and `lz4_flex` builds
/// a fresh table for it on each call; for large references zstd is the codec to use.
#[derive(Default)]
pub struct Lz4 {
    table: Option<Box<CompressTable>>,
}

impl std::fmt::Debug for Lz4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lz4").field("table", &self.table.is_some()).finish()
    }
}

impl Lz4 {
    /// A new LZ4 codec; its table is allocated on first use.
    pub fn new() -> Self {
        Lz4::default()
    }
}

fn decompress_error(err: DecompressError, capacity: usize) -> Error {
    match err {
        DecompressError::OutputTooSmall { .. } => Error::OutputTooLarge { codec: CodecId::Lz4, capacity },
        DecompressError::LiteralOutOfBounds => {
            Error::Corrupt { codec: CodecId::Lz4, reason: "literal runs past the end of the input" }
        }
        DecompressError::ExpectedAnotherByte => {
            Error::Corrupt { codec: CodecId::Lz4, reason: "input ends inside a sequence" }
        }
        DecompressError::OffsetOutOfBounds => {
            Error::Corrupt { codec: CodecId::Lz4, reason: "match offset points before the output" }
        }
        _ => Error::Corrupt { codec: CodecId::Lz4, reason: "malformed block" },
    }
}

impl Codec for Lz4 {
    fn id(&self) -> CodecId {
        CodecId::Lz4
    }

    fn compress_into(&mut self, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        let bound = block::get_maximum_output_size(input.len());
        out.resize(start + bound, 0);
        let dst = &mut out[start..];
        let written = if reference.is_empty() {
            let table = self.table.get_or_insert_with(|| Box::new(CompressTable::large()));
            block::compress_into_with_table(input, dst, table)
        } else {
            block::compress_into_with_dict(input, dst, reference)
        };
        let written = written.map_err(|_| {
            // Cannot happen with a buffer of `get_maximum_output_size`; reported, not panicked.
            out.truncate(start);
            Error::Backend { codec: CodecId::Lz4, reason: "output buffer too small" }
        })?;
        out.truncate(start + written);
        Ok(written)
    }

    fn decompress_into(&mut self, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        let capacity = out.len();
        let result = if reference.is_empty() {
            block::decompress_into(input, out)
        } else {
            block::decompress_into_with_dict(input, out, reference)
        };
        result.map_err(|e| decompress_error(e, capacity))
    }

    fn compress_bound(&self, input_len: usize) -> usize {
        block::get_maximum_output_size(input_len)
    }
}
