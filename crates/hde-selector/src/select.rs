//! The two default selectors: static (priors only) and learning (priors, then outcomes).

use crate::model::{cost, prior, Estimate};
use hde_codec::CodecSpec;

use crate::{Bucket, Choice, Context, NetworkMode, Outcome, Profile, Result, SelectorConfig, Ticket};
use hde_sync::{lock, Mutex};

/// The boundary of the selector layer.
pub trait Selector: Send + Sync {
    /// Picks a codec (and whether to use the reference) for a block with `profile`.
    fn choose(&self, profile: &Profile, context: &Context) -> Choice;
    /// Learns from what running `choice` gave.
    fn observe(&self, choice: &Choice, outcome: &Outcome);
    /// Switches the network mode; the next `choose` uses it.
    fn set_mode(&self, mode: NetworkMode);
    /// The current network mode.
    fn mode(&self) -> NetworkMode;
    /// Sets the link bandwidth (bytes/s) used by hybrid mode.
    fn set_bandwidth(&self, bytes_per_second: f64);
}

impl<S: Selector + ?Sized> Selector for std::sync::Arc<S> {
    fn choose(&self, profile: &Profile, context: &Context) -> Choice {
        (**self).choose(profile, context)
    }
    fn observe(&self, choice: &Choice, outcome: &Outcome) {
        (**self).observe(choice, outcome)
    }
    fn set_mode(&self, mode: NetworkMode) {
        (**self).set_mode(mode)
    }
    fn mode(&self) -> NetworkMode {
        (**self).mode()
    }
    fn set_bandwidth(&self, bytes_per_second: f64) {
        (**self).set_bandwidth(bytes_per_second)
    }
}

/// Pseudo-samples of the transfer estimate blended into a bucket's own average.
const SHRINK: f64 = 3.0;

const SIZE_BANDS: usize = 5;
const BUCKETS: usize = 2 * 2 * 2 * SIZE_BANDS * 2;

/// The size band of a bucket (see [`bucket`] for the layout).
fn size_band(b: usize) -> usize {
    (b / 2) % SIZE_BANDS
}

/// The statistics bucket of a block: entropy (2 bands), repetition (2), mostly-zero (2), size
/// (5: below 16 KiB, below `small_data_size`, below 256 KiB, below `large_data_size`, above;
/// per-call costs make per-byte speed depend on size) and reference availability (2).
pub fn bucket(profile: &Profile, context: &Context, config: &SelectorConfig) -> Bucket {
    // Few bands: every bucket must see enough blocks to learn, and the learned corrections
    // already follow the prior's finer use of these features.
    let e = u16::from(profile.entropy >= 7.0);
    let r = u16::from(profile.repetition >= 0.3);
    let z = u16::from(profile.zero_page_fraction >= 0.5);
    let s = match profile.len {
        n if n < 16 << 10 => 0,
        n if n < config.small_data_size => 1,
        n if n < 256 << 10 => 2,
        n if n < config.large_data_size => 3,
        _ => 4,
    };
    let f = u16::from(context.reference_len > 0);
    Bucket(((((e * 2 + r) * 2 + z) * 5 + s) * 2) + f)
}

/// Arms: each codec without reference, and with it where the codec can use one.
fn arms(config: &SelectorConfig) -> Vec<(CodecSpec, bool)> {
    let mut arms = Vec::new();
    for &codec in &config.codecs {
        arms.push((codec, false));
        if crate::uses_reference(codec) {
            arms.push((codec, true));
        }
    }
    arms
}

/// What a bucket (or a size band) has learned about one arm: moving averages, in log space, of
/// observed / prior for ratio, encode and decode time. Corrections rather than absolute values:
/// per-block variation the prior explains (size, repetition, zero pages) cancels out, so blocks
/// of different difficulty are comparable and what is learned transfers between buckets.
#[derive(Debug, Clone, Copy, Default)]
struct ArmStats {
    /// Decayed number of observations.
    weight: f64,
    count: u64,
    ratio: f64,
    encode: f64,
    decode: f64,
    decodes: u64,
}

impl ArmStats {
    fn correction(&self) -> [f64; 3] {
        [self.ratio, self.encode, if self.decodes > 0 { self.decode } else { 0.0 }]
    }
}

struct Evaluation {
    best: (f64, usize),
    bounds: [f64; 64],
    costs: [f64; 64],
    priors: [Estimate; 64],
}

