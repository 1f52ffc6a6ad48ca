//! Loom model of the selector's shared statistics (run by `cargo xtask loom`; empty otherwise):
//! concurrent choices, observations and a mode switch never lose an update, and the switch is
//! seen by every later choice.

#![cfg(hde_loom)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::time::Duration;

use hde_selector::{Context, LearningSelector, NetworkMode, Outcome, Profile, Selector, SelectorConfig};
use loom::sync::Arc;
use loom::thread;

#[test]
fn concurrent_observations_and_mode_switch() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let s = Arc::new(
            LearningSelector::new(SelectorConfig { mode: NetworkMode::Datacenter, ..SelectorConfig::default() })
                .unwrap(),
        );
        let profile = Profile::from_parts(1 << 20, 0.0, 5.0, 0.5);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let s = s.clone();
                thread::spawn(move || {
                    let c = s.choose(&profile, &Context::default());
                    let outcome = Outcome {
                        input_bytes: 1 << 20,
                        output_bytes: 1 << 18,
                        encode: Duration::from_millis(2),
                        decode: None,
                    };
                    s.observe(&c, &outcome);
                })
            })
            .collect();
        let switcher = {
            let s = s.clone();
            thread::spawn(move || s.set_mode(NetworkMode::Internet))
        };
        for w in workers {
            w.join().unwrap();
        }
        switcher.join().unwrap();
        assert_eq!(s.observations(), 2);
        assert_eq!(s.mode(), NetworkMode::Internet);
    });
}
