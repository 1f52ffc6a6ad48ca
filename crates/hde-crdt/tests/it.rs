//! Integration tests of the CRDT: laws, convergence under any delivery, the `crdts` crate's
//! known pitfalls, and hostile peer bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use hde_crdt::{CausalContext, Delta, Dot, Error, Limits, LwwReg, NodeId, ORMap, SyncMessage, Write};
use proptest::prelude::*;

type Map = ORMap<u8, u32>;

#[derive(Debug, Clone)]
enum Op {
    Update { key: u8, value: u32, timestamp: u64 },
    Remove { key: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6, any::<u32>(), 0u64..4).prop_map(|(key, value, timestamp)| Op::Update { key, value, timestamp }),
        1 => (0u8..6).prop_map(|key| Op::Remove { key }),
    ]
}

/// Runs `ops` on a replica of `node`, returning the deltas.
fn apply(map: &mut Map, node: u64, ops: &[Op]) -> Vec<Delta<u8, u32>> {
    ops.iter()
        .map(|op| match op {
            Op::Update { key, value, timestamp } => map.update(NodeId(node), *key, *value, *timestamp),
            Op::Remove { key } => map.remove(NodeId(node), key),
        })
        .collect()
}

/// A replica that did `ops`, after having merged `seen` first (overlapping histories).
fn replica(node: u64, seen: Option<&Map>, ops: &[Op]) -> Map {
    let mut m = Map::new();
    if let Some(s) = seen {
        m.merge(s);
    }
    apply(&mut m, node, ops);
    m
}

fn joined(a: &Map, b: &Map) -> Map {
    let mut x = a.clone();
    x.merge(b);
    x
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn merge_is_commutative_associative_idempotent(
        o1 in prop::collection::vec(op(), 0..12),
        o2 in prop::collection::vec(op(), 0..12),
        o3 in prop::collection::vec(op(), 0..12),
    ) {
        let a = replica(1, None, &o1);
        let b = replica(2, Some(&a), &o2);
        let c = replica(3, None, &o3);
        prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        prop_assert_eq!(joined(&a, &a), a.clone());
        let ab = joined(&a, &b);
        prop_assert_eq!(joined(&ab, &b), ab.clone());
    }

    #[test]
    fn delta_merge_equals_state_merge(
        base in prop::collection::vec(op(), 0..10),
        o1 in prop::collection::vec(op(), 0..12),
        o2 in prop::collection::vec(op(), 0..12),
    ) {
        let origin = replica(1, None, &base);
        let mut a = origin.clone();
        let deltas = apply(&mut a, 1, &o1);
        let b0 = replica(2, Some(&origin), &o2);
        let mut by_state = b0.clone();
        by_state.merge(&a);
        let mut by_delta = b0.clone();
        for d in &deltas {
            by_delta.merge_delta(d);
        }
        prop_assert_eq!(by_delta, by_state);
        // Batched deltas too.
        let mut batch = Delta::default();
        for d in &deltas {
            batch.join(d);
        }
        let mut by_batch = b0;
        by_batch.merge_delta(&batch);
        prop_assert_eq!(by_batch, joined(&replica(2, Some(&origin), &o2), &a));
    }

    #[test]
    fn replicas_converge_under_any_delivery(
        ops in prop::collection::vec((0u64..4, op()), 1..40),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
    ) {
        // Four replicas; every delta goes to every other replica, in a random order, some
        // twice. Afterwards all states (and so all contexts and values) are equal.
        let mut replicas: Vec<Map> = (0..4).map(|_| Map::new()).collect();
        let mut outbox: Vec<(usize, Delta<u8, u32>)> = Vec::new();
        for (node, op) in &ops {
            let n = *node as usize;
            let d = apply(&mut replicas[n], *node, std::slice::from_ref(op)).remove(0);
            for to in 0..4 {
                if to != n {
                    outbox.push((to, d.clone()));
                }
            }
        }
        let mut delivered = vec![false; outbox.len()];
        for idx in &order {
            if outbox.is_empty() {
                break;
            }
            let i = idx.index(outbox.len());
            replicas[outbox[i].0].merge_delta(&outbox[i].1);
            delivered[i] = true;
        }
        for (i, (to, d)) in outbox.iter().enumerate().rev() {
            if !delivered[i] || i % 3 == 0 {
                replicas[*to].merge_delta(d);
            }
        }
        for r in &replicas[1..] {
            prop_assert_eq!(r, &replicas[0]);
        }
    }

    #[test]
    fn lww_register_merge_is_a_join(
        regs in prop::collection::vec((any::<u8>(), 0u64..3, 0u64..3), 3),
    ) {
        let r: Vec<LwwReg<u8>> = regs.iter().map(|&(v, t, n)| LwwReg::new(v, t, NodeId(n))).collect();
        let join = |a: &LwwReg<u8>, b: &LwwReg<u8>| {
            let mut x = a.clone();
            x.merge(b);
            x
        };
        prop_assert_eq!(join(&r[0], &r[1]), join(&r[1], &r[0]));
        prop_assert_eq!(join(&join(&r[0], &r[1]), &r[2]), join(&r[0], &join(&r[1], &r[2])));
        prop_assert_eq!(join(&r[0], &r[0]), r[0].clone());
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Map::from_bytes(&bytes, &Limits::default());
        let _ = Delta::<u8, u32>::from_bytes(&bytes, &Limits::default());
    }
}

