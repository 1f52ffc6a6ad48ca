//! What the link to a receiver delivers, measured while a frame is sent and remembered
//! between runs.
//!
//! The sender measures the link from its own socket writes: a write that waits is the link
//! draining what was written before, so bytes over the time spent waiting, over the last few
//! chunks, is the rate the link takes data at. Writes that do not wait say the link is faster
//! than the encoder produces: the estimate grows past what was produced, and hybrid mode picks
//! faster codecs until the link, not the encoder, is what the sender waits for. The first bytes
//! of a frame fill the socket buffers without waiting and are not counted. (This needs a path
//! that pushes back: a proxy that buffers without bound in front of a slow link hides it.)
//!
//! The estimate goes to the encoder after every segment (hybrid mode picks codec and level per
//! segment), so a link that slows down in the middle of a round is followed from the next
//! segments on; what was compressed and queued before (a few segments, the channel and the
//! socket buffers) goes out as it was. With `--state`, the last frame's rate is kept in the
//! state directory (`links`), per receiver address, and a later `hde send` starts from it
//! instead of the configured default.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Chunk writes the live estimate spans.
const WINDOW: usize = 4;
/// Bytes at the start of each frame that are not measured (they fill the socket buffers).
const UNMEASURED: u64 = 4 << 20;
/// Bytes a sender's queue, socket buffers and the path may hold before writes wait (the
/// selector's `max_backlog_bytes` is the same notion).
const BUFFERED: u64 = 16 << 20;
/// Estimates above this are "faster than anything we produce" (bytes/s).
const CEILING: f64 = 1e11;
/// How long a remembered rate is trusted.
const MEMORY: Duration = Duration::from_secs(24 * 3600);
/// The file in a state directory.
const FILE: &str = "links";

/// The live estimate, shared between the network side (which writes it) and the encoder
/// (which reads it before each segment's choice).
#[derive(Debug, Clone, Default)]
pub struct LiveRate(Arc<AtomicU64>);

impl LiveRate {
    /// The latest estimate, bytes per second, if there is one.
    pub fn get(&self) -> Option<f64> {
        let v = f64::from_bits(self.0.load(Ordering::Relaxed));
        (v > 0.0).then_some(v)
    }

    fn set(&self, rate: f64) {
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// Measures one frame's chunk writes at a time.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// The last chunks: bytes, time their write waited, time since the chunk before ended.
    window: VecDeque<(u64, Duration, Duration)>,
    frame_bytes: u64,
    last_end: Option<Instant>,
    /// Time spent in writes over the whole frame.
    busy: Duration,
}

impl Meter {
    /// Counts a chunk of `bytes` whose write took `waited` and ended now; updates `live`
    /// once the window is full.
    ///
    /// Where the writes waited for most of the window's time, the link set the pace: its rate
    /// is bytes over the waits. Where they did not, once the frame is past what buffers hold,
    /// the encoder set it, and the link takes at least what was produced: the estimate rises
    /// to twice that (hybrid mode then picks faster codecs, produces more, and the estimate
    /// doubles again until the link is what the sender waits for, as `zstd --adapt` speeds up
    /// while its output is not blocked).
    pub(crate) fn chunk(&mut self, bytes: usize, waited: Duration, live: &LiveRate) {
        self.chunk_at(bytes, waited, Instant::now(), live);
    }

    /// [`chunk`](Self::chunk) for a write that ended at `now`.
    fn chunk_at(&mut self, bytes: usize, waited: Duration, now: Instant, live: &LiveRate) {
        let span = self.last_end.map_or(waited, |t| now.duration_since(t));
        self.last_end = Some(now);
        self.frame_bytes += bytes as u64;
        self.busy += waited;
        if self.frame_bytes <= UNMEASURED {
            return;
        }
        self.window.push_back((bytes as u64, waited, span.max(waited)));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if self.window.len() == WINDOW {
            let bytes = self.window.iter().map(|w| w.0).sum::<u64>() as f64;
            let busy: f64 = self.window.iter().map(|w| w.1.as_secs_f64()).sum();
            let wall: f64 = self.window.iter().map(|w| w.2.as_secs_f64()).sum();
            let rate = if busy > 0.0 && busy >= wall / 2.0 {
                bytes / busy
            } else {
                // The link took what the encoder produced: at least that rate, twice it as the
                // estimate. Only past what the buffers in front of the link can hold: before,
                // a slow link's buffers take a frame's first megabytes without a wait, from a
                // pipeline that had segments ready (a burst, not a rate).
                if self.frame_bytes <= BUFFERED || wall == 0.0 {
                    return;
                }
                live.get().unwrap_or(0.0).max(2.0 * bytes / wall)
            };
            live.set(rate.min(CEILING));
        }
    }

