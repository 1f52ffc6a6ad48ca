//! The codecs a worker runs: the built-in three and any the user adds, dispatched by spec or id.

use std::fmt;
use std::sync::Arc;

use crate::{Codec, CodecId, CodecSpec, CustomId, Error, Lz4, Raw, Result, Zstd};

/// The codecs a worker thread runs: dispatch by spec to compress, by id to decompress.
///
/// An engine keeps one bank per worker thread, cloned from the one it was given (a clone has
/// the same codecs and contexts of its own). [`CodecSet`] is the implementation; a caller
/// implements this trait to wrap one (to count, trace or reroute calls).
pub trait CodecBank: Clone + Send {
    /// Compresses `input` with `spec` against `reference`, appending to `out`; returns the
    /// bytes appended. A spec the bank has no codec for is [`Error::UnknownCodec`].
    fn compress(&mut self, spec: CodecSpec, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize>;

    /// Decompresses a stream of codec `id` into `out` (its length is the limit); returns the
    /// bytes written. An id the bank has no codec for is [`Error::UnknownCodec`].
    fn decompress(&mut self, id: CodecId, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize>;
}

type Factory = Arc<dyn Fn() -> Box<dyn Codec + Send> + Send + Sync>;

/// A codec added by the user: how to make one, and this set's instance once made.
struct Added {
    id: CustomId,
    make: Factory,
    codec: Option<Box<dyn Codec + Send>>,
}

/// A worker's codecs: the built-in three, and the codecs added with
/// [`with_codec`](Self::with_codec); contexts are made on first use and kept for the life of
/// the set.
///
/// An encoder thread keeps one `CodecSet` and runs whatever [`CodecSpec`] the selector picks;
/// a decoder thread dispatches on the [`CodecId`] read from the wire. Switching zstd levels
/// reuses the same zstd context. Cloning gives the same codecs with fresh contexts.
#[derive(Default)]
pub struct CodecSet {
    raw: Raw,
    lz4: Lz4,
    zstd: Zstd,
    added: Vec<Added>,
    missing: Missing,
}

impl CodecSet {
    /// The built-in codecs; contexts are created on first use.
    pub fn new() -> Self {
        CodecSet::default()
    }

    /// Adds a codec of the caller's: `make` builds one instance per set (each clone of the set
    /// calls it again, on first use), and its [`Codec::id`] must be a [`CodecId::Custom`] id
    /// that no codec of the set has yet ([`Error::InvalidCodec`] otherwise). Streams it
    /// writes carry that id; a receiver decodes them with a set that has the same codec.
    pub fn with_codec<C, F>(mut self, make: F) -> Result<Self>
    where
        C: Codec + Send + 'static,
        F: Fn() -> C + Send + Sync + 'static,
    {
        let codec = make();
        let CodecId::Custom(id) = codec.id() else {
            return Err(Error::InvalidCodec { id: codec.id(), reason: "a built-in id; added codecs take 128..=255" });
        };
        if self.added.iter().any(|a| a.id == id) {
            return Err(Error::InvalidCodec { id: codec.id(), reason: "the set has a codec with this id" });
        }
        let make: Factory = Arc::new(move || Box::new(make()));
        self.added.push(Added { id, make, codec: Some(Box::new(codec)) });
        Ok(self)
    }

    /// The ids this set decodes, built-in first.
    pub fn ids(&self) -> Vec<CodecId> {
        CodecId::ALL.into_iter().chain(self.added.iter().map(|a| CodecId::Custom(a.id))).collect()
    }

    /// The codec for `spec`, configured for it. A custom id the set does not have gives a
    /// codec whose every call is [`Error::UnknownCodec`].
    pub fn for_spec(&mut self, spec: CodecSpec) -> &mut dyn Codec {
        match spec {
            CodecSpec::Raw => &mut self.raw,
            CodecSpec::Lz4 => &mut self.lz4,
            CodecSpec::Zstd(params) => {
                self.zstd.set_params(params);
                &mut self.zstd
            }
            CodecSpec::Custom(id) => self.added(id),
        }
    }

    /// The codec that decodes streams of `id` (for an id the set does not have, a codec whose
    /// every call is [`Error::UnknownCodec`]).
    pub fn for_id(&mut self, id: CodecId) -> &mut dyn Codec {
        match id {
            CodecId::Raw => &mut self.raw,
            CodecId::Lz4 => &mut self.lz4,
            CodecId::Zstd => &mut self.zstd,
            CodecId::Custom(id) => self.added(id),
        }
    }

    fn added(&mut self, id: CustomId) -> &mut dyn Codec {
        let Some(added) = self.added.iter_mut().find(|a| a.id == id) else {
            self.missing = Missing(id);
            return &mut self.missing;
        };
        let make = &added.make;
        added.codec.get_or_insert_with(|| make()).as_mut()
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

impl Clone for CodecSet {
    fn clone(&self) -> Self {
        let added = self.added.iter().map(|a| Added { id: a.id, make: Arc::clone(&a.make), codec: None }).collect();
        CodecSet { added, ..CodecSet::default() }
    }
}

impl fmt::Debug for CodecSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecSet").field("ids", &self.ids()).finish_non_exhaustive()
    }
}

impl CodecBank for CodecSet {
    fn compress(&mut self, spec: CodecSpec, input: &[u8], reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
        CodecSet::compress(self, spec, input, reference, out)
    }
    fn decompress(&mut self, id: CodecId, input: &[u8], reference: &[u8], out: &mut [u8]) -> Result<usize> {
        CodecSet::decompress(self, id, input, reference, out)
    }
}

/// Stands for a custom id the set has no codec for.
#[derive(Debug, Clone, Copy)]
struct Missing(CustomId);

impl Default for Missing {
    fn default() -> Self {
        Missing(CustomId::MAX)
    }
}

impl Codec for Missing {
    fn id(&self) -> CodecId {
        CodecId::Custom(self.0)
    }
    fn compress_into(&mut self, _input: &[u8], _reference: &[u8], _out: &mut Vec<u8>) -> Result<usize> {
        Err(Error::UnknownCodec { id: self.0.get() })
    }
    fn decompress_into(&mut self, _input: &[u8], _reference: &[u8], _out: &mut [u8]) -> Result<usize> {
        Err(Error::UnknownCodec { id: self.0.get() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores bytes reversed: not a built-in, and wrong if a decoder ever mistakes it for raw.
    #[derive(Debug, Default)]
    struct Reversed;

    fn reversed_id() -> CodecId {
        CodecId::Custom(CustomId::new(200).unwrap())
    }

    impl Codec for Reversed {
        fn id(&self) -> CodecId {
            reversed_id()
        }
        fn compress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut Vec<u8>) -> Result<usize> {
            out.extend(input.iter().rev());
            Ok(input.len())
        }
        fn decompress_into(&mut self, input: &[u8], _reference: &[u8], out: &mut [u8]) -> Result<usize> {
            let capacity = out.len();
            let dst = out.get_mut(..input.len()).ok_or(Error::OutputTooLarge { codec: self.id(), capacity })?;
            for (d, s) in dst.iter_mut().zip(input.iter().rev()) {
                *d = *s;
            }
            Ok(input.len())
        }
    }

    #[test]
    fn an_added_codec_runs_in_the_set_and_its_clones() {
        let spec = CodecSpec::Custom(CustomId::new(200).unwrap());
        let set = CodecSet::new().with_codec(|| Reversed).unwrap();
        for mut set in [set.clone(), set] {
            let mut out = Vec::new();
            set.compress(spec, b"abc", &[], &mut out).unwrap();
            assert_eq!(out, b"cba");
            let mut back = [0u8; 3];
            assert_eq!(set.decompress(spec.id(), &out, &[], &mut back), Ok(3));
            assert_eq!(&back, b"abc");
        }
        let mut plain = CodecSet::new();
        assert_eq!(plain.compress(spec, b"abc", &[], &mut Vec::new()), Err(Error::UnknownCodec { id: 200 }));
        assert_eq!(plain.decompress(spec.id(), b"cba", &[], &mut [0u8; 3]), Err(Error::UnknownCodec { id: 200 }));
    }

    #[test]
    fn added_ids_are_custom_and_distinct() {
        let twice = CodecSet::new().with_codec(|| Reversed).and_then(|s| s.with_codec(|| Reversed));
        assert!(matches!(twice, Err(Error::InvalidCodec { .. })));
        assert!(matches!(CodecSet::new().with_codec(|| Raw), Err(Error::InvalidCodec { .. })));
        assert_eq!(CodecSet::new().with_codec(|| Reversed).unwrap().ids().last(), Some(&reversed_id()));
    }
}
