//! A last-writer-wins register on its own.

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A last-writer-wins register: the write with the greatest `(timestamp, node)` wins.
///
/// Equal timestamps never make replicas diverge: the writer's id breaks the tie, and should one
/// writer write two values at the same timestamp, the greater value wins, so `merge` is a join
/// (commutative, associative, idempotent) for every input. Inside an [`ORMap`](crate::ORMap)
/// values behave as these registers, with one refinement: a write that causally follows another
/// replaces it whatever the timestamps say.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LwwReg<V> {
    /// The value.
    pub value: V,
    /// The writer's timestamp.
    pub timestamp: u64,
    /// The writer.
    pub node: NodeId,
}

impl<V: Ord + Clone> LwwReg<V> {
    /// A register holding `value` written by `node` at `timestamp`.
    pub fn new(value: V, timestamp: u64, node: NodeId) -> Self {
        LwwReg { value, timestamp, node }
    }

    /// Writes `value` if `(timestamp, node)` is newer than what the register holds; returns
    /// whether it was taken.
    pub fn write(&mut self, value: V, timestamp: u64, node: NodeId) -> bool {
        let candidate = LwwReg { value, timestamp, node };
        if candidate.key() > self.key() {
            *self = candidate;
            true
        } else {
            false
        }
    }

    /// Keeps the greater of the two writes. Never fails.
    pub fn merge(&mut self, other: &LwwReg<V>) {
        if other.key() > self.key() {
            *self = other.clone();
        }
    }

    fn key(&self) -> (u64, NodeId, &V) {
        (self.timestamp, self.node, &self.value)
    }
}