    /// The whole frame's rate (bytes over the time writes waited), or `None` for a frame too
    /// small to tell; then starts over for the next frame.
    pub(crate) fn end_frame(&mut self, measurable: u64) -> Option<f64> {
        let rate = (self.frame_bytes >= measurable && !self.busy.is_zero())
            .then(|| self.frame_bytes as f64 / self.busy.as_secs_f64());
        *self = Meter::default();
        rate
    }
}

/// The rate a previous send measured to `to`, if the state directory `state` remembers one
/// younger than a day.
pub fn remembered(state: &Path, to: &str) -> Option<f64> {
    let text = std::fs::read_to_string(state.join(FILE)).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (addr, rate, when) = (words.next()?, words.next()?, words.next()?);
        let (rate, when) = (rate.parse::<f64>().ok()?, when.parse::<u64>().ok()?);
        (addr == to && rate.is_finite() && rate > 0.0 && now.saturating_sub(when) < MEMORY.as_secs()).then_some(rate)
    })
}

/// Remembers `rate` (bytes per second) for `to` in the state directory `state`, replacing the
/// file atomically (lines `address rate unix-seconds`; other addresses are kept).
pub fn remember(state: &Path, to: &str, rate: f64) -> std::io::Result<()> {
    use std::io::Write as _;
    if !(rate.is_finite() && rate > 0.0) || to.split_whitespace().count() != 1 {
        return Ok(());
    }
    std::fs::create_dir_all(state)?;
    let path = state.join(FILE);
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut text = String::new();
    for line in old.lines().filter(|l| l.split_whitespace().next().is_some_and(|a| a != to)).take(255) {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!("{to} {rate:.0} {now}\n"));
    let file = hde_core::fsio::AtomicFile::create(&path)?;
    file.file().write_all(text.as_bytes())?;
    file.commit(hde_core::fsio::Existing::Replace, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `n` chunks of 1 MiB, each `gap_ms` after the last ended and waiting `wait_ms`.
    fn writes(m: &mut Meter, now: &mut Instant, live: &LiveRate, n: usize, gap_ms: u64, wait_ms: u64) {
        for _ in 0..n {
            *now += Duration::from_millis(gap_ms + wait_ms);
            m.chunk_at(1 << 20, Duration::from_millis(wait_ms), *now, live);
        }
    }

    const MIB: f64 = (1 << 20) as f64;

    #[test]
    fn a_link_that_makes_writes_wait_is_measured_by_the_waits() {
        let (live, mut m, mut now) = (LiveRate::default(), Meter::default(), Instant::now());
        // The first 4 MiB fill the buffers: nothing measured.
        writes(&mut m, &mut now, &live, 4, 1, 0);
        assert_eq!(live.get(), None);
        // 1 MiB per 100 ms, the encoder faster: every write waits.
        writes(&mut m, &mut now, &live, 4, 5, 100);
        assert!((live.get().unwrap() - 10.0 * MIB).abs() < 1.0);
        // It slows to 1 MiB per second: followed within the window.
        writes(&mut m, &mut now, &live, 4, 5, 1000);
        assert!((live.get().unwrap() - MIB).abs() < 1.0);
        let whole = m.end_frame(8 << 20).unwrap();
        assert!((whole - 12.0 * MIB / 4.4).abs() < 1.0);
        assert_eq!(m.end_frame(0), None);
    }

    #[test]
    fn writes_that_never_wait_raise_the_estimate_past_the_buffers() {
        let (live, mut m, mut now) = (LiveRate::default(), Meter::default(), Instant::now());
        // One chunk every 50 ms, no waits: what buffers can hold says nothing.
        writes(&mut m, &mut now, &live, 16, 50, 0);
        assert_eq!(live.get(), None);
        // Past them, the link took 20 MiB/s at least: twice that is the estimate.
        writes(&mut m, &mut now, &live, 4, 50, 0);
        assert!((live.get().unwrap() - 40.0 * MIB).abs() < 1.0, "{:?}", live.get());
        // A slower stretch without waits does not lower it.
        writes(&mut m, &mut now, &live, 4, 500, 0);
        assert!((live.get().unwrap() - 40.0 * MIB).abs() < 1.0);
    }

    #[test]
    fn rates_are_remembered_per_address() {
        let dir = std::env::temp_dir().join(format!("hde-net-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(remembered(&dir, "a:1"), None);
        remember(&dir, "a:1", 1e6).unwrap();
        remember(&dir, "b:2", 2e6).unwrap();
        remember(&dir, "a:1", 3e6).unwrap();
        assert_eq!(remembered(&dir, "a:1"), Some(3e6));
        assert_eq!(remembered(&dir, "b:2"), Some(2e6));
        assert_eq!(remembered(&dir, "c:3"), None);
        // Nonsense is ignored, not an error.
        remember(&dir, "two words", 1e6).unwrap();
        remember(&dir, "a:1", f64::NAN).unwrap();
        std::fs::write(dir.join(FILE), "a:1 x 0\nb:2 5e6 1\n").unwrap();
        assert_eq!(remembered(&dir, "a:1"), None);
        assert_eq!(remembered(&dir, "b:2"), None, "too old");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
