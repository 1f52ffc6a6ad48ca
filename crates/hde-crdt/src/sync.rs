//! Anti-entropy by digest: two replicas find the keys where they differ and exchange only
//! those.
//!
//! Keys fall into [`LEAVES`] leaves by the xxh3 of their MessagePack encoding; a leaf's hash
//! is the wrapping sum of its entries' xxh3-64 hashes (key, dots, timestamps, values), so it
//! depends neither on iteration order nor on the process (xxh3 has no random seed); leaves
//! form [`GROUPS`] groups. A sync is at most four messages:
//!
//! 1. `Groups`: the initiator's 64 group hashes and a hash of its causal context; a
//!    responder whose own are the same ends the exchange there (replicas that agree, the
//!    usual case between updates, cost one message of about 600 bytes);
//! 2. `Leaves`: the groups that differ, with the responder's leaf hashes in them;
//! 3. `Entries`: the leaves that differ, the initiator's entries in them and its context;
//! 4. `Entries`: the responder, having joined, sends its own for the same leaves.
//!
//! Joining only the differing leaves, plus the whole context, equals the full join: outside
//! those leaves both replicas hold the same entries. Contexts travel in full (one counter per
//! node), so removes that left no entry anywhere still propagate.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::map::{check, decode, Writes};
use crate::{Delta, Limits, ORMap, Result};

/// Leaves of the digest.
pub const LEAVES: usize = 4096;
/// Groups of leaves.
pub const GROUPS: usize = 64;
const PER_GROUP: usize = LEAVES / GROUPS;

/// The digest of a replica: leaf hashes and group hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    leaves: Vec<u64>,
    groups: Vec<u64>,
}

impl Digest {
    /// Group hashes, in order.
    pub fn groups(&self) -> &[u64] {
        &self.groups
    }

    /// Leaf hashes, in order.
    pub fn leaves(&self) -> &[u64] {
        &self.leaves
    }
}

/// One message of a sync exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Ord + Clone + Serialize + serde::de::DeserializeOwned, V: Clone + PartialEq + Serialize + serde::de::DeserializeOwned",
    deserialize = "K: Ord + Clone + Serialize + serde::de::DeserializeOwned, V: Clone + PartialEq + Serialize + serde::de::DeserializeOwned"
))]
pub enum SyncMessage<K: Ord, V> {
    /// Step 1: the initiator's group hashes and the hash of its causal context.
    Groups {
        /// The group hashes of the digest, in order.
        groups: Vec<u64>,
        /// xxh3-64 of the context's MessagePack encoding.
        context: u64,
    },
    /// Step 2: differing groups with the responder's leaf hashes in each.
    Leaves(Vec<(u16, Vec<u64>)>),
    /// Steps 3 and 4: entries of the differing leaves, and the sender's whole context, as a
    /// delta (in its compact encoding).
    Entries {
        /// The leaves covered.
        leaves: Vec<u16>,
        /// The sender's entries in those leaves, with its whole context.
        #[serde(with = "compact")]
        delta: Delta<K, V>,
        /// Step 3 (the receiver answers with its own entries) or step 4 (the last message).
        last: bool,
    },
}

fn leaf_of<K: Serialize>(key: &K) -> usize {
    let bytes = rmp_serde::to_vec(key).unwrap_or_default();
    (xxh3_64(&bytes) >> 52) as usize // top 12 bits: 4096 leaves
}

fn entry_hash<K: Serialize, V: Serialize>(key: &K, writes: &Writes<V>) -> u64 {
    let bytes = rmp_serde::to_vec(&(key, writes)).unwrap_or_default();
    xxh3_64(&bytes)
}

/// Serde adapter: a delta inside a message goes in its compact byte form.
mod compact {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::{Delta, Limits};

    pub(super) fn serialize<K, V, S>(delta: &Delta<K, V>, s: S) -> Result<S::Ok, S::Error>
    where
        K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
        V: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>,
        S: Serializer,
    {
        serde_bytes::Bytes::new(&delta.to_bytes()).serialize(s)
    }

    pub(super) fn deserialize<'de, K, V, D>(d: D) -> Result<Delta<K, V>, D::Error>
    where
        K: Ord + Clone + Serialize + for<'a> Deserialize<'a>,
        V: Clone + PartialEq + Serialize + for<'a> Deserialize<'a>,
        D: Deserializer<'de>,
    {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?;
        Delta::from_bytes(&bytes, &Limits::default()).map_err(serde::de::Error::custom)
    }
}