#[derive(Debug)]
struct State {
    mode: NetworkMode,
    bandwidth: f64,
    /// `BUCKETS * arms.len()`, bucket-major.
    stats: Vec<ArmStats>,
    /// Per size band and arm, over all buckets of that band: what transfers to buckets where
    /// an arm was not tried yet (per-call costs make speed depend on size, so bands stay apart).
    global: Vec<ArmStats>,
    rng: u64,
}

impl State {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic per seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Shared implementation of both selectors.
#[derive(Debug)]
struct Core {
    config: SelectorConfig,
    arms: Vec<(CodecSpec, bool)>,
    learn: bool,
    state: Mutex<State>,
}

impl Core {
    fn new(config: SelectorConfig, learn: bool) -> Result<Self> {
        config.validate()?;
        let arms = arms(&config);
        let state = State {
            mode: config.mode,
            bandwidth: config.bandwidth,
            stats: vec![ArmStats::default(); BUCKETS * arms.len()],
            global: vec![ArmStats::default(); SIZE_BANDS * arms.len()],
            rng: config.seed | 1,
        };
        Ok(Core { learn: learn && config.adaptive_enabled, config, arms, state: Mutex::new(state) })
    }

    /// Estimated cost and exploration bound of every arm (infinite where an arm does not
    /// apply), the index of the lowest bound, and each arm's prior.
    fn evaluate(&self, st: &State, b: Bucket, profile: &Profile, context: &Context) -> Evaluation {
        let input = profile.len.max(1) as f64;
        let threads = f64::from(context.threads.max(1));
        // Beyond `max_link_rate` the CPUs at both ends, not the link, bound delivery.
        let (mode, bandwidth) = (st.mode, st.bandwidth.min(self.config.max_link_rate));
        let backlog = (context.frame_written as f64 / bandwidth - context.frame_elapsed.as_secs_f64())
            .min(self.config.max_backlog_bytes as f64 / bandwidth);
        let n_arms = self.arms.len();
        let row = b.0 as usize * n_arms;
        let band = size_band(b.0 as usize) * n_arms;
        let mut best = (f64::INFINITY, 0usize);
        let mut bounds = [f64::INFINITY; 64];
        let mut costs = [f64::INFINITY; 64];
        let mut priors = [Estimate { ratio: 1.0, encode_ns: 0.0, decode_ns: 0.0 }; 64];
        // For arms never tried in this bucket: the correction the most observed arm with the
        // same reference flag shows here (used when the arm was not tried in this size band
        // either).
        let mut anchor = [None::<[f64; 3]>; 2];
        if self.learn {
            for flag in [false, true] {
                let tried = (0..n_arms).filter(|&i| self.arms[i].1 == flag && st.stats[row + i].count > 0);
                if let Some(i) = tried.max_by(|&x, &y| st.stats[row + x].weight.total_cmp(&st.stats[row + y].weight)) {
                    anchor[usize::from(flag)] = Some(st.stats[row + i].correction());
                }
            }
        }
        // Hybrid mode weighs levels against each other by the bytes they save on this link;
        // one level's learnt ratio, from the blocks it happened to get, is a noisy guide to
        // another's (a level tried on easy blocks looked better than every level above it).
        // What the data does to zstd's ratio is learnt over all levels tried here, and the
        // levels' relative gains are the prior's, which hold across guest memory.
        let mut zstd_ratio = [None::<f64>; 2];
        if self.learn && mode == NetworkMode::Hybrid {
            for flag in [false, true] {
                let (mut weight, mut sum) = (0.0, 0.0);
                for (i, &(codec, r)) in self.arms.iter().enumerate() {
                    let s = st.stats[row + i];
                    if matches!(codec, CodecSpec::Zstd(_)) && r == flag && s.count > 0 {
                        weight += s.weight;
                        sum += s.weight * s.ratio;
                    }
                }
                if weight > 0.0 {
                    zstd_ratio[usize::from(flag)] = Some(sum / weight);
                }
            }
        }
        for (i, &(codec, reference)) in self.arms.iter().enumerate() {
            if reference && context.reference_len == 0 {
                continue;
            }
            // Ratio first: a reference can only remove bytes (zstd ignores what does not
            // match), and how much it removes varies more from block to block than any
            // estimate made before compressing tells. Measured on another VM's similar pages:
            // 0.88x the bytes of zstd --patch-from with it always on, 0.94x when the estimate
            // decided per segment.
            if !reference && crate::uses_reference(codec) && context.reference_len > 0 && mode == NetworkMode::Internet
            {
                continue;
            }
            let p = prior(codec, reference, profile, context);
            priors[i] = p;
            let mut optimism = 0.0;
            let mut correction = [0.0; 3];
            if self.learn {
                let s = st.stats[row + i];
                let g = st.global[band + i];
                let (transfer, transfer_optimism) = if g.count > 0 {
                    (g.correction(), 0.25)
                } else if let Some(a) = anchor[usize::from(reference)] {
                    // What the reference does to the ratio carries over between codecs; their
                    // speeds do not (one slow codec must not make every other look slow), so
                    // speed comes from this codec's other arm when it was tried here.
                    let twin = (0..n_arms).find(|&j| self.arms[j] == (codec, !reference));
                    let speed =
                        twin.map(|j| st.stats[row + j]).filter(|t| t.count > 0).map_or([0.0; 3], |t| t.correction());
                    ([a[0], speed[1], speed[2]], 0.5)
                } else {
                    ([0.0; 3], 1.0)
                };
                if s.count > 0 {
                    // The bucket's own correction, shrunk towards the transfer while it rests
                    // on few samples. Tried arms get no bonus (a standing bonus would keep
                    // near-best arms in play forever); drift is followed through epsilon.
                    let n = s.count.min(1000) as f64;
                    let own = s.correction();
                    for k in 0..3 {
                        correction[k] = (n * own[k] + SHRINK * transfer[k]) / (n + SHRINK);
                    }
                } else if codec != CodecSpec::Raw {
                    // Raw's cost is known exactly a priori: no optimism needed.
                    correction = transfer;
                    optimism = self.config.exploration * transfer_optimism;
                }
            }
            if let (CodecSpec::Zstd(_), Some(shared)) = (codec, zstd_ratio[usize::from(reference)]) {
                correction[0] = shared;
            }
            let e = Estimate {
                ratio: (p.ratio * correction[0].exp()).min(1.01),
                encode_ns: p.encode_ns * correction[1].exp(),
                decode_ns: p.decode_ns * correction[2].exp(),
            };
            let c = cost(mode, &self.config, bandwidth, input, &e, threads, backlog);
            let bound = c * (1.0 - optimism);
            costs[i] = c;
            bounds[i] = bound;
            if bound < best.0 {
                best = (bound, i);
            }
        }
        Evaluation { best, bounds, costs, priors }
    }

