//! The compact serialized form of a state or delta.
//!
//! Field by field a state would cost a key, a dot (writer and counter), a timestamp and a value
//! per entry, plus three container headers. Here, still through serde and MessagePack:
//!
//! * `keys` and `values` stay serde sequences (any `K` and `V`);
//! * `multi` lists only the keys whose number of writes is not 1;
//! * `dots` is one byte blob: per write, the writer's index in `nodes` and the counter as a
//!   zig-zag LEB128 delta from that writer's previous counter;
//! * `stamps` is another: per write, the timestamp as a zig-zag LEB128 delta from the previous
//!   write's.
//!
//! Deltas use wrapping arithmetic, so every u64 round-trips exactly. Decoding checks every
//! length and index before use and returns a typed error, never a panic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::map::{check, Write, Writes};
use crate::{CausalContext, Dot, Error, Limits, NodeId, Result};

/// Encodes entries and context (of a state or a delta) in the compact form.
pub(crate) fn encode<K: Ord + Serialize, V: Serialize>(
    entries: &BTreeMap<K, Writes<V>>,
    context: &CausalContext,
) -> Vec<u8> {
    // Serializing plain data into a Vec cannot fail.
    rmp_serde::to_vec(&to_wire(entries, context)).unwrap_or_default()
}

/// Decodes a peer's bytes (size checked first) and validates them as a state (`full`) or a
/// delta.
pub(crate) fn decode<K, V>(bytes: &[u8], limits: &Limits, full: bool) -> Result<(BTreeMap<K, Writes<V>>, CausalContext)>
where
    K: Ord + for<'de> Deserialize<'de>,
    V: for<'de> Deserialize<'de>,
{
    let wire: Wire<K, V> = crate::map::decode(bytes, limits)?;
    let (entries, context) = from_wire(wire, limits)?;
    check(&entries, &context, limits, full)?;
    Ok((entries, context))
}

/// What is written (borrowing the map, nothing cloned).
#[derive(Serialize)]
struct WireRef<'a, K, V> {
    keys: Vec<&'a K>,
    multi: Vec<(u32, u32)>,
    nodes: Vec<NodeId>,
    #[serde(with = "serde_bytes")]
    dots: Vec<u8>,
    #[serde(with = "serde_bytes")]
    stamps: Vec<u8>,
    values: Vec<&'a V>,
    context: &'a CausalContext,
}

/// What is read.
#[derive(Deserialize)]
struct Wire<K, V> {
    keys: Vec<K>,
    multi: Vec<(u32, u32)>,
    nodes: Vec<NodeId>,
    #[serde(with = "serde_bytes")]
    dots: Vec<u8>,
    #[serde(with = "serde_bytes")]
    stamps: Vec<u8>,
    values: Vec<V>,
    context: CausalContext,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(input: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *input.get(*pos).ok_or(Error::Invalid { reason: "varint runs past the end of its column" })?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            if shift == 63 && byte > 1 {
                break;
            }
            return Ok(v);
        }
    }
    Err(Error::Invalid { reason: "varint longer than 64 bits" })
}

/// `current - previous` as a zig-zag varint (wrapping: exact for any u64 pair).
fn put_delta(out: &mut Vec<u8>, previous: u64, current: u64) {
    let d = current.wrapping_sub(previous) as i64;
    put_varint(out, ((d << 1) ^ (d >> 63)) as u64);
}

fn get_delta(input: &[u8], pos: &mut usize, previous: u64) -> Result<u64> {
    let z = get_varint(input, pos)?;
    let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
    Ok(previous.wrapping_add(d as u64))
}

