//! The HDE engine: one API over the layers.
//!
//! `hde-core` composes the codec, delta, selector and CRDT layers through their boundary
//! traits, with the default implementations as type defaults, into the encoder, decoder and
//! wire format a migration tool uses (design brief §2, §4, §5; issue 6). Until the engine
//! lands it re-exports the layers that exist, so the CLI and users reach them through this one
//! crate.

pub use hde_codec as codec;
pub use hde_corpus as corpus;
