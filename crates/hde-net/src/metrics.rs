//! `hde serve --metrics ADDR`: Prometheus metrics at `/metrics` and a health check at
//! `/health`, over plain HTTP/1.1 (one request per connection, read with a size and time
//! limit; metrics say nothing secret, and the endpoint is meant for a local scraper).
//!
//! The exposition format is written by `prometheus-client`: each scrape builds a registry
//! from the node's counters at that moment.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hde_core::Hde;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::ServeStats;

/// Labels of a metric family: one name and its value.
type Label = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

fn counters(registry: &mut Registry, name: &str, help: &str, values: &[(Label, u64)]) {
    let family = Family::<Label, Counter>::default();
    for (labels, n) in values {
        family.get_or_create(labels).inc_by(*n);
    }
    registry.register(name, help, family);
}

fn label(pairs: &[(&str, &str)]) -> Label {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The metrics of `hde` and `stats`, in the Prometheus text format.
pub fn render(hde: &Hde, stats: &ServeStats) -> String {
    let m = hde.metrics();
    let mut r = Registry::with_prefix("hde");
    counter(&mut r, "frames_encoded", "Frames encoded", m.frames_encoded);
    counter(&mut r, "frames_decoded", "Frames decoded", m.frames_decoded);
    counter(&mut r, "input_bytes", "Image bytes encoded", m.bytes_in);
    counter(&mut r, "output_bytes", "Frame bytes produced", m.bytes_out);
    counter(&mut r, "decoded_frame_bytes", "Bytes of the frames decoded and verified", m.decoded_frame_bytes);
    counter(&mut r, "decoded_image_bytes", "Bytes of the images they produced", m.decoded_image_bytes);
    gauge(&mut r, "compression_ratio", "Frame bytes over image bytes, frames encoded and decoded", m.compression_ratio);
    gauge(&mut r, "bandwidth_saving_percent", "Percent of image bytes not sent", m.bandwidth_saving_percent);
    gauge(&mut r, "delta_hit_rate", "Share of rounds encoded or decoded as deltas", m.delta_hit_rate);
    let codecs: Vec<(Label, u64)> = m
        .codec_use
        .iter()
        .map(|(c, n)| (label(&[("codec", c), ("side", "encode")]), *n))
        .chain(m.decoded_codec_use.iter().map(|(c, n)| (label(&[("codec", c), ("side", "decode")]), *n)))
        .collect();
    counters(&mut r, "codec_segments", "Segments per literal codec", &codecs);
    counter(&mut r, "crdt_merges", "Merges of a peer's index replica", m.crdt_merges);
    counter(&mut r, "crdt_conflict_free_merges", "Merges without concurrent writes to resolve", m.crdt_conflict_free);
    counter(&mut r, "rounds_applied", "Rounds received and applied", stats.rounds.load(Ordering::Relaxed));
    counter(&mut r, "frame_received_bytes", "Frame bytes received", stats.frame_bytes.load(Ordering::Relaxed));
    gauge(&mut r, "link_bytes_per_second", "Receive rate of the last frame of 8 MiB or more", stats.link_rate());
    let refusals: Vec<(Label, u64)> = stats
        .refusals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(k, v)| (label(&[("reason", k)]), *v))
        .collect();
    counters(&mut r, "refusals", "Frames refused, by reason", &refusals);
    let entries = hde.index_entries();
    let held = entries.iter().filter(|(h, _)| h.node == hde.config().node_id);
    let (mut baselines, mut bytes) = (0u64, 0u64);
    for (_, meta) in held {
        baselines += 1;
        bytes += meta.size;
    }
    gauge(&mut r, "baselines_held", "Baselines this node holds (its state)", baselines as f64);
    gauge(&mut r, "baseline_bytes_held", "Bytes of the baselines this node holds", bytes as f64);
    gauge(&mut r, "baseline_memory_bytes", "Memory of the encoder's baselines", m.baseline_memory as f64);
    gauge(&mut r, "index_entries", "Entries of the replicated baseline index", entries.len() as f64);
    gauge(&mut r, "index_state_bytes", "Bytes of this node's replica, encoded", hde.export_crdt_state().len() as f64);
    counter(
        &mut r,
        "index_syncs",
        "Index exchanges this node started that completed",
        stats.syncs.load(Ordering::Relaxed),
    );
    counter(&mut r, "index_sync_failures", "Index exchanges that failed", stats.sync_failures.load(Ordering::Relaxed));
    counter(&mut r, "index_sync_bytes", "Bytes of index messages, both ways", stats.sync_bytes.load(Ordering::Relaxed));
    counter(&mut r, "index_queries", "Senders' queries answered", stats.queries.load(Ordering::Relaxed));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &r);
    text
}

/// The largest request head read.
const MAX_REQUEST: usize = 8 << 10;

async fn respond(mut stream: TcpStream, hde: &Hde, stats: &ServeStats) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let (status, kind, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render(hde, stats))
        }
        (b"GET", b"/health") => {
            let h = hde.health();
            let status = if h.healthy { "200 OK" } else { "503 Service Unavailable" };
            let body = if h.healthy { "ok\n".to_owned() } else { format!("{}\n", h.problems.join("\n")) };
            (status, "text/plain; charset=utf-8", body)
        }
        (b"GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics or /health\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

/// Serves `/metrics` and `/health` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, hde: Arc<Hde>, stats: Arc<ServeStats>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (hde, stats) = (hde.clone(), stats.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), respond(stream, &hde, &stats)).await;
        });
    }
}