    fn choose(&self, profile: &Profile, context: &Context) -> Choice {
        let b = bucket(profile, context, &self.config);
        let mut st = lock(&self.state);
        let Evaluation { best, bounds, priors, .. } = self.evaluate(&st, b, profile, context);
        let n_arms = self.arms.len();
        let mut pick = best.1;
        if self.learn && self.config.epsilon > 0.0 {
            let roll = (st.next_random() >> 11) as f64 / (1u64 << 53) as f64;
            if roll < self.config.epsilon {
                // A random plausible arm: within half again the best bound.
                let plausible: Vec<usize> = (0..n_arms).filter(|&i| bounds[i] <= best.0 * 1.5).collect();
                if !plausible.is_empty() {
                    pick = plausible[(st.next_random() % plausible.len() as u64) as usize];
                }
            }
        }
        let (codec, reference) = self.arms[pick];
        let p = priors[pick];
        let ticket =
            Ticket { bucket: b, prior: [p.ratio as f32, p.encode_ns as f32, p.decode_ns as f32].map(f32::to_bits) };
        Choice { codec, reference, ticket }
    }

    fn observe(&self, choice: &Choice, outcome: &Outcome) {
        if !self.learn || outcome.input_bytes == 0 {
            return;
        }
        let Some(i) = self.arms.iter().position(|&(c, r)| c == choice.codec && r == choice.reference) else { return };
        let b = choice.ticket.bucket.0 as usize;
        if b >= BUCKETS {
            return;
        }
        let [prior_ratio, prior_encode, prior_decode] = choice.ticket.prior.map(|bits| f64::from(f32::from_bits(bits)));
        if !(prior_ratio > 0.0 && prior_encode > 0.0 && prior_decode > 0.0) {
            return;
        }
        let input = outcome.input_bytes as f64;
        // Log of observed / prior, bounded so one absurd measurement cannot dominate.
        let log_ratio = |observed: f64, prior: f64| (observed.max(1e-6) / prior).ln().clamp(-8.0, 8.0);
        let ratio = log_ratio(outcome.output_bytes as f64 / input, prior_ratio);
        let encode = log_ratio(outcome.encode.as_nanos() as f64 / input, prior_encode);
        let decode = outcome.decode.map(|d| log_ratio(d.as_nanos() as f64 / input, prior_decode));
        let alpha = self.config.learning_rate;
        let forget = 1.0 - alpha / 10.0;
        let n_arms = self.arms.len();
        let mut st = lock(&self.state);
        for s in &mut st.stats[b * n_arms..(b + 1) * n_arms] {
            s.weight *= forget;
        }
        let update = |s: &mut ArmStats| {
            let a = if s.count == 0 { 1.0 } else { alpha };
            s.ratio += a * (ratio - s.ratio);
            s.encode += a * (encode - s.encode);
            if let Some(d) = decode {
                let ad = if s.decodes == 0 { 1.0 } else { alpha };
                s.decode += ad * (d - s.decode);
                s.decodes += 1;
            }
            s.count += 1;
            s.weight += 1.0;
        };
        update(&mut st.stats[b * n_arms + i]);
        update(&mut st.global[size_band(b) * n_arms + i]);
    }