/// Shrunk counterexample: a batch of deltas lost a remove's record of its key, so applying
/// the batch left the key in place.
#[test]
fn batched_delta_keeps_a_remove() {
    let mut origin = Map::new();
    origin.update(NodeId(1), 3, 0, 0);
    let mut a = origin.clone();
    let mut batch = Delta::default();
    batch.join(&a.remove(NodeId(1), &3));
    let mut b = origin.clone();
    b.merge_delta(&batch);
    assert_eq!(b, a);
    assert!(b.get(&3).is_none());
}

#[test]
fn concurrent_update_and_remove_update_wins() {
    let mut a = Map::new();
    a.update(NodeId(1), 7, 100, 1);
    let mut b = a.clone();
    a.remove(NodeId(1), &7);
    b.update(NodeId(2), 7, 200, 0);
    let (ab, ba) = (joined(&a, &b), joined(&b, &a));
    assert_eq!(ab.get(&7), Some(&200));
    assert_eq!(ab, ba);
}

/// `crdts` pitfall: an LWW tie (same timestamp, different values) must not diverge.
#[test]
fn lww_tie_does_not_diverge() {
    let mut a = Map::new();
    let mut b = Map::new();
    a.update(NodeId(1), 1, 111, 5);
    b.update(NodeId(2), 1, 222, 5);
    let (ab, ba) = (joined(&a, &b), joined(&b, &a));
    assert_eq!(ab.get(&1), ba.get(&1));
    assert_eq!(ab.get(&1), Some(&222)); // the higher node id breaks the tie
    assert_eq!(ab.stats().lww_resolved, 1);
    assert_eq!(ab.register(&1), Some(LwwReg::new(222, 5, NodeId(2))));
    // The standalone register agrees, including the same writer at the same timestamp.
    let mut r = LwwReg::new(111, 5, NodeId(1));
    assert!(r.write(222, 5, NodeId(2)));
    assert!(!r.write(1, 5, NodeId(1)));
    let mut s1 = LwwReg::new(1, 5, NodeId(3));
    let s2 = LwwReg::new(2, 5, NodeId(3));
    let mut s3 = s2.clone();
    s1.merge(&s2);
    s3.merge(&LwwReg::new(1, 5, NodeId(3)));
    assert_eq!(s1, s3);
}

/// A causally later write wins even when its timestamp is older (skewed clock).
#[test]
fn causal_overwrite_beats_a_skewed_timestamp() {
    let mut a = Map::new();
    a.update(NodeId(1), 1, 111, 1_000);
    let mut b = a.clone();
    b.update(NodeId(2), 1, 222, 10); // saw 111, overwrote it, with a clock far behind
    assert_eq!(joined(&a, &b).get(&1), Some(&222));
}

/// `crdts` pitfall: a remove that does not show in clock comparison. Here a replica that
/// removed a key never has the context of one that still holds it.
#[test]
fn remove_shows_in_the_context() {
    let mut a = Map::new();
    a.update(NodeId(1), 1, 5, 1);
    let b = a.clone();
    assert_eq!(a.context(), b.context());
    a.remove(NodeId(1), &1);
    assert_ne!(a.context(), b.context());
    assert!(a.context().clock() > b.context().clock());
    // Equal contexts, equal content.
    let merged = joined(&a, &b);
    assert_eq!(merged.context(), joined(&b, &a).context());
    assert_eq!(merged, joined(&b, &a));
    assert!(merged.is_empty());
}

