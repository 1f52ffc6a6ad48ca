//! Integration tests of the selector: mode trade-offs, learning, drift, determinism, threads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::sync::Arc;
use std::time::Duration;

use hde_selector::{
    outcome_cost, uses_reference, Choice, CodecSpec, Context, Error, LearningSelector, NetworkMode, Outcome, Profile,
    Selector, SelectorConfig, StaticSelector,
};

fn compressible(len: u64) -> Profile {
    Profile::from_parts(len, 0.1, 5.5, 0.5)
}

fn config(mode: NetworkMode) -> SelectorConfig {
    SelectorConfig { mode, ..SelectorConfig::default() }
}

/// A synthetic world: each arm's true ratio and speeds (ns/byte) on the data.
fn world(choice: &Choice, input: u64, drifted: bool) -> Outcome {
    let (ratio, enc, dec) = match (choice.codec, choice.reference) {
        (CodecSpec::Raw, _) => (1.0, 0.2, 0.2),
        (CodecSpec::Lz4, false) => (0.35, 2.0, 0.6),
        (CodecSpec::Lz4, true) => (0.34, 2.2, 0.7),
        (CodecSpec::Zstd(params), reference) => {
            let (r, e) = match params.level() {
                1 => (0.25, 3.0),
                3 => (0.22, 4.5),
                9 => (0.20, 16.0),
                _ => (0.19, 70.0),
            };
            // The reference helps a lot, until the data drifts away from it.
            let r = if reference && !drifted {
                r * 0.1
            } else if reference {
                r * 1.1
            } else {
                r
            };
            (r, e + if reference { 1.0 } else { 0.0 }, 1.0)
        }
        (other, _) => panic!("the default codecs hold no {other}"),
    };
    Outcome {
        input_bytes: input,
        output_bytes: (input as f64 * ratio) as u64,
        encode: Duration::from_nanos((input as f64 * enc) as u64),
        decode: Some(Duration::from_nanos((input as f64 * dec) as u64)),
    }
}

fn oracle_cost(cfg: &SelectorConfig, mode: NetworkMode, profile: &Profile, ctx: &Context, drifted: bool) -> f64 {
    let mut best = f64::INFINITY;
    for codec in &cfg.codecs {
        for reference in [false, true] {
            if reference && (!uses_reference(*codec) || ctx.reference_len == 0) {
                continue;
            }
            let c = Choice { codec: *codec, reference, ticket: Default::default() };
            best = best.min(outcome_cost(mode, cfg, cfg.bandwidth, &world(&c, profile.len, drifted), ctx.threads));
        }
    }
    best
}

#[test]
fn modes_make_different_static_choices() {
    let profile = compressible(4 << 20);
    let ctx = Context::default();
    let dc = StaticSelector::new(config(NetworkMode::Datacenter)).unwrap().choose(&profile, &ctx);
    let wan = StaticSelector::new(config(NetworkMode::Internet)).unwrap().choose(&profile, &ctx);
    assert!(dc.codec == CodecSpec::Lz4 || dc.codec.zstd_level() == Some(1), "{dc}");
    assert!(wan.codec.zstd_level().is_some_and(|level| level >= 9), "{wan}");
    // Hybrid follows the bandwidth.
    let hybrid = StaticSelector::new(config(NetworkMode::Hybrid)).unwrap();
    hybrid.set_bandwidth(10e9);
    let fast = hybrid.choose(&profile, &ctx);
    hybrid.set_bandwidth(1e6);
    let slow = hybrid.choose(&profile, &ctx);
    assert_ne!(fast.codec, slow.codec);
    assert!(slow.codec.zstd_level().is_some_and(|level| level >= 9), "{slow}");
}

#[test]
fn incompressible_data_is_sent_raw_when_speed_matters() {
    let noise = Profile::from_parts(4 << 20, 0.0, 7.99, 0.0);
    let choice = StaticSelector::new(config(NetworkMode::Datacenter)).unwrap().choose(&noise, &Context::default());
    assert_eq!(choice.codec, CodecSpec::Raw);
}

#[test]
fn mode_switch_takes_effect_on_the_next_choice() {
    let s = LearningSelector::new(config(NetworkMode::Datacenter)).unwrap();
    let profile = compressible(4 << 20);
    let before = s.choose(&profile, &Context::default());
    s.set_mode(NetworkMode::Internet);
    assert_eq!(s.mode(), NetworkMode::Internet);
    let after = s.choose(&profile, &Context::default());
    assert_ne!(before.codec, after.codec);
}

/// Runs `steps` decisions against the synthetic world; returns the selector's cost over the
/// last `tail` steps relative to the oracle's.
fn run(s: &LearningSelector, mode: NetworkMode, steps: usize, tail: usize, drift_at: Option<usize>) -> f64 {
    let cfg = config(mode);
    let profile = compressible(1 << 20);
    let ctx = Context { reference_len: 1 << 20, threads: 1, reference_gain_permille: None, ..Context::default() };
    let (mut mine, mut best) = (0.0, 0.0);
    for step in 0..steps {
        let drifted = drift_at.is_some_and(|d| step >= d);
        let choice = s.choose(&profile, &ctx);
        let outcome = world(&choice, profile.len, drifted);
        s.observe(&choice, &outcome);
        if step >= steps - tail {
            mine += outcome_cost(mode, &cfg, cfg.bandwidth, &outcome, 1);
            best += oracle_cost(&cfg, mode, &profile, &ctx, drifted);
        }
    }
    mine / best - 1.0
}

