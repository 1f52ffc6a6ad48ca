//! The observed-remove map of last-writer-wins registers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{CausalContext, Dot, Error, NodeId, Result};

/// One write of a key's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Write<V> {
    /// The writer's timestamp (e.g. milliseconds of wall time); orders concurrent writes.
    pub timestamp: u64,
    /// The value written.
    pub value: V,
}

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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ORMap<K: Ord, V> {
    entries: BTreeMap<K, BTreeMap<Dot, Write<V>>>,
    context: CausalContext,
    #[serde(skip)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta<K: Ord, V> {
    entries: BTreeMap<K, BTreeMap<Dot, Write<V>>>,
    context: CausalContext,
}

impl<K: Ord, V> Default for Delta<K, V> {
    fn default() -> Self {
        Delta { entries: BTreeMap::new(), context: CausalContext::new() }
    }
}

impl<K: Ord + Clone, V: Clone> Delta<K, V> {
    /// Joins another delta into this one (deltas can be batched before sending).
    pub fn join(&mut self, other: &Delta<K, V>) {
        let mut conflicts = 0;
        let keys: Vec<K> = other.entries.keys().cloned().collect();
        join_keys(&mut self.entries, &self.context, &other.entries, &other.context, keys, true, &mut conflicts);
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

/// The join of one key's write sets: a dot survives if both sides hold it, or if the side
/// that lacks it has not seen it.
fn join_writes<V: Clone>(
    mine: Option<&BTreeMap<Dot, Write<V>>>,
    my_context: &CausalContext,
    theirs: Option<&BTreeMap<Dot, Write<V>>>,
    their_context: &CausalContext,
) -> BTreeMap<Dot, Write<V>> {
    let mut out = BTreeMap::new();
    if let Some(mine) = mine {
        for (dot, w) in mine {
            if theirs.is_some_and(|t| t.contains_key(dot)) || !their_context.contains(dot) {
                out.insert(*dot, w.clone());
            }
        }
    }
    if let Some(theirs) = theirs {
        for (dot, w) in theirs {
            if !out.contains_key(dot) && !my_context.contains(dot) {
                out.insert(*dot, w.clone());
            }
        }
    }
    out
}

/// Joins `keys` of (`theirs`, `their_context`) into `mine`; counts keys left with concurrent
/// writes in `conflicts`. A state drops keys left without writes; a delta keeps them, as the
/// record that it removes them (`keep_empty`).
#[allow(clippy::too_many_arguments)] // reason: one join, two sides; a struct would only rename them.
fn join_keys<K: Ord + Clone, V: Clone>(
    mine: &mut BTreeMap<K, BTreeMap<Dot, Write<V>>>,
    my_context: &CausalContext,
    theirs: &BTreeMap<K, BTreeMap<Dot, Write<V>>>,
    their_context: &CausalContext,
    keys: impl IntoIterator<Item = K>,
    keep_empty: bool,
    conflicts: &mut u64,
) {
    for key in keys {
        let joined = join_writes(mine.get(&key), my_context, theirs.get(&key), their_context);
        if joined.len() > 1 {
            *conflicts += 1;
        }
        if joined.is_empty() && !keep_empty {
            mine.remove(&key);
        } else {
            mine.insert(key, joined);
        }
    }
}

fn visible<V>(writes: &BTreeMap<Dot, Write<V>>) -> Option<&Write<V>> {
    writes.iter().max_by_key(|(dot, w)| (w.timestamp, dot.node, dot.counter)).map(|(_, w)| w)
}

impl<K: Ord + Clone, V: Clone> ORMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        ORMap::default()
    }

    /// The current value of `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).and_then(visible).map(|w| &w.value)
    }

    /// The current value of `key` with its timestamp.
    pub fn get_write(&self, key: &K) -> Option<&Write<V>> {
        self.entries.get(key).and_then(visible)
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
            for d in old.keys() {
                delta.context.insert(*d);
            }
        }
        delta.context.insert(dot);
        let write = Write { timestamp, value };
        let mut writes = BTreeMap::new();
        writes.insert(dot, write);
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
        for d in old.keys() {
            delta.context.insert(*d);
        }
        let event = self.context.next_dot(node);
        self.context.insert(event);
        delta.context.insert(event);
        delta.entries.insert(key.clone(), BTreeMap::new());
        delta
    }

    /// Joins a full replica state into this one. Never fails.
    pub fn merge(&mut self, other: &ORMap<K, V>) {
        let mut keys: Vec<K> = self.entries.keys().cloned().collect();
        keys.extend(other.entries.keys().filter(|k| !self.entries.contains_key(*k)).cloned());
        self.join(&other.entries, &other.context, keys);
    }

    /// Joins a delta into this one, touching only the delta's keys. Never fails.
    pub fn merge_delta(&mut self, delta: &Delta<K, V>) {
        let keys: Vec<K> = delta.entries.keys().cloned().collect();
        self.join(&delta.entries, &delta.context, keys);
    }

    fn join(&mut self, entries: &BTreeMap<K, BTreeMap<Dot, Write<V>>>, context: &CausalContext, keys: Vec<K>) {
        let mut conflicts = 0;
        join_keys(&mut self.entries, &self.context, entries, context, keys, false, &mut conflicts);
        self.context.merge(context);
        self.stats.merges += 1;
        self.stats.lww_resolved += conflicts;
        if conflicts == 0 {
            self.stats.conflict_free += 1;
        }
    }

    /// The raw entries: each key's surviving writes.
    pub(crate) fn raw_entries(&self) -> &BTreeMap<K, BTreeMap<Dot, Write<V>>> {
        &self.entries
    }

    /// Joins `keys` only of (`entries`, `context`), and the whole context (anti-entropy: the
    /// other keys are known to be equal on both sides).
    pub(crate) fn join_restricted(
        &mut self,
        entries: &BTreeMap<K, BTreeMap<Dot, Write<V>>>,
        context: &CausalContext,
        keys: Vec<K>,
    ) {
        self.join(entries, context, keys);
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

pub(crate) fn check<K: Ord, V>(
    entries: &BTreeMap<K, BTreeMap<Dot, Write<V>>>,
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
        // One lookup per dot: linear in the state, never quadratic.
        if writes.keys().any(|d| d.counter == 0 || !context.contains(d)) {
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
    V: Clone + Serialize + for<'de> Deserialize<'de>,
{
    /// Encodes the state with MessagePack.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing maps of serializable keys and values into a Vec cannot fail.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates a peer's state.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let map: ORMap<K, V> = decode(bytes, limits)?;
        check(&map.entries, &map.context, limits, true)?;
        Ok(map)
    }
}

impl<K, V> Delta<K, V>
where
    K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
    V: Clone + Serialize + for<'de> Deserialize<'de>,
{
    /// Encodes the delta with MessagePack.
    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates a peer's delta.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let delta: Delta<K, V> = decode(bytes, limits)?;
        check(&delta.entries, &delta.context, limits, false)?;
        Ok(delta)
    }
}
