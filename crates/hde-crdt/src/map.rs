//! The observed-remove map of last-writer-wins registers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire;
use crate::{CausalContext, Dot, Error, LwwReg, NodeId, Result};

/// One write of a key's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Write<V> {
    /// The writer's timestamp (e.g. milliseconds of wall time); orders concurrent writes.
    pub timestamp: u64,
    /// The value written.
    pub value: V,
}

/// The writes of one key nobody has overwritten, sorted by dot (almost always one).
pub(crate) type Writes<V> = Vec<(Dot, Write<V>)>;

/// Counters of merges (the seed system's `crdt_merges` and `conflict_free_count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Merges (full or delta) applied.
    pub merges: u64,
    /// Merges after which no key held concurrent writes.
    pub conflict_free: u64,
    /// Keys whose concurrent writes were resolved by last-writer-wins.
    pub lww_resolved: u64,
}

/// An observed-remove map (add wins) from `K` to a last-writer-wins register of `V`.
///
/// Each key holds the writes nobody has overwritten yet, each tagged with its [`Dot`]; the
/// visible value is the greatest by `(timestamp, writer, counter)`, a total order, so replicas
/// never diverge on a tie. A write that causally follows another replaces it whatever the
/// timestamps say (a skewed clock cannot resurrect an overwritten value). A remove deletes the
/// key's writes and keeps only their dots in the causal context: no payload tombstone. An
/// update concurrent with a remove survives it (add wins).
///
/// `merge` (full state) and `merge_delta` never fail; every mutation returns its delta, a small
/// state that joins into any replica. Decoding a peer's bytes is the fallible, separate step
/// ([`ORMap::from_bytes`]).
#[derive(Debug, Clone)]
pub struct ORMap<K: Ord, V> {
    pub(crate) entries: BTreeMap<K, Writes<V>>,
    pub(crate) context: CausalContext,
    stats: MergeStats,
}

impl<K: Ord, V> Default for ORMap<K, V> {
    fn default() -> Self {
        ORMap { entries: BTreeMap::new(), context: CausalContext::new(), stats: MergeStats::default() }
    }
}

/// Equality of replicated state (statistics are local and not compared).
impl<K: Ord, V: PartialEq> PartialEq for ORMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.context == other.context
    }
}

impl<K: Ord, V: Eq> Eq for ORMap<K, V> {}

/// A delta: the keys a mutation (or several) touched, with their surviving writes (possibly
/// none: a remove), and the dots it covers.
///
/// Applying it touches only its keys, so it costs in proportion to its size, not the map's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta<K: Ord, V> {
    pub(crate) entries: BTreeMap<K, Writes<V>>,
    pub(crate) context: CausalContext,
}

impl<K: Ord, V> Default for Delta<K, V> {
    fn default() -> Self {
        Delta { entries: BTreeMap::new(), context: CausalContext::new() }
    }
}

/// The join of one key's write sets (each sorted by dot): a dot survives if both sides hold
/// it, or if the side that lacks it has not seen it.
fn join_writes<V: Clone>(
    mine: Writes<V>,
    my_context: &CausalContext,
    theirs: &[(Dot, Write<V>)],
    their_context: &CausalContext,
) -> Writes<V> {
    let mut out = Vec::with_capacity(mine.len().max(theirs.len()));
    let mut theirs = theirs.iter().peekable();
    for (dot, w) in mine {
        while let Some((td, tw)) = theirs.next_if(|(td, _)| *td < dot) {
            if !my_context.contains(td) {
                out.push((*td, tw.clone()));
            }
        }
        let both = theirs.next_if(|(td, _)| *td == dot).is_some();
        if both || !their_context.contains(&dot) {
            out.push((dot, w));
        }
    }
    for (td, tw) in theirs {
        if !my_context.contains(td) {
            out.push((*td, tw.clone()));
        }
    }
    out
}

/// True if joining changes nothing for a key only this side holds.
fn survives<V>(mine: &[(Dot, Write<V>)], their_context: &CausalContext) -> bool {
    mine.iter().all(|(d, _)| !their_context.contains(d))
}