fn to_wire<'a, K: Ord, V>(entries: &'a BTreeMap<K, Writes<V>>, context: &'a CausalContext) -> WireRef<'a, K, V> {
    let mut w = WireRef {
        keys: Vec::with_capacity(entries.len()),
        multi: Vec::new(),
        nodes: Vec::new(),
        dots: Vec::with_capacity(entries.len() * 3),
        stamps: Vec::with_capacity(entries.len() * 2),
        values: Vec::with_capacity(entries.len()),
        context,
    };
    let mut index: BTreeMap<NodeId, usize> = BTreeMap::new();
    let mut last_counter: Vec<u64> = Vec::new();
    let mut last_stamp = 0u64;
    for (i, (key, writes)) in entries.iter().enumerate() {
        w.keys.push(key);
        if writes.len() != 1 {
            w.multi.push((i as u32, writes.len() as u32));
        }
        for (dot, write) in writes {
            let n = *index.entry(dot.node).or_insert_with(|| {
                w.nodes.push(dot.node);
                last_counter.push(0);
                w.nodes.len() - 1
            });
            put_varint(&mut w.dots, n as u64);
            put_delta(&mut w.dots, last_counter[n], dot.counter);
            last_counter[n] = dot.counter;
            put_delta(&mut w.stamps, last_stamp, write.timestamp);
            last_stamp = write.timestamp;
            w.values.push(&write.value);
        }
    }
    w
}

fn from_wire<K: Ord, V>(wire: Wire<K, V>, limits: &Limits) -> Result<(BTreeMap<K, Writes<V>>, CausalContext)> {
    let invalid = |reason| Error::Invalid { reason };
    if wire.keys.len() > limits.max_entries {
        return Err(invalid("more keys than allowed"));
    }
    if wire.keys.windows(2).any(|k| k[0] >= k[1]) {
        return Err(invalid("keys not strictly ascending"));
    }
    // Writes per key: 1 unless listed in `multi` (ascending, in range, within the limit).
    let mut counts = vec![1usize; wire.keys.len()];
    let mut previous: Option<u32> = None;
    for &(i, n) in &wire.multi {
        if previous.is_some_and(|p| p >= i) {
            return Err(invalid("multi-write records not ascending"));
        }
        previous = Some(i);
        let slot = counts.get_mut(i as usize).ok_or(invalid("multi-write record for a key that does not exist"))?;
        if n as usize > limits.max_writes_per_key || n == 1 {
            return Err(invalid("write count of a key out of range"));
        }
        *slot = n as usize;
    }
    let total: usize = counts.iter().sum();
    if total != wire.values.len() {
        return Err(invalid("number of values differs from the number of writes"));
    }
    let mut last_counter = vec![0u64; wire.nodes.len()];
    let (mut dot_pos, mut stamp_pos, mut last_stamp) = (0usize, 0usize, 0u64);
    let mut values = wire.values.into_iter();
    let mut entries = Vec::with_capacity(wire.keys.len());
    for (key, n) in wire.keys.into_iter().zip(counts) {
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            let node_index = usize::try_from(get_varint(&wire.dots, &mut dot_pos)?)
                .map_err(|_| invalid("writer index out of range"))?;
            let node = *wire.nodes.get(node_index).ok_or(invalid("writer index out of range"))?;
            let counter = get_delta(&wire.dots, &mut dot_pos, last_counter[node_index])?;
            last_counter[node_index] = counter;
            let timestamp = get_delta(&wire.stamps, &mut stamp_pos, last_stamp)?;
            last_stamp = timestamp;
            let value = values.next().ok_or(invalid("fewer values than writes"))?;
            writes.push((Dot { node, counter }, Write { timestamp, value }));
        }
        entries.push((key, writes));
    }
    if dot_pos != wire.dots.len() || stamp_pos != wire.stamps.len() {
        return Err(invalid("trailing bytes in a column"));
    }
    Ok((entries.into_iter().collect(), wire.context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_round_trip_any_pair() {
        let mut buf = Vec::new();
        let pairs = [(0u64, 0u64), (0, u64::MAX), (u64::MAX, 0), (5, 3), (3, 5), (1 << 63, 1)];
        for (a, b) in pairs {
            put_delta(&mut buf, a, b);
        }
        let mut pos = 0;
        for (a, b) in pairs {
            assert_eq!(get_delta(&buf, &mut pos, a).unwrap(), b);
        }
        assert_eq!(pos, buf.len());
    }
}
