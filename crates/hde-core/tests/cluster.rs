//! What the index lets a sender do, without a transport: start a returning VM as a delta
//! from either side of a state directory, start a new VM against another one's baseline,
//! and fall back to a keyframe when what the index said is no longer true.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // reason: a test fails by panicking.

use std::path::PathBuf;

use hde_core::delta::BaselineId;
use hde_core::index::Candidate;
use hde_core::session::{Base, Receiver, Refusal, Reply, Sender};
use hde_core::state::{SenderImage, StateDir};
use hde_core::{Hde, HdeConfig};
use hde_corpus::{generate, CorpusConfig};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hde-core-cluster-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn node(id: u64) -> Hde {
    let mut c = HdeConfig::new(id);
    c.threads = 2;
    Hde::new(c).unwrap()
}

fn offer(key: &str, id: BaselineId, shared_pages: u64) -> Candidate {
    Candidate { key: key.into(), id, size: 0, resemblance: 0.5, shared_pages }
}

/// Sends one round from `sender` to `receiver` as frames in memory; returns the reply.
fn deliver(sender: &Sender<'_>, receiver: &Receiver<'_>, key: &str, image: &[u8]) -> (Reply, bool, Option<String>) {
    let mut frame = Vec::new();
    let flight = sender.encode(key, image, &mut frame, false).unwrap();
    let keyframe = flight.summary().header.round.is_keyframe();
    let base_key = flight.summary().header.base_key.clone();
    let reply = match receiver.receive(&frame) {
        Ok(got) => {
            assert!(got.image[..] == image[..], "the receiver's image differs");
            receiver.finish(&got).unwrap()
        }
        Err(e) => receiver.refusal(key, &e),
    };
    sender.confirm(flight, &reply).unwrap();
    (reply, keyframe, base_key)
}

#[test]
fn a_returning_vm_starts_as_a_delta_from_either_side_of_the_state() {
    let dir = tmp("back");
    let images = generate(&CorpusConfig { size: 2 << 20, rounds: 4, ..CorpusConfig::default() }).unwrap();
    let file0 = dir.join("round0.raw");
    std::fs::write(&file0, &images[0]).unwrap();
    let (state_a, state_b) = (StateDir::open(dir.join("a")).unwrap(), StateDir::open(dir.join("b")).unwrap());

    // A sends round 0 to B; each side saves what it holds.
    let a = node(1);
    let b = node(2);
    let (sender_a, receiver_b) = (Sender::new(&a), Receiver::with_state(&b, state_b.clone()));
    let (reply, keyframe, _) = deliver(&sender_a, &receiver_b, "vm", &images[0]);
    assert!(keyframe);
    let Reply::Applied { holds, .. } = reply else { panic!("{reply:?}") };
    state_a.save_sender(&a, "vm", SenderImage { bytes: &images[0], file: Some(&file0) }, 1).unwrap();

    // B (a new process) sends the VM back. An offer of another baseline is no use...
    let b2 = node(2);
    let sender_b = Sender::new(&b2);
    let stale = BaselineId { seq: holds.seq, checksum: holds.checksum ^ 1 };
    assert_eq!(sender_b.adopt("vm", &[offer("vm", stale, 100)], Some(&state_b)), Base::None);
    // ...A's own round, which B received, is: restored from B's receiving side.
    assert_eq!(sender_b.adopt("vm", &[offer("vm", holds, 100)], Some(&state_b)), Base::Own(holds));

    // A (a new process) applies the delta against what it last sent: its sending side.
    let a2 = node(1);
    let receiver_a = Receiver::with_state(&a2, state_a.clone());
    let (reply, keyframe, _) = deliver(&sender_b, &receiver_a, "vm", &images[1]);
    assert!(!keyframe && matches!(reply, Reply::Applied { .. }), "{reply:?}");

    // Stale after all: A's source file changed before the frame came (and A's own newer round
    // is not what the delta names). A refuses the delta, and B's next round is a keyframe.
    std::fs::write(&file0, &images[3]).unwrap();
    let b3 = node(2);
    let sender_b = Sender::new(&b3);
    assert_eq!(sender_b.adopt("vm", &[offer("vm", holds, 100)], Some(&state_b)), Base::Own(holds));
    let a3 = node(1);
    let receiver_a = Receiver::with_state(&a3, StateDir::open(dir.join("a")).unwrap());
    let (reply, keyframe, _) = deliver(&sender_b, &receiver_a, "vm", &images[2]);
    assert!(!keyframe);
    assert!(matches!(reply, Reply::Refused { reason: Refusal::BaselineMismatch, .. }), "{reply:?}");
    assert!(sender_b.needs_keyframe("vm"));
    let (reply, keyframe, _) = deliver(&sender_b, &receiver_a, "vm", &images[2]);
    assert!(keyframe && matches!(reply, Reply::Applied { .. }), "{reply:?}");

    // With only the sending side saved, and its source changed: the baseline is missing.
    state_a.remove(hde_core::state::Side::Receive, "vm").unwrap();
    let b4 = node(2);
    let sender_b = Sender::new(&b4);
    assert_eq!(sender_b.adopt("vm", &[offer("vm", holds, 100)], Some(&state_b)), Base::Own(holds));
    let a4 = node(1);
    let receiver_a = Receiver::with_state(&a4, StateDir::open(dir.join("a")).unwrap());
    let (reply, _, _) = deliver(&sender_b, &receiver_a, "vm", &images[2]);
    assert!(matches!(reply, Reply::Refused { reason: Refusal::MissingBaseline, .. }), "{reply:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_new_vm_is_sent_against_the_most_similar_baseline_both_hold() {
    let dir = tmp("similar");
    let images = generate(&CorpusConfig { size: 2 << 20, rounds: 2, ..CorpusConfig::default() }).unwrap();
    let state_b = StateDir::open(dir.join("b")).unwrap();
    let a = node(1);
    let b = node(2);
    let (sender, receiver) = (Sender::new(&a), Receiver::with_state(&b, state_b.clone()));
    let (reply, _, _) = deliver(&sender, &receiver, "vm1", &images[0]);
    let Reply::Applied { holds, .. } = reply else { panic!("{reply:?}") };

    // Too few shared pages: not worth it.
    assert_eq!(sender.adopt("vm2", &[offer("vm1", holds, 1)], None), Base::None);
    assert_eq!(sender.adopt("vm2", &[offer("vm1", holds, 100)], None), Base::Other { key: "vm1".into(), id: holds });
    // A receiver in a new process loads vm1 from its state to apply vm2's first round.
    let b2 = node(2);
    let receiver = Receiver::with_state(&b2, state_b);
    let (reply, keyframe, base_key) = deliver(&sender, &receiver, "vm2", &images[1]);
    assert!(!keyframe && base_key.as_deref() == Some("vm1"), "{reply:?}");
    assert!(matches!(reply, Reply::Applied { .. }));
    // Its next round is a delta of its own.
    let (_, keyframe, base_key) = deliver(&sender, &receiver, "vm2", &images[1]);
    assert!(!keyframe && base_key.is_none());
    // A receiver without vm1 refuses, naming what it lacks.
    let c = node(3);
    let (sender2, stranger) = (Sender::new(&a), Receiver::new(&c));
    assert!(matches!(sender2.adopt("vm3", &[offer("vm1", holds, 100)], None), Base::Other { .. }));
    let (reply, _, _) = deliver(&sender2, &stranger, "vm3", &images[0]);
    assert!(matches!(reply, Reply::Refused { reason: Refusal::MissingBaseline, .. }), "{reply:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