/// Joins (`theirs`, `their_context`) into `mine` for every key of either side (`all`) or for
/// the keys of `theirs` only (a delta). Keys left without writes are dropped unless
/// `keep_empty` (a delta keeps them as the record that it removes them). Returns the number of
/// keys left with concurrent writes.
fn join_maps<K: Ord + Clone, V: Clone + PartialEq>(
    mine: &mut BTreeMap<K, Writes<V>>,
    my_context: &CausalContext,
    theirs: &BTreeMap<K, Writes<V>>,
    their_context: &CausalContext,
    all: bool,
    keep_empty: bool,
) -> u64 {
    let mut conflicts = 0;
    let mut settle = |key: K, joined: Writes<V>, out: &mut Vec<(K, Writes<V>)>| {
        if joined.len() > 1 {
            conflicts += 1;
        }
        if !joined.is_empty() || keep_empty {
            out.push((key, joined));
        }
    };
    if !all {
        // A delta: look up its keys one by one.
        let mut out = Vec::new();
        for (key, their_writes) in theirs {
            let my_writes = mine.remove(key).unwrap_or_default();
            let joined = join_writes(my_writes, my_context, their_writes, their_context);
            settle(key.clone(), joined, &mut out);
        }
        mine.extend(out);
        return conflicts;
    }
    // A full state: one merge-join over both sorted maps, moving our entries, cloning theirs
    // only where they bring something, then a bulk build from sorted input.
    let old = std::mem::take(mine);
    let mut out = Vec::with_capacity(old.len().max(theirs.len()));
    let mut theirs_iter = theirs.iter().peekable();
    for (key, my_writes) in old {
        while let Some((tk, tw)) = theirs_iter.next_if(|(tk, _)| **tk < key) {
            let joined: Writes<V> = tw.iter().filter(|(d, _)| !my_context.contains(d)).cloned().collect();
            settle(tk.clone(), joined, &mut out);
        }
        match theirs_iter.next_if(|(tk, _)| **tk == key) {
            Some((_, tw)) if *tw == my_writes => settle(key, my_writes, &mut out),
            Some((_, tw)) => settle(key, join_writes(my_writes, my_context, tw, their_context), &mut out),
            None if survives(&my_writes, their_context) => settle(key, my_writes, &mut out),
            None => {
                let joined = join_writes(my_writes, my_context, &[], their_context);
                settle(key, joined, &mut out);
            }
        }
    }
    for (tk, tw) in theirs_iter {
        let joined: Writes<V> = tw.iter().filter(|(d, _)| !my_context.contains(d)).cloned().collect();
        settle(tk.clone(), joined, &mut out);
    }
    *mine = out.into_iter().collect();
    conflicts
}

fn visible<V>(writes: &[(Dot, Write<V>)]) -> Option<&Write<V>> {
    writes.iter().max_by_key(|(dot, w)| (w.timestamp, dot.node, dot.counter)).map(|(_, w)| w)
}

impl<K: Ord + Clone, V: Clone + PartialEq> Delta<K, V> {
    /// Joins another delta into this one (deltas can be batched before sending).
    pub fn join(&mut self, other: &Delta<K, V>) {
        join_maps(&mut self.entries, &self.context, &other.entries, &other.context, false, true);
        self.context.merge(&other.context);
    }

