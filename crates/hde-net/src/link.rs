//! What the link to a receiver delivers, measured while a frame is sent and remembered
//! between runs.
//!
//! The sender measures the link from its own socket writes: a write that waits is the link
//! draining what was written before, so bytes over the time spent waiting, over the last few
//! chunks, is the rate the link takes data at. A write that does not wait says the link is
//! faster than the encoder produces: the estimate grows, and hybrid mode picks faster codecs
//! until the link, not the encoder, is what the sender waits for. The first bytes of a frame
//! fill the socket buffers without waiting and are not counted.
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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Chunk writes the live estimate spans.
const WINDOW: usize = 4;
/// Bytes at the start of each frame that are not measured (they fill the socket buffers).
const UNMEASURED: u64 = 4 << 20;
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
    window: VecDeque<(u64, Duration)>,
    frame_bytes: u64,
    /// Time spent in writes over the whole frame, and the bytes they carried.
    busy: Duration,
}

impl Meter {
    /// Counts a chunk of `bytes` whose write took `waited`; updates `live` once the window is
    /// full.
    pub(crate) fn chunk(&mut self, bytes: usize, waited: Duration, live: &LiveRate) {
        self.frame_bytes += bytes as u64;
        self.busy += waited;
        if self.frame_bytes <= UNMEASURED {
            return;
        }
        self.window.push_back((bytes as u64, waited));
        if self.window.len() > WINDOW {
            self.window.pop_front();
        }
        if self.window.len() == WINDOW {
            let bytes: u64 = self.window.iter().map(|w| w.0).sum();
            let busy: f64 = self.window.iter().map(|w| w.1.as_secs_f64()).sum();
            live.set(if busy > 0.0 { (bytes as f64 / busy).min(CEILING) } else { CEILING });
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

    #[test]
    fn the_live_rate_is_bytes_over_the_waits_of_the_last_chunks() {
        let live = LiveRate::default();
        let mut m = Meter::default();
        // The first 4 MiB fill the buffers: nothing measured.
        for _ in 0..4 {
            m.chunk(1 << 20, Duration::ZERO, &live);
        }
        assert_eq!(live.get(), None);
        // A link of 1 MiB per 100 ms.
        for _ in 0..4 {
            m.chunk(1 << 20, Duration::from_millis(100), &live);
        }
        let r = live.get().unwrap();
        assert!((r - 10.0 * f64::from(1 << 20)).abs() < 1.0, "{r}");
        // It slows to 1 MiB per second: followed within the window.
        for _ in 0..4 {
            m.chunk(1 << 20, Duration::from_secs(1), &live);
        }
        assert!((live.get().unwrap() - f64::from(1 << 20)).abs() < 1.0);
        // Writes that never wait: the link is faster than the encoder.
        for _ in 0..4 {
            m.chunk(1 << 20, Duration::ZERO, &live);
        }
        assert_eq!(live.get(), Some(CEILING));
        let whole = m.end_frame(8 << 20).unwrap();
        assert!((whole - 16.0 * f64::from(1 << 20) / 4.4).abs() < 1.0);
        assert_eq!(m.end_frame(0), None);
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
