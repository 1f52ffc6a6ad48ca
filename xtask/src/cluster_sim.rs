//! `cargo xtask cluster-sim`: the baseline index's anti-entropy on 10 to 1,000 nodes in one
//! process, to see how it grows past what a machine can run as processes.
//!
//! Every node holds a replica of the index (`hde_core::index::Index`, the type `hde serve`
//! keeps). The updates are what nodes do: a node records a baseline of a VM (a `Holding` of a
//! key by that node, with a page sketch), or drops one (a remove), all before the first period.
//! Then in every period each node, in a random order, starts one exchange with a peer chosen
//! at random: the four-message digest sync of `hde_crdt`, each message encoded to bytes and
//! decoded (with the limits a peer's bytes get) on the other side, exactly as between two
//! `hde serve` processes, where the bytes ride a TLS stream instead of a function call.
//!
//! It prints, per cluster size, the periods until every replica equals every other, the bytes
//! all exchanges carried until then (total and per node), and one replica's encoded size.

use std::time::Instant;

use anyhow::{bail, Result};
use hde_core::index::{BaselineMeta, Holding, Index, Sketch, SKETCH_LEN};
use hde_crdt::{Limits, NodeId, SyncMessage};

/// Arguments of `cargo xtask cluster-sim`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Cluster sizes to simulate, one run each.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 100, 1000])]
    nodes: Vec<usize>,
    /// Baseline updates spread over the nodes (a tenth of them drop a baseline instead).
    #[arg(long, default_value_t = 10_000)]
    updates: usize,
    /// Distinct VM keys the updates name.
    #[arg(long, default_value_t = 2_000)]
    keys: usize,
    /// Seed of the random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up after this many periods.
    #[arg(long, default_value_t = 200)]
    max_periods: usize,
}

/// splitmix64: small, seedable, repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A node's replica and its id.
struct Node {
    id: u64,
    index: Index,
}

/// What one cluster size gave.
struct Outcome {
    nodes: usize,
    entries: usize,
    periods: usize,
    exchanges: u64,
    bytes: u64,
    replica_bytes: usize,
    seconds: f64,
    /// Bytes of one period once all agree.
    idle_bytes: u64,
    /// Periods and bytes until one more update reaches every replica.
    one_periods: usize,
    one_bytes: u64,
}

fn meta(rng: &mut Rng, holder: u64, seq: u64) -> BaselineMeta {
    let mut mins: Vec<u64> = (0..SKETCH_LEN).map(|_| rng.next()).collect();
    mins.sort_unstable();
    mins.dedup();
    BaselineMeta {
        holder,
        seq,
        checksum: rng.next(),
        size: 256 << 20,
        codec: "zstd-3+ref".to_owned(),
        keyframe: seq == 0,
        time_ms: 1_790_000_000_000 + seq,
        sketch: Sketch { live_pages: 40_000 + rng.next() % 20_000, mins },
    }
}

/// One exchange started by `a` with `b`, as `hde_net::cluster::exchange` and the serving side
/// run it; returns the bytes both ways.
fn exchange(a: &mut Index, b: &mut Index) -> Result<u64> {
    let limits = Limits::default();
    let decode = |bytes: &[u8]| SyncMessage::from_bytes(bytes, &limits);
    let mut bytes = 0;
    let mut out = a.sync_start().to_bytes();
    loop {
        bytes += out.len() as u64;
        let Some(reply) = b.sync_handle(&decode(&out)?) else { break };
        let reply = reply.to_bytes();
        bytes += reply.len() as u64;
        match a.sync_handle(&decode(&reply)?) {
            Some(next) => out = next.to_bytes(),
            None => break,
        }
    }
    Ok(bytes)
}

fn agree(nodes: &[Node]) -> bool {
    nodes.windows(2).all(|w| w[0].index == w[1].index)
}

