//! Replicated baseline metadata for HDE: knows nothing of compression.
//!
//! This crate will hold an observed-remove map (add wins) from baseline key to a
//! last-writer-wins register of baseline metadata, built on dots and a causal context, with
//! infallible merge, delta-state export and a bucketed digest for anti-entropy, serialized with
//! serde + rmp-serde (design brief §7). Filled by issue 5.