#[test]
fn learning_approaches_the_oracle_in_every_mode() {
    for mode in NetworkMode::ALL {
        let s = LearningSelector::new(config(mode)).unwrap();
        let regret = run(&s, mode, 300, 100, None);
        assert!(regret < 0.05, "{mode}: regret {regret}");
        assert_eq!(s.observations(), 300);
    }
}

#[test]
fn learning_follows_drift() {
    let mode = NetworkMode::Internet;
    let s = LearningSelector::new(config(mode)).unwrap();
    // The reference stops helping at step 300; by the last 100 of 700 steps it has adapted.
    let regret = run(&s, mode, 700, 100, Some(300));
    assert!(regret < 0.10, "regret after drift {regret}");
}

#[test]
fn same_seed_same_choices() {
    let trace = |seed| {
        let s = LearningSelector::new(SelectorConfig { seed, epsilon: 0.2, ..config(NetworkMode::Hybrid) }).unwrap();
        let profile = compressible(1 << 20);
        let ctx = Context { reference_len: 1 << 20, threads: 2, reference_gain_permille: None, ..Context::default() };
        (0..200)
            .map(|_| {
                let c = s.choose(&profile, &ctx);
                s.observe(&c, &world(&c, profile.len, false));
                c
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(trace(7), trace(7));
    assert_ne!(trace(7), trace(8));
}

#[test]
fn adaptive_off_means_static() {
    let cfg = SelectorConfig { adaptive_enabled: false, ..config(NetworkMode::Hybrid) };
    let learning = LearningSelector::new(cfg.clone()).unwrap();
    let fixed = StaticSelector::new(cfg).unwrap();
    let profile = compressible(1 << 20);
    let ctx = Context { reference_len: 1 << 20, threads: 1, reference_gain_permille: None, ..Context::default() };
    for _ in 0..50 {
        let c = learning.choose(&profile, &ctx);
        learning.observe(&c, &world(&c, profile.len, false));
        assert_eq!(c, fixed.choose(&profile, &ctx));
    }
    assert_eq!(learning.observations(), 0);
}

#[test]
fn no_reference_means_no_reference_choice() {
    let s = LearningSelector::new(config(NetworkMode::Internet)).unwrap();
    for _ in 0..100 {
        let c = s.choose(&compressible(1 << 20), &Context::default());
        assert!(!c.reference);
        s.observe(&c, &world(&c, 1 << 20, false));
    }
}

#[test]
fn bad_configs_and_modes_are_errors() {
    for cfg in [
        SelectorConfig { learning_rate: 0.0, ..SelectorConfig::default() },
        SelectorConfig { bandwidth: -1.0, ..SelectorConfig::default() },
        SelectorConfig { codecs: vec![], ..SelectorConfig::default() },
        SelectorConfig { small_data_size: 10, large_data_size: 5, ..SelectorConfig::default() },
    ] {
        assert!(matches!(LearningSelector::new(cfg), Err(Error::InvalidConfig { .. })));
    }
    // A level out of range cannot even be named.
    assert!(CodecSpec::zstd(30).is_err());
    assert!(matches!("lan".parse::<NetworkMode>(), Err(Error::UnknownMode { .. })));
    for mode in NetworkMode::ALL {
        assert_eq!(mode.name().parse::<NetworkMode>().unwrap(), mode);
    }
}

#[test]
fn shared_by_threads_with_exact_counts() {
    let s = Arc::new(LearningSelector::new(config(NetworkMode::Hybrid)).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let profile = Profile::from_parts(1 << 20, 0.0, (t + i % 8) as f32, 0.3);
                    let c = s.choose(&profile, &Context::default());
                    s.observe(&c, &world(&c, profile.len, false));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(s.observations(), 1000);
}

#[test]
fn internet_mode_compresses_against_a_reference_whenever_there_is_one() {
    let s = LearningSelector::new(config(NetworkMode::Internet)).unwrap();
    let profile = compressible(1 << 20);
    // However little a sample said the reference saves, and whatever was learnt.
    for gain in [None, Some(1000), Some(990), Some(500)] {
        let ctx = Context { reference_len: 1 << 20, threads: 1, reference_gain_permille: gain, ..Context::default() };
        for _ in 0..20 {
            let choice = s.choose(&profile, &ctx);
            assert!(choice.reference || !uses_reference(choice.codec), "{choice} with gain {gain:?}");
            s.observe(&choice, &world(&choice, profile.len, false));
        }
    }
    // Without one, nothing asks for it.
    let choice = s.choose(&profile, &Context::default());
    assert!(!choice.reference);
}