fn simulate(n: usize, args: &Args) -> Result<Outcome> {
    let start = Instant::now();
    let mut rng = Rng(args.seed ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut nodes: Vec<Node> = (0..n).map(|i| Node { id: 1 + i as u64, index: Index::new() }).collect();
    for seq in 0..args.updates as u64 {
        let node = &mut nodes[rng.below(n)];
        let holding = Holding { key: format!("vm-{:05}", rng.below(args.keys)), node: node.id };
        if rng.below(10) == 0 {
            node.index.remove(NodeId(node.id), &holding);
        } else {
            let m = meta(&mut rng, node.id, seq);
            let t = m.time_ms;
            node.index.update(NodeId(node.id), holding, m, t);
        }
    }
    let (periods, bytes) = until_agreed(&mut nodes, &mut rng, args.max_periods)?;
    let burst_seconds = start.elapsed().as_secs_f64();
    // In agreement, a period still costs the exchanges' digests and contexts.
    let idle_bytes = period(&mut nodes, &mut rng)?;
    // One more baseline recorded by one node, as in a cluster at work.
    let node = &mut nodes[rng.below(n)];
    let m = meta(&mut rng, node.id, args.updates as u64);
    let t = m.time_ms;
    node.index.update(NodeId(node.id), Holding { key: "vm-new".to_owned(), node: node.id }, m, t);
    let (one_periods, one_bytes) = until_agreed(&mut nodes, &mut rng, args.max_periods)?;
    Ok(Outcome {
        nodes: n,
        entries: nodes[0].index.len(),
        periods,
        exchanges: periods as u64 * n as u64,
        bytes,
        replica_bytes: nodes[0].index.to_bytes().len(),
        seconds: burst_seconds,
        idle_bytes,
        one_periods,
        one_bytes,
    })
}

/// One period: every node, in a random order (exchanges of one period overlap in time on
/// real nodes), starts an exchange with a random other node. Returns the bytes.
fn period(nodes: &mut [Node], rng: &mut Rng) -> Result<u64> {
    let n = nodes.len();
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let mut bytes = 0;
    for &i in &order {
        let j = (i + 1 + rng.below(n - 1)) % n;
        let (a, b) = if i < j {
            let (lo, hi) = nodes.split_at_mut(j);
            (&mut lo[i], &mut hi[0])
        } else {
            let (lo, hi) = nodes.split_at_mut(i);
            (&mut hi[0], &mut lo[j])
        };
        bytes += exchange(&mut a.index, &mut b.index)?;
    }
    Ok(bytes)
}

/// Periods until every replica agrees, and the bytes exchanged meanwhile.
fn until_agreed(nodes: &mut [Node], rng: &mut Rng, max: usize) -> Result<(usize, u64)> {
    let (mut periods, mut bytes) = (0, 0);
    while !agree(nodes) {
        if periods == max {
            bail!("{} nodes: no agreement after {periods} periods", nodes.len());
        }
        periods += 1;
        bytes += period(nodes, rng)?;
    }
    Ok((periods, bytes))
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if args.nodes.iter().any(|&n| n < 2) {
        bail!("a cluster needs at least 2 nodes");
    }
    println!(
        "{} updates ({} keys, a tenth removes) before period 1; one exchange per node per period",
        args.updates, args.keys
    );
    println!(
        "| nodes | entries | periods to agree | exchanges | bytes exchanged | per node | one replica | \
         a period in agreement, per node | one more update: periods | its bytes, per node | sim s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.nodes {
        let o = simulate(n, args)?;
        let per_node = |b: u64| b as f64 / o.nodes as f64;
        println!(
            "| {} | {} | {} | {} | {:.1} MB | {:.2} MB | {:.2} MB | {:.1} KB | {} | {:.1} KB | {:.1} |",
            o.nodes,
            o.entries,
            o.periods,
            o.exchanges,
            o.bytes as f64 / 1e6,
            per_node(o.bytes) / 1e6,
            o.replica_bytes as f64 / 1e6,
            per_node(o.idle_bytes) / 1e3,
            o.one_periods,
            per_node(o.one_bytes) / 1e3,
            o.seconds
        );
    }
    Ok(())
}
