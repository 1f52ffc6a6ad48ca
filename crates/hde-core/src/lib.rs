//! The HDE engine: one API over the layers.
//!
//! `hde-core` composes the codec, delta, selector and CRDT layers through their boundary
//! traits, with the default implementations as type defaults, into the encoder, decoder and
//! wire format a migration tool uses (design brief §2, §4, §5). So far it holds the wire format
//! ([`frame`], specified in `docs/FORMAT.md`) and re-exports the layers, so the CLI and users
//! reach them through this one crate; the engine that drives them comes next (issue 6).

pub mod frame;

mod error;

pub use crate::error::{Error, Result};
pub use hde_codec as codec;
pub use hde_corpus as corpus;
pub use hde_delta as delta;
