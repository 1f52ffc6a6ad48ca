//! The node's shared books: its counters and its replica of the baseline metadata.
//!
//! Every thread that encodes or decodes through one [`Hde`](crate::Hde) writes here, and any
//! thread may read the metrics or export the replica at the same time.
//!
//! Invariants (checked by the loom models below):
//! * an encode's counters are added in one critical section, so a reader sees all of one
//!   frame's figures or none (`frames_encoded`, `bytes_in` and `bytes_out` always agree);
//! * no update is lost: after concurrent encodes, decodes and merges, every counter equals the
//!   sum of what was recorded;
//! * the replica and the counters have separate locks, never held together, so no lock order
//!   exists to get wrong.

use std::collections::BTreeMap;

use hde_crdt::{MergeStats, NodeId, ORMap, SyncMessage};
use hde_delta::ClassCounts;

use crate::index::{BaselineMeta, Holding};
use hde_sync::{lock, Mutex};

/// The counters of one node.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Counters {
    pub(crate) frames_encoded: u64,
    pub(crate) frames_decoded: u64,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) codec_use: BTreeMap<String, u64>,
    pub(crate) pages: ClassCounts,
}

/// One encoded frame, as the counters see it.
pub(crate) struct EncodeRecord<'a> {
    pub(crate) input_bytes: u64,
    pub(crate) output_bytes: u64,
    pub(crate) pages: &'a ClassCounts,
    pub(crate) codecs: &'a [(String, u64)],
}

/// Counters and replica, each behind its own lock.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    counters: Mutex<Counters>,
    replica: Mutex<ORMap<Holding, BaselineMeta>>,
}

impl Ledger {
    /// Adds one encoded frame.
    pub(crate) fn encoded(&self, frame: &EncodeRecord<'_>) {
        let mut c = lock(&self.counters);
        c.frames_encoded += 1;
        c.bytes_in += frame.input_bytes;
        c.bytes_out += frame.output_bytes;
        c.pages.merge(frame.pages);
        for (codec, n) in frame.codecs {
            *c.codec_use.entry(codec.clone()).or_default() += n;
        }
    }

    /// Adds one decoded frame.
    pub(crate) fn decoded(&self) {
        lock(&self.counters).frames_decoded += 1;
    }

    /// Records `meta` for `holding` in the replica as written by `node`, unless the replica
    /// holds the same baseline and sketch already. The write's timestamp is `meta.time_ms`.
    pub(crate) fn record_if_changed(&self, node: u64, holding: Holding, meta: BaselineMeta) {
        let mut replica = lock(&self.replica);
        let same = replica.get(&holding).is_some_and(|m| {
            m.id() == meta.id() && m.sketch == meta.sketch && m.size == meta.size && m.holder == meta.holder
        });
        if !same {
            let timestamp = meta.time_ms;
            replica.update(NodeId(node), holding, meta, timestamp);
        }
    }

    /// Removes `holding` from the replica as `node`.
    pub(crate) fn remove(&self, node: u64, holding: &Holding) {
        let mut replica = lock(&self.replica);
        if replica.get(holding).is_some() {
            replica.remove(NodeId(node), holding);
        }
    }

    /// Merges a peer's replica.
    pub(crate) fn merge(&self, remote: &ORMap<Holding, BaselineMeta>) {
        lock(&self.replica).merge(remote);
    }

    /// The replica, encoded for a peer.
    pub(crate) fn export(&self) -> Vec<u8> {
        lock(&self.replica).to_bytes()
    }

    /// A copy of every entry.
    pub(crate) fn entries(&self) -> Vec<(Holding, BaselineMeta)> {
        lock(&self.replica).iter().map(|(h, m)| (h.clone(), m.clone())).collect()
    }

    /// The first message of an anti-entropy exchange.
    pub(crate) fn sync_start(&self) -> SyncMessage<Holding, BaselineMeta> {
        lock(&self.replica).sync_start()
    }