    /// Keys touched.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if it touches no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> ORMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        ORMap::default()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).and_then(|w| visible(w)).map(|w| &w.value)
    }

    /// The current value of `key` with its timestamp.
    pub fn get_write(&self, key: &K) -> Option<&Write<V>> {
        self.entries.get(key).and_then(|w| visible(w))
    }

    /// The current value of `key` as a last-writer-wins register (value, timestamp, writer).
    pub fn register(&self, key: &K) -> Option<LwwReg<V>> {
        let writes = self.entries.get(key)?;
        let (dot, w) = writes.iter().max_by_key(|(dot, w)| (w.timestamp, dot.node, dot.counter))?;
        Some(LwwReg { value: w.value.clone(), timestamp: w.timestamp, node: dot.node })
    }

    /// Number of keys present.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no key is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keys and current values, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.entries.iter().filter_map(|(k, w)| visible(w).map(|w| (k, &w.value)))
    }

    /// What this replica has seen.
    pub fn context(&self) -> &CausalContext {
        &self.context
    }

    /// Merge counters of this replica.
    pub fn stats(&self) -> MergeStats {
        self.stats
    }

    /// Writes `value` at `key` as replica `node` at `timestamp`; returns the delta.
    ///
    /// The write replaces every write of the key this replica has seen.
    pub fn update(&mut self, node: NodeId, key: K, value: V, timestamp: u64) -> Delta<K, V> {
        let dot = self.context.next_dot(node);
        let mut delta = Delta::default();
        if let Some(old) = self.entries.get(&key) {
            for (d, _) in old {
                delta.context.insert(*d);
            }
        }
        delta.context.insert(dot);
        let writes = vec![(dot, Write { timestamp, value })];
        delta.entries.insert(key.clone(), writes.clone());
        self.entries.insert(key, writes);
        self.context.insert(dot);
        delta
    }

    /// Removes `key` (the writes this replica has seen of it) as replica `node`; returns the
    /// delta.
    ///
    /// The remove is an event of its own: it takes a fresh dot of `node` into the context
    /// (with no payload), so a replica that removed a key never has the same context as one
    /// that still holds it, and comparing contexts sees removes.
    pub fn remove(&mut self, node: NodeId, key: &K) -> Delta<K, V> {
        let mut delta = Delta::default();
        let Some(old) = self.entries.remove(key) else { return delta };
        for (d, _) in old {
            delta.context.insert(d);
        }
        let event = self.context.next_dot(node);
        self.context.insert(event);
        delta.context.insert(event);
        delta.entries.insert(key.clone(), Vec::new());
        delta
    }

    /// Joins a full replica state into this one. Never fails.
    pub fn merge(&mut self, other: &ORMap<K, V>) {
        let conflicts = join_maps(&mut self.entries, &self.context, &other.entries, &other.context, true, false);
        self.finish_join(&other.context, conflicts);
    }

    /// Joins a delta into this one, touching only the delta's keys. Never fails.
    pub fn merge_delta(&mut self, delta: &Delta<K, V>) {
        let conflicts = join_maps(&mut self.entries, &self.context, &delta.entries, &delta.context, false, false);
        self.finish_join(&delta.context, conflicts);
    }

    fn finish_join(&mut self, context: &CausalContext, conflicts: u64) {
        self.context.merge(context);
        self.stats.merges += 1;
        self.stats.lww_resolved += conflicts;
        if conflicts == 0 {
            self.stats.conflict_free += 1;
        }
    }

    /// The whole state as a delta (to bootstrap a replica through the delta path).
    pub fn to_delta(&self) -> Delta<K, V> {
        Delta { entries: self.entries.clone(), context: self.context.clone() }
    }
}

/// Limits applied to a peer's bytes before and after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes accepted (checked before decoding).
    pub max_bytes: usize,
    /// Most keys accepted.
    pub max_entries: usize,
    /// Most concurrent writes per key.
    pub max_writes_per_key: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 256 << 20, max_entries: 10_000_000, max_writes_per_key: 1024 }
    }
}

/// Checks a decoded state or delta: limits, non-zero counters, sorted write sets, every write
/// covered by the context. Linear: one context lookup per dot.
pub(crate) fn check<K: Ord, V>(
    entries: &BTreeMap<K, Writes<V>>,
    context: &CausalContext,
    limits: &Limits,
    full: bool,
) -> Result<()> {
    if entries.len() > limits.max_entries {
        return Err(Error::Invalid { reason: "more keys than allowed" });
    }
    if context.cloud().iter().any(|d| d.counter == 0) || context.clock().iter().any(|(_, c)| c == 0) {
        return Err(Error::Invalid { reason: "zero counter in the causal context" });
    }
    for writes in entries.values() {
        if full && writes.is_empty() {
            return Err(Error::Invalid { reason: "key without writes in a full state" });
        }
        if writes.len() > limits.max_writes_per_key {
            return Err(Error::Invalid { reason: "more concurrent writes for a key than allowed" });
        }
        if writes.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(Error::Invalid { reason: "writes of a key not sorted by dot" });
        }
        if writes.iter().any(|(d, _)| d.counter == 0 || !context.contains(d)) {
            return Err(Error::Invalid { reason: "write not covered by the causal context" });
        }
    }
    Ok(())
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], limits: &Limits) -> Result<T> {
    if bytes.len() > limits.max_bytes {
        return Err(Error::TooLarge { len: bytes.len(), limit: limits.max_bytes });
    }
    // serde caps preallocation from declared lengths, so memory follows the actual input.
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode { reason: e.to_string() })
}

impl<K, V> ORMap<K, V>
where
    K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
    V: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>,
{
    /// Encodes the state with MessagePack, in its compact columnar form (writer indices, delta-coded
    /// counters and timestamps).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&self.entries, &self.context)
    }

    /// Decodes and validates a peer's state.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let (entries, context) = wire::decode(bytes, limits, true)?;
        Ok(ORMap { entries, context, stats: MergeStats::default() })
    }
}

impl<K, V> Delta<K, V>
where
    K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
    V: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>,
{
    /// Encodes the delta with MessagePack, in its compact columnar form (writer indices, delta-coded
    /// counters and timestamps).
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::encode(&self.entries, &self.context)
    }

    /// Decodes and validates a peer's delta.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let (entries, context) = wire::decode(bytes, limits, false)?;
        Ok(Delta { entries, context })
    }
}
