//! Network modes and the selector's configuration.

use std::fmt;
use std::str::FromStr;

use hde_codec::CodecSpec;

use crate::{Error, Result};

/// What the link asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    /// Speed first: the fastest delivery over a fast link (`datacenter_target_speed`).
    Datacenter,
    /// Ratio first: the fewest bytes within a CPU budget.
    Internet,
    /// Whatever delivers fastest over the configured or measured bandwidth.
    Hybrid,
}

impl NetworkMode {
    /// All modes.
    pub const ALL: [NetworkMode; 3] = [NetworkMode::Datacenter, NetworkMode::Internet, NetworkMode::Hybrid];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            NetworkMode::Datacenter => "datacenter",
            NetworkMode::Internet => "internet",
            NetworkMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for NetworkMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "datacenter" | "dc" => Ok(NetworkMode::Datacenter),
            "internet" | "wan" => Ok(NetworkMode::Internet),
            "hybrid" => Ok(NetworkMode::Hybrid),
            _ => Err(Error::UnknownMode { name: s.to_owned() }),
        }
    }
}

/// The selector's configuration (the seed system's `SelectorConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    /// The mode of the first choice; [`Selector::set_mode`](crate::Selector::set_mode) changes it.
    pub mode: NetworkMode,
    /// Datacenter mode: the link speed to keep up with, bytes/s. Default 3.125e8 (2.5 Gbit/s,
    /// where compressing still pays on two cores; at 10 Gbit/s two cores are better off
    /// sending raw pages, and the selector will say so).
    pub datacenter_target_speed: f64,
    /// Internet mode: a ratio (output/input) that is good enough; among choices predicted to
    /// reach it, the fastest wins. Default 0: always the fewest bytes.
    pub internet_target_ratio: f64,
    /// Internet mode: the CPU budget, as the least encode speed over all threads, bytes/s;
    /// slower choices are penalised in proportion to the shortfall. Default 2e7: a 256 MiB
    /// image in about 13 s, a tenth of what `zstd -19 --long` takes.
    pub internet_min_speed: f64,
    /// Hybrid mode: link bandwidth, bytes/s, until a measurement replaces it. Default 1.25e7
    /// (100 Mbit/s).
    pub bandwidth: f64,
    /// Hybrid mode: the fastest link the cost model believes in, bytes/s. Past it, the
    /// receiver's decoding and both ends' TLS bound delivery, which the link's rate does not
    /// show: on 2-core machines sharing an unshaped path, frames made for a measured 2-5 GB/s
    /// (LZ4, no reference: deltas of 12-23 MB) arrived later than frames made for 1 Gbit/s
    /// (zstd against the old pages: 5-8 MB). Default 1.25e8 (1 Gbit/s); raise it with the
    /// machines' cores.
    pub max_link_rate: f64,
    /// Hybrid mode: the most bytes a sender holds in front of the link (its queue and socket
    /// buffers; `hde send` holds 8 MiB of chunks and the kernel a few MiB more). The link's
    /// backlog, as the frame's bytes written over the bandwidth, is never taken to be more
    /// than this over the bandwidth: a writer faster than the link is held back once its
    /// buffers are full, so more backlog than that means the bandwidth is underestimated,
    /// and spending it on slow levels would hold up a fast link. Default 4 MiB: with 16 MiB,
    /// 10 Mbit/s delta rounds put their large literal blocks on zstd-19 and took 6.6-12 s
    /// for 5 MB (5.4-5.8 s with 4 MiB; round 0 unchanged, 47.5 MB in 40 s).
    pub max_backlog_bytes: u64,
    /// Blocks below this size form their own statistics bucket (default 64 KiB).
    pub small_data_size: u64,
    /// Blocks from this size form their own statistics bucket (default 2 MiB).
    pub large_data_size: u64,
    /// Weight of a new observation in the moving averages, and (one tenth of it) the rate at
    /// which old observations are forgotten. Default 0.2.
    pub learning_rate: f64,
    /// Learn from outcomes; off, the learning selector behaves as the static one.
    pub adaptive_enabled: bool,
    /// Optimism for choices not yet tried in a bucket: their estimated cost is reduced by this
    /// share. Default 0.15.
    pub exploration: f64,
    /// Probability of trying a random plausible choice, one within 1.5 times the best estimate
    /// (follows drifting data). Default 0.01.
    pub epsilon: f64,
    /// Seed of the exploration: same seed and outcomes, same choices.
    pub seed: u64,
    /// The codecs to choose among (a codec the engine's set lacks fails the encode, typed).
    pub codecs: Vec<CodecSpec>,
}

impl Default for SelectorConfig {
    fn default() -> Self {
        SelectorConfig {
            mode: NetworkMode::Hybrid,
            datacenter_target_speed: 3.125e8,
            internet_target_ratio: 0.0,
            internet_min_speed: 2e7,
            bandwidth: 1.25e7,
            max_backlog_bytes: 4 << 20,
            max_link_rate: 1.25e8,
            small_data_size: 64 << 10,
            large_data_size: 2 << 20,
            learning_rate: 0.2,
            adaptive_enabled: true,
            exploration: 0.15,
            epsilon: 0.01,
            seed: 1,
            codecs: crate::DEFAULT_CODECS.to_vec(),
        }
    }
}

impl SelectorConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what| Err(Error::InvalidConfig { what });
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.datacenter_target_speed)
            || !positive(self.internet_min_speed)
            || !positive(self.bandwidth)
            || !positive(self.max_link_rate)
        {
            return bad("speeds and bandwidth must be positive and finite");
        }
        if !(0.0..=1.0).contains(&self.internet_target_ratio) {
            return bad("internet_target_ratio must be in 0..=1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning_rate must be in (0, 1]");
        }
        if !(0.0..=1.0).contains(&self.exploration) || !(0.0..=1.0).contains(&self.epsilon) {
            return bad("exploration and epsilon must be in 0..=1");
        }
        if self.small_data_size > self.large_data_size {
            return bad("small_data_size must not exceed large_data_size");
        }
        if self.codecs.is_empty() || self.codecs.len() > 32 {
            return bad("codecs must list 1 to 32 codecs");
        }
        Ok(())
    }
}
