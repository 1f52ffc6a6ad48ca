//! Replicated baseline metadata for HDE: knows nothing of compression.
//!
//! Nodes that hold baselines must agree, without coordination, on which node holds which
//! baseline version of which key. [`ORMap`] is an observed-remove map (add wins) from a key to
//! a last-writer-wins register, built as a *delta-state* CRDT on dots and a causal context
//! (Almeida, Shoker, Baquero, "Delta State Replicated Data Types"):
//!
//! * every write carries a [`Dot`] (writer, counter); the [`CausalContext`] records every dot
//!   a replica has seen, as a version vector plus out-of-order dots;
//! * a key keeps the writes nobody overwrote; its value is the greatest by
//!   `(timestamp, writer, counter)`, a total order, so a timestamp tie cannot make replicas
//!   diverge, and a causally later write wins even against a skewed clock;
//! * a remove deletes the key's writes and keeps only their dots in the context: no payload
//!   tombstone, and removes show in the context, so replicas with equal contexts hold equal
//!   content;
//! * `merge` and `merge_delta` never fail; every mutation returns a [`Delta`]; decoding and
//!   validating a peer's bytes is a separate, fallible step with size limits checked first;
//! * anti-entropy by [`Digest`]: a bucketed hash tree over the entries, so two replicas find
//!   the keys where they differ and exchange only those ([`SyncMessage`]).
//!
//! # Garbage
//!
//! Nothing needs collecting in the steady state: removed keys leave no entry, and the context
//! costs one counter per node once delivery is contiguous (dots seen out of order wait in the
//! context's cloud until the gap closes, then fold into the version vector). A node that
//! leaves for good keeps one counter in every context; dropping it is safe only once every
//! replica has seen all its dots (its counter is equal everywhere), which the application
//! decides.
//!
//! # Example
//!
//! Two replicas write concurrently and converge, whichever merges first:
//!
//! ```
//! use hde_crdt::{NodeId, ORMap};
//!
//! let (a, b) = (NodeId(1), NodeId(2));
//! let mut on_a: ORMap<String, u64> = ORMap::new();
//! let mut on_b = on_a.clone();
//! on_a.update(a, "vm-7".into(), 41, 1_000);
//! on_b.update(b, "vm-7".into(), 42, 1_001);
//! on_b.update(b, "vm-9".into(), 7, 1_002);
//! let (mut ab, mut ba) = (on_a.clone(), on_b.clone());
//! ab.merge(&on_b);
//! ba.merge(&on_a);
//! assert_eq!(ab.get(&"vm-7".to_string()), Some(&42)); // the later timestamp wins
//! assert_eq!(ab.iter().collect::<Vec<_>>(), ba.iter().collect::<Vec<_>>());
//! ```

mod causal;
mod error;
mod lww;
mod map;
mod sync;
mod wire;

pub use crate::causal::{CausalContext, Dot, NodeId, VClock};
pub use crate::error::{Error, Result};
pub use crate::lww::LwwReg;
pub use crate::map::{Delta, Limits, MergeStats, ORMap, Write};
pub use crate::sync::{Digest, SyncMessage, GROUPS, LEAVES};
