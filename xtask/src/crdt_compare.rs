//! `cargo xtask crdt-compare`: `hde-crdt` against the `crdts` crate on one workload.
//!
//! Two replicas of 100k entries with overlapping histories (60k shared keys, then 40k new and
//! 5k updated keys on each side), merged and serialized (MessagePack) with each library; then
//! a digest sync between two 100k-entry `hde-crdt` replicas that differ in 10 keys. `crdts`
//! cannot hold last-writer-wins registers in its `Map` (`LWWReg` is not `ResetRemove`), so its
//! side uses the closest type, `Map<K, MVReg<V, A>, A>`.
//!
//! The last line is `merge_speedup=X bytes_ratio=Y sync_bytes_percent=Z`: speedup = crdts merge
//! time / hde merge time (medians of 5), ratio = hde bytes / crdts bytes (merged state), Z =
//! bytes exchanged by the sync as a percentage of the full state.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use crdts::{CmRDT, CvRDT, MVReg};
use hde_crdt::{Limits, NodeId, ORMap, SyncMessage};

type Value = (u64, u64, u64);
type Hde = ORMap<u64, Value>;
type Reference = crdts::Map<u64, MVReg<Value, u64>, u64>;

const SHARED: u64 = 60_000;
const OWN: u64 = 40_000;
const UPDATED: u64 = 5_000;
const RUNS: usize = 5;

fn value(k: u64, round: u64) -> Value {
    (k % 7, round, k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The keys each side writes after the shared history: (new keys, updated shared keys).
fn side_keys(side: u64) -> (std::ops::Range<u64>, impl Iterator<Item = u64>) {
    let start = SHARED + side * OWN;
    (start..start + OWN, (0..UPDATED).map(move |i| i * 11 + side))
}

fn build_hde() -> (Hde, Hde) {
    let mut origin = Hde::new();
    for k in 0..SHARED {
        origin.update(NodeId(0), k, value(k, 0), k);
    }
    let mut sides = [origin.clone(), origin];
    for (side, map) in (1u64..).zip(sides.iter_mut()) {
        let (new, updated) = side_keys(side - 1);
        for k in new.chain(updated) {
            map.update(NodeId(side), k, value(k, side), 1_000_000 + k);
        }
    }
    let [a, b] = sides;
    (a, b)
}

fn reference_write(map: &mut Reference, actor: u64, k: u64, v: Value) {
    let ctx = map.read_ctx().derive_add_ctx(actor);
    let op = map.update(k, ctx, |reg, ctx| reg.write(v, ctx));
    map.apply(op);
}

fn build_reference() -> (Reference, Reference) {
    let mut origin = Reference::new();
    for k in 0..SHARED {
        reference_write(&mut origin, 0, k, value(k, 0));
    }
    let mut sides = [origin.clone(), origin];
    for (side, map) in (1u64..).zip(sides.iter_mut()) {
        let (new, updated) = side_keys(side - 1);
        for k in new.chain(updated) {
            reference_write(map, side, k, value(k, side));
        }
    }
    let [a, b] = sides;
    (a, b)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Merge time (median), merged state and its serialized size, for each library.
fn measure_merges() -> Result<(Duration, usize, usize, Duration, usize, usize)> {
    let (ha, hb) = build_hde();
    let mut hde_times = Vec::new();
    let mut hde_merged = ha.clone();
    for _ in 0..RUNS {
        let mut a = ha.clone();
        let t = Instant::now();
        a.merge(&hb);
        hde_times.push(t.elapsed());
        hde_merged = a;
    }
    let (ra, rb) = build_reference();
    let mut ref_times = Vec::new();
    let mut ref_merged = ra.clone();
    for _ in 0..RUNS {
        let (mut a, b) = (ra.clone(), rb.clone());
        let t = Instant::now();
        a.merge(b);
        ref_times.push(t.elapsed());
        ref_merged = a;
    }
    let hde_bytes = hde_merged.to_bytes().len();
    let ref_bytes = rmp_serde::to_vec(&ref_merged)?.len();
    let ref_len = ref_merged.len().val;
    if hde_merged.len() != ref_len {
        bail!("merged sizes differ: hde {} vs crdts {ref_len}", hde_merged.len());
    }
    Ok((median(hde_times), hde_bytes, hde_merged.len(), median(ref_times), ref_bytes, ref_len))
}

/// Bytes a digest sync exchanges between two 100k-entry replicas differing in 10 keys, and
/// the full state's size.
fn measure_sync() -> Result<(usize, usize)> {
    let mut a = Hde::new();
    for k in 0..100_000u64 {
        a.update(NodeId(1), k, value(k, 0), k);
    }
    let mut b = a.clone();
    for i in 0..5u64 {
        a.update(NodeId(1), i * 10_007, value(i, 9), 9_000_000);
        b.update(NodeId(2), 50_000 + i * 7_919, value(i, 8), 9_000_000);
    }
    let mut expected = a.clone();
    expected.merge(&b);
    let full = a.to_bytes().len();
    let mut message = a.sync_start();
    let mut exchanged = 0;
    let mut to_b = true;
    loop {
        let bytes = message.to_bytes();
        exchanged += bytes.len();
        let received = SyncMessage::from_bytes(&bytes, &Limits::default())?;
        let reply = if to_b { b.sync_handle(&received) } else { a.sync_handle(&received) };
        to_b = !to_b;
        match reply {
            Some(r) => message = r,
            None => break,
        }
    }
    if a != expected || b != expected {
        bail!("sync did not converge");
    }
    Ok((exchanged, full))
}

pub(crate) fn run() -> Result<()> {
    let (hde_time, hde_bytes, hde_len, ref_time, ref_bytes, ref_len) = measure_merges()?;
    let (exchanged, full) = measure_sync()?;
    println!("workload: two replicas, {SHARED} shared keys, +{OWN} new and {UPDATED} updated keys each");
    println!("{:<10} {:>10} {:>14} {:>16}", "library", "entries", "merge (median)", "merged bytes");
    println!("{:<10} {:>10} {:>11.2} ms {:>16}", "hde-crdt", hde_len, hde_time.as_secs_f64() * 1e3, hde_bytes);
    println!("{:<10} {:>10} {:>11.2} ms {:>16}", "crdts", ref_len, ref_time.as_secs_f64() * 1e3, ref_bytes);
    println!("sync: 100k entries a side, 10 differing: {exchanged} bytes exchanged of a {full}-byte state");
    let speedup = ref_time.as_secs_f64() / hde_time.as_secs_f64().max(1e-9);
    let ratio = hde_bytes as f64 / ref_bytes.max(1) as f64;
    let percent = 100.0 * exchanged as f64 / full.max(1) as f64;
    println!("merge_speedup={speedup:.2} bytes_ratio={ratio:.3} sync_bytes_percent={percent:.3}");
    Ok(())
}