/// `crdts` pitfall: a map value that cannot be an LWW register. Here any `Clone` value is one.
#[test]
fn any_value_type_is_an_lww_register() {
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Baseline {
        holder: String,
        seq: u64,
        checksum: u64,
    }
    let mut m: ORMap<String, Baseline> = ORMap::new();
    m.update(NodeId(1), "vm-1".into(), Baseline { holder: "node-a".into(), seq: 7, checksum: 9 }, 10);
    let bytes = m.to_bytes();
    let back: ORMap<String, Baseline> = ORMap::from_bytes(&bytes, &Limits::default()).unwrap();
    assert_eq!(back, m);
    assert_eq!(back.get(&"vm-1".to_string()).map(|b| b.seq), Some(7));
}

/// `crdts` pitfall: quadratic validation. Validation here is one context lookup per dot; a
/// 200k-key state decodes and validates like any other.
#[test]
fn large_state_validates_linearly() {
    let mut m: ORMap<u32, u64> = ORMap::new();
    for k in 0..200_000u32 {
        m.update(NodeId(u64::from(k % 7)), k, u64::from(k), 1);
    }
    let bytes = m.to_bytes();
    let back: ORMap<u32, u64> = ORMap::from_bytes(&bytes, &Limits::default()).unwrap();
    assert_eq!(back.len(), 200_000);
}

#[test]
fn bad_peer_bytes_are_typed_errors() {
    let limits = Limits { max_bytes: 64, ..Limits::default() };
    let mut m = Map::new();
    for k in 0..50 {
        m.update(NodeId(1), k, 1, 1);
    }
    assert!(matches!(Map::from_bytes(&m.to_bytes(), &limits), Err(Error::TooLarge { .. })));
    assert!(matches!(Map::from_bytes(&[0xc1], &Limits::default()), Err(Error::Decode { .. })));
    // A write whose dot the context does not cover, forged in the wire layout (a struct
    // encodes as the array of its fields): keys, multi, nodes, dots, stamps, values, context.
    // Dots: writer index 0, counter delta +1 (zig-zag 2); stamps: +5 (zig-zag 10).
    let forged = rmp_serde::to_vec(&(
        vec![3u8],
        Vec::<(u32, u32)>::new(),
        vec![NodeId(1)],
        serde_bytes::ByteBuf::from(vec![0u8, 2]),
        serde_bytes::ByteBuf::from(vec![10u8]),
        vec![4u32],
        CausalContext::new(),
    ))
    .unwrap();
    assert!(matches!(Map::from_bytes(&forged, &Limits::default()), Err(Error::Invalid { .. })));
    // The same with a context that covers the write decodes.
    let mut covering = CausalContext::new();
    covering.insert(Dot { node: NodeId(1), counter: 1 });
    let good = rmp_serde::to_vec(&(
        vec![3u8],
        Vec::<(u32, u32)>::new(),
        vec![NodeId(1)],
        serde_bytes::ByteBuf::from(vec![0u8, 2]),
        serde_bytes::ByteBuf::from(vec![10u8]),
        vec![4u32],
        covering,
    ))
    .unwrap();
    let decoded = Map::from_bytes(&good, &Limits::default()).unwrap();
    assert_eq!(decoded.get_write(&3), Some(&Write { timestamp: 5, value: 4 }));
    // Columns that run short, writer indices out of range, keys out of order: typed errors.
    for (dots, stamps, keys) in [
        (vec![0u8], vec![10u8], vec![3u8]),
        (vec![7u8, 2], vec![10u8], vec![3u8]),
        (vec![0u8, 2, 9], vec![10u8], vec![3u8]),
    ] {
        let bad = rmp_serde::to_vec(&(
            keys,
            Vec::<(u32, u32)>::new(),
            vec![NodeId(1)],
            serde_bytes::ByteBuf::from(dots),
            serde_bytes::ByteBuf::from(stamps),
            vec![4u32],
            CausalContext::new(),
        ))
        .unwrap();
        assert!(matches!(Map::from_bytes(&bad, &Limits::default()), Err(Error::Invalid { .. })));
    }
    let tight = Limits { max_entries: 10, ..Limits::default() };
    assert!(matches!(Map::from_bytes(&m.to_bytes(), &tight), Err(Error::Invalid { .. })));
}

#[test]
fn stats_count_merges_and_conflicts() {
    let mut a = Map::new();
    let mut b = Map::new();
    a.update(NodeId(1), 1, 1, 1);
    b.update(NodeId(2), 2, 2, 1);
    a.merge(&b);
    assert_eq!(a.stats().merges, 1);
    assert_eq!(a.stats().conflict_free, 1);
    b.update(NodeId(2), 1, 9, 2);
    a.update(NodeId(1), 1, 8, 3);
    a.merge(&b);
    assert_eq!(a.stats().merges, 2);
    assert_eq!(a.stats().lww_resolved, 1);
    assert_eq!(a.get(&1), Some(&8));
}