impl<K, V> ORMap<K, V>
where
    K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
    V: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>,
{
    /// The digest of this replica's entries.
    pub fn digest(&self) -> Digest {
        let mut leaves = vec![0u64; LEAVES];
        for (key, writes) in &self.entries {
            let leaf = &mut leaves[leaf_of(key)];
            *leaf = leaf.wrapping_add(entry_hash(key, writes));
        }
        let groups = leaves
            .chunks(PER_GROUP)
            .map(|g| {
                let bytes: Vec<u8> = g.iter().flat_map(|h| h.to_le_bytes()).collect();
                xxh3_64(&bytes)
            })
            .collect();
        Digest { leaves, groups }
    }

    /// Step 1: the message that starts a sync.
    pub fn sync_start(&self) -> SyncMessage<K, V> {
        SyncMessage::Groups { groups: self.digest().groups, context: self.context_hash() }
    }

    /// A hash of the causal context (equal contexts, equal hashes: the encoding of its sorted
    /// maps is canonical).
    fn context_hash(&self) -> u64 {
        xxh3_64(&rmp_serde::to_vec(&self.context).unwrap_or_default())
    }

    fn entries_of(&self, leaves: &BTreeSet<u16>, last: bool) -> SyncMessage<K, V> {
        let entries = self
            .entries
            .iter()
            .filter(|(k, _)| u16::try_from(leaf_of(*k)).is_ok_and(|l| leaves.contains(&l)))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        let delta = Delta { entries, context: self.context.clone() };
        SyncMessage::Entries { leaves: leaves.iter().copied().collect(), delta, last }
    }

    /// Handles a (validated) message of the other side; returns the reply, if any. Never
    /// fails: a message that makes no sense for this step is answered with nothing.
    pub fn sync_handle(&mut self, message: &SyncMessage<K, V>) -> Option<SyncMessage<K, V>> {
        match message {
            SyncMessage::Groups { groups: theirs, context } => {
                let mine = self.digest();
                let differing: Vec<(u16, Vec<u64>)> = (0..GROUPS)
                    .filter(|&g| theirs.get(g) != Some(&mine.groups[g]))
                    .map(|g| (g as u16, mine.leaves[g * PER_GROUP..(g + 1) * PER_GROUP].to_vec()))
                    .collect();
                if differing.is_empty() && *context == self.context_hash() {
                    return None; // Same entries, same context: nothing to exchange.
                }
                Some(SyncMessage::Leaves(differing))
            }
            SyncMessage::Leaves(groups) => {
                let mine = self.digest();
                let mut leaves = BTreeSet::new();
                for (g, their_leaves) in groups {
                    let g = usize::from(*g);
                    for (i, theirs) in their_leaves.iter().enumerate().take(PER_GROUP) {
                        let leaf = g * PER_GROUP + i;
                        if mine.leaves.get(leaf) != Some(theirs) {
                            leaves.insert(leaf as u16);
                        }
                    }
                }
                // Even with no leaf differing, contexts may (removes that left nothing behind).
                Some(self.entries_of(&leaves, false))
            }
            SyncMessage::Entries { leaves, delta, last } => {
                let leaves: BTreeSet<u16> = leaves.iter().copied().collect();
                // The reply carries this side's entries before the join: the other side joins
                // them with its own, and both arrive at the same state.
                let reply = (!last).then(|| self.entries_of(&leaves, true));
                // Join only the differing leaves: our keys there that the peer lacks are given
                // an empty write set, so the peer's context can remove them.
                let mut restricted = delta.clone();
                for key in self.entries.keys() {
                    if u16::try_from(leaf_of(key)).is_ok_and(|l| leaves.contains(&l))
                        && !restricted.entries.contains_key(key)
                    {
                        restricted.entries.insert(key.clone(), Vec::new());
                    }
                }
                self.merge_delta(&restricted);
                reply
            }
        }
    }
}

impl<K, V> SyncMessage<K, V>
where
    K: Ord + Clone + Serialize + for<'de> Deserialize<'de>,
    V: Clone + PartialEq + Serialize + for<'de> Deserialize<'de>,
{
    /// Encodes the message with MessagePack.
    pub fn to_bytes(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Decodes and validates a peer's message.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self> {
        let message: SyncMessage<K, V> = decode(bytes, limits)?;
        let invalid = |reason| Err(crate::Error::Invalid { reason });
        match &message {
            SyncMessage::Groups { groups, .. } if groups.len() != GROUPS => {
                return invalid("wrong number of group hashes")
            }
            SyncMessage::Leaves(groups) => {
                if groups.len() > GROUPS
                    || groups.iter().any(|(g, l)| usize::from(*g) >= GROUPS || l.len() != PER_GROUP)
                {
                    return invalid("group index or leaf count out of range");
                }
            }
            SyncMessage::Entries { leaves, delta, .. } => {
                if leaves.len() > LEAVES || leaves.iter().any(|l| usize::from(*l) >= LEAVES) {
                    return invalid("leaf index out of range");
                }
                check(&delta.entries, &delta.context, limits, true)?;
            }
            SyncMessage::Groups { .. } => {}
        }
        Ok(message)
    }
}