    /// Handles a peer's anti-entropy message (merging what it carries).
    pub(crate) fn sync_handle(
        &self,
        message: &SyncMessage<Holding, BaselineMeta>,
    ) -> Option<SyncMessage<Holding, BaselineMeta>> {
        lock(&self.replica).sync_handle(message)
    }

    /// A hash of the replica's digest.
    pub(crate) fn digest(&self) -> u64 {
        crate::index::digest(&lock(&self.replica))
    }

    /// A consistent copy of the counters, and the replica's merge statistics.
    pub(crate) fn snapshot(&self) -> (Counters, MergeStats) {
        let merges = lock(&self.replica).stats();
        (lock(&self.counters).clone(), merges)
    }
}

/// Loom models of [`Ledger`] (`cargo xtask loom`): two writers and a reader in every
/// interleaving.
#[cfg(all(test, hde_loom))]
mod loom_models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    fn meta(holder: u64, seq: u64) -> BaselineMeta {
        BaselineMeta {
            holder,
            seq,
            checksum: seq,
            size: 4096,
            codec: String::new(),
            keyframe: seq == 0,
            time_ms: seq * 10,
            sketch: crate::index::Sketch::default(),
        }
    }

    fn vm() -> Holding {
        Holding { key: "vm".into(), node: 0 }
    }

    fn encode(ledger: &Ledger, bytes: u64) {
        let pages = ClassCounts { literal: 1, ..ClassCounts::default() };
        let codecs = [("lz4".to_owned(), 1)];
        ledger.encoded(&EncodeRecord { input_bytes: bytes, output_bytes: bytes / 2, pages: &pages, codecs: &codecs });
    }

    #[test]
    fn loom_counters_lose_nothing_and_readers_see_whole_frames() {
        loom::model(|| {
            let ledger = Arc::new(Ledger::default());
            let writers: Vec<_> = [4096u64, 8192]
                .into_iter()
                .map(|bytes| {
                    let ledger = ledger.clone();
                    thread::spawn(move || {
                        encode(&ledger, bytes);
                        ledger.decoded();
                    })
                })
                .collect();
            // A reader in the middle: every snapshot is a sum of whole frames.
            let (c, _) = ledger.snapshot();
            assert!(matches!((c.frames_encoded, c.bytes_in), (0, 0) | (1, 4096) | (1, 8192) | (2, 12288)));
            assert_eq!(c.bytes_out * 2, c.bytes_in);
            assert_eq!(c.pages.literal, c.frames_encoded);
            for w in writers {
                w.join().unwrap();
            }
            let (c, _) = ledger.snapshot();
            assert_eq!((c.frames_encoded, c.frames_decoded, c.bytes_in, c.bytes_out), (2, 2, 12288, 6144));
            assert_eq!(c.codec_use.get("lz4"), Some(&2));
        });
    }

    #[test]
    fn loom_replica_converges_under_concurrent_records_and_merges() {
        loom::model(|| {
            let a = Arc::new(Ledger::default());
            let b = Arc::new(Ledger::default());
            // Node 1 records on a while node 2 records on b and merges a's export, concurrently.
            let ta = {
                let a = a.clone();
                thread::spawn(move || a.record_if_changed(1, vm(), meta(1, 1)))
            };
            let tb = {
                let (a, b) = (a.clone(), b.clone());
                thread::spawn(move || {
                    b.record_if_changed(2, vm(), meta(2, 2));
                    let remote = ORMap::from_bytes(&a.export(), &hde_crdt::Limits::default()).unwrap();
                    b.merge(&remote);
                })
            };
            ta.join().unwrap();
            tb.join().unwrap();
            // Anti-entropy both ways: both replicas agree, and the later write wins.
            let from_a = ORMap::from_bytes(&a.export(), &hde_crdt::Limits::default()).unwrap();
            let from_b = ORMap::from_bytes(&b.export(), &hde_crdt::Limits::default()).unwrap();
            a.merge(&from_b);
            b.merge(&from_a);
            assert_eq!(a.entries(), vec![(vm(), meta(2, 2))]);
            assert_eq!(b.entries(), vec![(vm(), meta(2, 2))]);
            assert_eq!(a.export(), b.export());
        });
    }
}