/// Runs a whole sync exchange between `a` (initiator) and `b` through encoded bytes; returns
/// the bytes exchanged.
fn sync<K, V>(a: &mut ORMap<K, V>, b: &mut ORMap<K, V>) -> usize
where
    K: Ord + Clone + serde::Serialize + for<'de> serde::Deserialize<'de>,
    V: Clone + PartialEq + serde::Serialize + for<'de> serde::Deserialize<'de>,
{
    let mut message = a.sync_start();
    let mut to_b = true;
    let mut total = 0;
    for _ in 0..8 {
        let bytes = message.to_bytes();
        total += bytes.len();
        let received = SyncMessage::from_bytes(&bytes, &Limits::default()).unwrap();
        let reply = if to_b { b.sync_handle(&received) } else { a.sync_handle(&received) };
        to_b = !to_b;
        match reply {
            Some(r) => message = r,
            None => return total,
        }
    }
    panic!("sync did not end in 8 messages");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn digest_sync_reaches_the_full_join(
        base in prop::collection::vec(op(), 0..20),
        o1 in prop::collection::vec(op(), 0..20),
        o2 in prop::collection::vec(op(), 0..20),
    ) {
        let origin = replica(3, None, &base);
        let mut a = replica(1, Some(&origin), &o1);
        let mut b = replica(2, Some(&origin), &o2);
        let expected = joined(&a, &b);
        sync(&mut a, &mut b);
        prop_assert_eq!(&a, &expected);
        prop_assert_eq!(&b, &expected);
        prop_assert_eq!(a.digest(), b.digest());
    }
}

#[test]
fn digest_ignores_insertion_order() {
    let mut up: ORMap<u32, u32> = ORMap::new();
    let mut down: ORMap<u32, u32> = ORMap::new();
    for k in 0..1000u32 {
        up.update(NodeId(1), k, k * 3, 7);
    }
    let mut writes = Vec::new();
    for k in (0..1000u32).rev() {
        writes.push(down.update(NodeId(9), k, k * 3, 7));
    }
    // Same keys and values, different writers: different digests; same writer and dots:
    // same digest whatever the order.
    assert_ne!(up.digest(), down.digest());
    let mut replay: ORMap<u32, u32> = ORMap::new();
    for d in writes.iter().rev() {
        replay.merge_delta(d);
    }
    assert_eq!(replay.digest(), down.digest());
}

/// With 100k entries on each side and 10 differing, a sync moves at most 1 % of the state.
#[test]
fn sync_of_few_differences_is_cheap() {
    let mut a: ORMap<u64, (u64, u64)> = ORMap::new();
    for k in 0..100_000u64 {
        a.update(NodeId(1), k, (k, k * 7), 1_000 + k);
    }
    let mut b = a.clone();
    for k in 0..5u64 {
        a.update(NodeId(1), k * 10_007, (1, 1), 5_000_000);
        b.update(NodeId(2), 50_000 + k * 7_919, (2, 2), 5_000_000);
    }
    let full = a.to_bytes().len();
    let mut expected = a.clone();
    expected.merge(&b);
    let exchanged = sync(&mut a, &mut b);
    assert_eq!(a, expected);
    assert_eq!(b, expected);
    assert!(exchanged * 100 <= full, "exchanged {exchanged} of {full} bytes");
}

/// Replicas that agree settle in one message; a difference only in the contexts (a remove
/// of a key the other side never held) still takes the whole exchange.
#[test]
fn agreeing_replicas_sync_in_one_message() {
    let mut a: ORMap<u64, u64> = ORMap::new();
    for k in 0..1000u64 {
        a.update(NodeId(1 + k % 50), k, k, 1_000 + k);
    }
    let mut b = a.clone();
    let one_message = a.sync_start().to_bytes().len();
    assert_eq!(sync(&mut a, &mut b), one_message);
    assert!(one_message < 700, "{one_message} bytes");

    // b saw a write of key 5000 by node 60 and its remove; a saw neither: same entries,
    // different contexts.
    b.update(NodeId(60), 5000, 1, 9_000);
    b.remove(NodeId(60), &5000);
    assert_eq!(a.digest(), b.digest());
    assert!(sync(&mut a, &mut b) > one_message);
    assert_eq!(a, b);
    assert_eq!(sync(&mut a, &mut b), one_message);
}