    fn set_mode(&self, mode: NetworkMode) {
        lock(&self.state).mode = mode;
    }

    fn mode(&self) -> NetworkMode {
        lock(&self.state).mode
    }

    fn set_bandwidth(&self, bytes_per_second: f64) {
        if bytes_per_second.is_finite() && bytes_per_second > 0.0 {
            lock(&self.state).bandwidth = bytes_per_second;
        }
    }

    fn explain(&self, profile: &Profile, context: &Context) -> Vec<(String, f64, f64)> {
        let b = bucket(profile, context, &self.config);
        let st = lock(&self.state);
        let e = self.evaluate(&st, b, profile, context);
        self.arms
            .iter()
            .enumerate()
            .filter(|(i, _)| e.costs[*i].is_finite())
            .map(|(i, (codec, r))| (format!("{codec}{}", if *r { "+ref" } else { "" }), e.costs[i], e.bounds[i]))
            .collect()
    }

    fn observations(&self) -> u64 {
        lock(&self.state).global.iter().map(|s| s.count).sum()
    }
}

/// Chooses from the profile and the mode's cost model alone; never changes its mind.
#[derive(Debug)]
pub struct StaticSelector(Core);

impl StaticSelector {
    /// A static selector (`adaptive_enabled` is ignored).
    pub fn new(config: SelectorConfig) -> Result<Self> {
        Ok(StaticSelector(Core::new(config, false)?))
    }
}

/// Starts from the static model and learns, per profile bucket and choice, moving averages of
/// ratio and speed; explores rarely tried choices that could win (lower confidence bound) and,
/// with probability `epsilon`, a random plausible one; forgets slowly so it follows drift.
#[derive(Debug)]
pub struct LearningSelector(Core);

impl LearningSelector {
    /// A learning selector.
    pub fn new(config: SelectorConfig) -> Result<Self> {
        Ok(LearningSelector(Core::new(config, true)?))
    }

    /// Outcomes learned from so far.
    pub fn observations(&self) -> u64 {
        self.0.observations()
    }

    /// Every applicable choice with its estimated cost under the current mode and the bound
    /// the choice is made on (cost less exploration optimism): why the selector chooses what it
    /// does.
    pub fn explain(&self, profile: &Profile, context: &Context) -> Vec<(String, f64, f64)> {
        self.0.explain(profile, context)
    }
}

macro_rules! forward_selector {
    ($t:ty) => {
        impl Selector for $t {
            fn choose(&self, profile: &Profile, context: &Context) -> Choice {
                self.0.choose(profile, context)
            }
            fn observe(&self, choice: &Choice, outcome: &Outcome) {
                self.0.observe(choice, outcome)
            }
            fn set_mode(&self, mode: NetworkMode) {
                self.0.set_mode(mode)
            }
            fn mode(&self) -> NetworkMode {
                self.0.mode()
            }
            fn set_bandwidth(&self, bytes_per_second: f64) {
                self.0.set_bandwidth(bytes_per_second)
            }
        }
    };
}
forward_selector!(StaticSelector);
forward_selector!(LearningSelector);
