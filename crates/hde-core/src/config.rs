//! The node's configuration: every option of the layers, validated together.

use std::time::Duration;

use hde_delta::{BaselineContent, DeltaConfig, Policy};
use hde_selector::{NetworkMode, SelectorConfig};

use crate::{Error, Result};

/// Configuration of an HDE node (the seed system's options).
#[derive(Debug, Clone, PartialEq)]
pub struct HdeConfig {
    /// This node's identity in the CRDT replica (distinct per node).
    pub node_id: u64,
    /// Network mode of the first frame; `update_network_mode` changes it.
    pub network_mode: NetworkMode,
    /// Learn codec choices from outcomes ("ML-based selection"); off, choices are static.
    pub enable_adaptive: bool,
    /// Send deltas against baselines; off, every frame is a keyframe.
    pub enable_delta: bool,
    /// Record baseline metadata in the replicated CRDT.
    pub enable_crdt: bool,
    /// Keyframe after this many deltas in a row.
    pub max_delta_chain: u32,
    /// Keyframe when the last one is older than this.
    pub baseline_interval: Duration,
    /// Keyframe when the baseline was last updated longer ago; idle keys are pruned after it.
    pub max_baseline_age: Duration,
    /// Most keys with a baseline.
    pub max_baselines: usize,
    /// Most bytes of baseline state.
    pub max_memory_usage: u64,
    /// Worker threads for segments.
    pub threads: usize,
    /// Link bandwidth for hybrid mode, bytes/s.
    pub bandwidth: f64,
    /// Page size, segment size, XOR threshold, baseline content, image limit.
    pub delta: DeltaConfig,
    /// The selector's options (mode, bandwidth, adaptivity and thresholds are taken from the
    /// fields above).
    pub selector: SelectorConfig,
}

impl HdeConfig {
    /// Defaults for node `node_id`: hybrid mode over 100 Mbit/s, adaptive selection, deltas and
    /// CRDT on, the default keyframe policy, all cores.
    ///
    /// `node_id` names this node in the replicated baseline index: every entry it writes
    /// (which baseline of which key it holds) is tagged with it, and the index's vector
    /// clocks count per node id. It must be unique in a cluster and stable across restarts
    /// of the node (`hde serve` derives it from the node's identity key); a process that
    /// never joins a cluster may use any value.
    pub fn new(node_id: u64) -> Self {
        let delta = DeltaConfig::default();
        let policy = Policy::default();
        let selector = SelectorConfig::default();
        HdeConfig {
            node_id,
            network_mode: NetworkMode::Hybrid,
            enable_adaptive: true,
            enable_delta: true,
            enable_crdt: true,
            max_delta_chain: policy.max_delta_chain,
            baseline_interval: policy.baseline_interval,
            max_baseline_age: policy.max_baseline_age,
            max_baselines: policy.max_baselines,
            max_memory_usage: policy.max_memory_usage,
            threads: delta.threads,
            bandwidth: selector.bandwidth,
            delta,
            selector,
        }
    }

    /// The delta layer's configuration these options make.
    pub fn delta_config(&self) -> DeltaConfig {
        DeltaConfig {
            threads: self.threads,
            policy: Policy {
                max_delta_chain: self.max_delta_chain,
                baseline_interval: self.baseline_interval,
                max_baseline_age: self.max_baseline_age,
                max_baselines: self.max_baselines,
                max_memory_usage: self.max_memory_usage,
            },
            ..self.delta.clone()
        }
    }

    /// The selector's configuration these options make.
    pub fn selector_config(&self) -> SelectorConfig {
        SelectorConfig {
            mode: self.network_mode,
            adaptive_enabled: self.enable_adaptive,
            bandwidth: self.bandwidth,
            ..self.selector.clone()
        }
    }

    /// Checks every value (the layers' own checks included).
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidConfig { what: what.to_owned() });
        if !(self.bandwidth.is_finite() && self.bandwidth > 0.0) {
            return bad("bandwidth must be positive and finite");
        }
        if matches!(self.delta.content, BaselineContent::Bounded { cache_bytes } if cache_bytes > self.max_memory_usage)
        {
            return bad("the bounded baseline cache must fit in max_memory_usage");
        }
        self.delta_config().validate()?;
        self.selector_config().validate().map_err(|e| Error::InvalidConfig { what: e.to_string() })
    }
}
