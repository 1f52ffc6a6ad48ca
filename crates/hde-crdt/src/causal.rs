//! Dots, version vectors and causal contexts: what a replica has seen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A replica's identity. Distinct replicas must have distinct ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// One event: the `counter`-th write of `node` (counters start at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who wrote.
    pub node: NodeId,
    /// The writer's event number, from 1.
    pub counter: u64,
}

/// A version vector: per node, every event up to this counter has been seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VClock {
    seen: BTreeMap<NodeId, u64>,
}

impl VClock {
    /// The empty clock.
    pub fn new() -> Self {
        VClock::default()
    }

    /// Events of `node` seen (all of 1..=n).
    pub fn get(&self, node: NodeId) -> u64 {
        self.seen.get(&node).copied().unwrap_or(0)
    }

    /// Whether `dot` is covered.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.get(dot.node)
    }

    /// Pointwise maximum.
    pub fn merge(&mut self, other: &VClock) {
        for (&node, &n) in &other.seen {
            let mine = self.seen.entry(node).or_insert(0);
            *mine = (*mine).max(n);
        }
    }

    /// Every (node, counter) pair.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.seen.iter().map(|(&n, &c)| (n, c))
    }

    /// True if this clock has seen everything `other` has.
    pub fn dominates(&self, other: &VClock) -> bool {
        other.seen.iter().all(|(&n, &c)| self.get(n) >= c)
    }

    pub(crate) fn set(&mut self, node: NodeId, counter: u64) {
        if counter == 0 {
            self.seen.remove(&node);
        } else {
            self.seen.insert(node, counter);
        }
    }
}

impl PartialOrd for VClock {
    /// Causal order: `Less` if `other` has seen strictly more, `None` if concurrent.
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        use std::cmp::Ordering::*;
        match (self.dominates(other), other.dominates(self)) {
            (true, true) => Some(Equal),
            (true, false) => Some(Greater),
            (false, true) => Some(Less),
            (false, false) => None,
        }
    }
}

/// What a replica has seen: a version vector plus the dots seen out of order (the "dot
/// cloud"), folded into the vector as soon as they become contiguous.
///
/// Removes leave no tombstone payload: a removed key's dots simply stay covered here. With
/// contiguous delivery the cloud is empty and the context costs one counter per node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CausalContext {
    clock: VClock,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// The empty context.
    pub fn new() -> Self {
        CausalContext::default()
    }

    /// The contiguous part.
    pub fn clock(&self) -> &VClock {
        &self.clock
    }

    /// Dots seen out of order (waiting for the gap before them).
    pub fn cloud(&self) -> &BTreeSet<Dot> {
        &self.cloud
    }

    /// Whether `dot` has been seen.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.clock.contains(dot) || self.cloud.contains(dot)
    }

    /// The next dot of `node` (assumes `node`'s own events are seen contiguously, as they are
    /// on `node` itself).
    pub fn next_dot(&self, node: NodeId) -> Dot {
        Dot { node, counter: self.clock.get(node) + 1 }
    }

    /// Records `dot` as seen.
    pub fn insert(&mut self, dot: Dot) {
        if !self.clock.contains(&dot) {
            self.cloud.insert(dot);
            self.compact();
        }
    }

    /// Union with `other`.
    pub fn merge(&mut self, other: &CausalContext) {
        self.clock.merge(&other.clock);
        for dot in &other.cloud {
            if !self.clock.contains(dot) {
                self.cloud.insert(*dot);
            }
        }
        self.compact();
    }

    /// Folds cloud dots that became contiguous into the clock; drops covered ones.
    fn compact(&mut self) {
        let clock = &mut self.clock;
        self.cloud.retain(|dot| {
            let have = clock.get(dot.node);
            if dot.counter <= have {
                false
            } else if dot.counter == have + 1 {
                clock.set(dot.node, dot.counter);
                false
            } else {
                true
            }
        });
        // One pass folds a run only if it is visited in order, which BTreeSet iteration
        // guarantees per node (ascending counters).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(node: u64, counter: u64) -> Dot {
        Dot { node: NodeId(node), counter }
    }

    #[test]
    fn cloud_folds_when_the_gap_closes() {
        let mut cc = CausalContext::new();
        cc.insert(dot(1, 3));
        cc.insert(dot(1, 2));
        assert!(cc.contains(&dot(1, 3)) && !cc.contains(&dot(1, 1)));
        assert_eq!(cc.clock().get(NodeId(1)), 0);
        cc.insert(dot(1, 1));
        assert_eq!(cc.clock().get(NodeId(1)), 3);
        assert!(cc.cloud().is_empty());
    }

    #[test]
    fn clock_order() {
        let mut a = VClock::new();
        let mut b = VClock::new();
        a.set(NodeId(1), 2);
        b.set(NodeId(1), 1);
        assert!(a > b);
        b.set(NodeId(2), 1);
        assert_eq!(a.partial_cmp(&b), None);
        a.merge(&b);
        assert!(a > b);
    }
}
