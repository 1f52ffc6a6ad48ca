//! The selector of HDE: data profiles and outcomes, not bytes on the wire.
//!
//! For each block the engine is about to compress, a [`Selector`] picks a codec and level and
//! whether to compress against the reference, from a cheap [`Profile`] of the block and the
//! network mode. It never sees the bytes; it names its choice in the codec layer's one
//! vocabulary, [`CodecSpec`] (re-exported here), which the engine runs.
//!
//! # The cost model
//!
//! Every mode minimises one cost over the candidate choices (design brief §6):
//!
//! * **Datacenter**: estimated delivery time `max(encode / threads, bytes / speed) + decode`
//!   over a fast link (`datacenter_target_speed`, 2.5 Gbit/s by default): the fastest choice
//!   that keeps up with it.
//! * **Hybrid**: the same for the configured or measured `bandwidth`; a slow link makes bytes
//!   dominate, a fast one makes speed dominate, and the choice moves with it.
//! * **Internet**: bytes on the wire, scaled by how far the encode speed falls below the CPU
//!   budget (`internet_min_speed`, 20 MB/s): ratio first; `internet_target_ratio` lets the faster
//!   choice win once a good-enough ratio is reached.
//!
//! The costs are smooth in the measured times on purpose: a hard speed threshold would let
//! timer noise, not the data, decide between choices near it.
//!
//! # Learning
//!
//! [`StaticSelector`] estimates ratio and speed from a parametric prior ([`Profile`] features,
//! per-codec speeds, a per-call overhead). [`LearningSelector`] learns, per profile bucket and
//! choice, *corrections* to that prior: moving averages in log space of observed / predicted
//! ratio, encode and decode time. Blocks differ far more in difficulty than choices differ from
//! each other; corrections cancel what the prior explains, so choices tried on different blocks
//! stay comparable, slow outliers weigh little, and what one bucket learned transfers to others
//! (per size band) and between choices. A bucket's correction is shrunk towards the transferred
//! one while it rests on few samples. A choice not yet tried in a bucket is made `exploration`
//! more attractive (optimistic initialisation, less when transferred measurements exist), so
//! only choices that could plausibly win are tried; with probability `epsilon` a random choice
//! within 1.5 times the best estimate is tried, and averages move with every outcome, so the
//! selector follows drifting data. Given the same seed and outcomes it makes the same choices.
//! Its statistics sit behind one mutex (`hde_sync`, loom-checked); a choice costs well under
//! a microsecond.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use hde_selector::{Context, LearningSelector, NetworkMode, Outcome, Profile, Selector, SelectorConfig};
//!
//! let selector = LearningSelector::new(SelectorConfig { mode: NetworkMode::Internet, ..SelectorConfig::default() })?;
//! let block: Vec<u8> = (0..1u32 << 16).map(|i| (i % 13) as u8).collect();
//! let choice = selector.choose(&Profile::of(&block, 4096), &Context::default());
//! // Run the choice, then tell the selector how it went: it learns per kind of data.
//! let outcome = Outcome { input_bytes: 65536, output_bytes: 900, encode: Duration::from_micros(400), decode: None };
//! selector.observe(&choice, &outcome);
//! # Ok::<(), hde_selector::Error>(())
//! ```

mod choice;
mod config;
mod error;
mod model;
mod profile;
mod select;

pub use crate::choice::{uses_reference, Bucket, Choice, Context, Outcome, Ticket, DEFAULT_CODECS};
pub use crate::config::{NetworkMode, SelectorConfig};
pub use crate::error::{Error, Result};
pub use crate::model::outcome_cost;
pub use crate::profile::Profile;
pub use crate::select::{bucket, LearningSelector, Selector, StaticSelector};
pub use hde_codec::{CodecSpec, ZstdParams};
