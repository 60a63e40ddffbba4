use std::time::Duration;

use super::position::{Position, Since};
use super::*;

fn config(size: usize, max_bytes: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ttl: Duration::from_secs(10),
        max_bytes,
        meta_ttl: Duration::from_secs(60),
    }
}

fn message(n: u64) -> Vec<u8> {
    format!(r#"{{"type":"t","content":{n}}}"#).into_bytes()
}

/// The `content` of each frame (plain, short frames: a 2-byte header).
fn contents(frames: &[Wire]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
            v["content"].as_u64().unwrap()
        })
        .collect()
}

fn parse(text: &str) -> Position {
    Position::parse(text).unwrap()
}

/// A position `back` messages behind the stream's current one.
fn behind(history: &mut History, stream: StreamRef<'_>, back: u64, now: u64) -> Position {
    let mut p = parse(&history.position(stream, now));
    p.offset -= back;
    p
}

#[test]
fn off_when_size_is_zero() {
    assert!(History::new(&config(0, 1 << 20)).is_none());
}

#[test]
fn appends_stamp_positions_and_replay_in_order() {
    let mut h = History::new(&config(10, 1 << 20)).unwrap();
    let start = parse(&h.position(StreamRef::All, 0));
    assert_eq!(start.offset, 0);
    for n in 1..=5 {
        let appended = h.append(StreamRef::All, &message(n), 1).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&appended.json).unwrap();
        let pos = parse(v["pos"].as_str().unwrap());
        assert_eq!((pos.offset, &pos.epoch), (n, &start.epoch));
        assert_eq!(&appended.wire[2..], &appended.json[..]);
    }
    assert_eq!(
        contents(&h.replay(StreamRef::All, &start, 2).unwrap()),
        [1, 2, 3, 4, 5]
    );
    let at3 = Position {
        offset: 3,
        ..start.clone()
    };
    assert_eq!(
        contents(&h.replay(StreamRef::All, &at3, 2).unwrap()),
        [4, 5]
    );
    let at5 = Position {
        offset: 5,
        ..start.clone()
    };
    assert_eq!(h.replay(StreamRef::All, &at5, 2).unwrap().len(), 0);
    // Past the last offset, another epoch, another kind: not this stream's.
    let at6 = Position {
        offset: 6,
        ..start.clone()
    };
    assert!(h.replay(StreamRef::All, &at6, 2).is_none());
    let foreign = Position {
        epoch: "zzzzzzzz".into(),
        ..start.clone()
    };
    assert!(h.replay(StreamRef::All, &foreign, 2).is_none());
    let as_user = Position {
        kind: Kind::User,
        ..start
    };
    assert!(h.replay(StreamRef::All, &as_user, 2).is_none());
    assert_eq!(h.entries(), 5);
}

#[test]
fn streams_are_separate_and_user_epochs_differ() {
    let mut h = History::new(&config(10, 1 << 20)).unwrap();
    h.append(StreamRef::User("ann"), &message(1), 0).unwrap();
    h.append(StreamRef::User("bob"), &message(2), 0).unwrap();
    h.append(StreamRef::Room("r"), &message(3), 0).unwrap();
    let ann = behind(&mut h, StreamRef::User("ann"), 1, 0);
    let bob = behind(&mut h, StreamRef::User("bob"), 1, 0);
    assert_ne!(ann.epoch, bob.epoch);
    assert_eq!(
        contents(&h.replay(StreamRef::User("ann"), &ann, 0).unwrap()),
        [1]
    );
    // Bob's position is not Ann's: nothing of Bob's is replayed to her.
    assert!(h.replay(StreamRef::User("ann"), &bob, 0).is_none());
    assert!(h.replay(StreamRef::User("carl"), &bob, 0).is_none());
    let room = behind(&mut h, StreamRef::Room("r"), 1, 0);
    assert_eq!(room.kind, Kind::Room);
    assert_eq!(
        contents(&h.replay(StreamRef::Room("r"), &room, 0).unwrap()),
        [3]
    );
}

#[test]
fn size_overflow_fails_the_resume_instead_of_replaying_part() {
    let mut h = History::new(&config(3, 1 << 20)).unwrap();
    let start = parse(&h.position(StreamRef::All, 0));
    for n in 1..=5 {
        h.append(StreamRef::All, &message(n), 0);
    }
    assert_eq!(h.entries(), 3);
    assert!(
        h.replay(StreamRef::All, &start, 0).is_none(),
        "1 and 2 are gone"
    );
    let at1 = Position {
        offset: 1,
        ..start.clone()
    };
    assert!(h.replay(StreamRef::All, &at1, 0).is_none(), "2 is gone");
    let at2 = Position { offset: 2, ..start };
    assert_eq!(
        contents(&h.replay(StreamRef::All, &at2, 0).unwrap()),
        [3, 4, 5]
    );
    assert_eq!(h.stats().evicted, 2);
}

#[test]
fn ttl_drops_old_entries_and_meta_ttl_forgets_the_stream() {
    let mut h = History::new(&config(10, 1 << 20)).unwrap();
    let start = parse(&h.position(StreamRef::All, 0));
    h.append(StreamRef::All, &message(1), 0);
    h.append(StreamRef::All, &message(2), 5_000);
    assert_eq!(h.next_deadline(), Some(SWEEP_MS));
    h.tick(10_000);
    assert_eq!((h.entries(), h.next_deadline()), (1, Some(11_000)));
    assert!(h.replay(StreamRef::All, &start, 10_000).is_none());
    let at1 = Position {
        offset: 1,
        ..start.clone()
    };
    assert_eq!(
        contents(&h.replay(StreamRef::All, &at1, 10_000).unwrap()),
        [2]
    );
    // Entries gone, epoch and offset kept: up to date still resumes.
    h.tick(15_000);
    assert_eq!((h.entries(), h.bytes()), (0, 0));
    let at2 = Position {
        offset: 2,
        ..start.clone()
    };
    assert_eq!(
        h.replay(StreamRef::All, &at2, 15_000).map(|r| r.len()),
        Some(0)
    );
    assert!(h.replay(StreamRef::All, &at1, 15_000).is_none());
    // meta_ttl after the last use: forgotten, a new epoch follows.
    h.tick(5_000 + 60_000);
    assert_eq!(h.streams(), 0);
    assert!(h.replay(StreamRef::All, &at2, 65_000).is_none());
    assert!(!parse(&h.position(StreamRef::All, 65_000))
        .epoch
        .eq(&start.epoch));
}

#[test]
fn max_bytes_drops_the_oldest_of_the_node_first() {
    let one = message(1).len() + 20 + 2 + ENTRY_OVERHEAD; // stamped frame + overhead
    let mut h = History::new(&config(100, 3 * one + 10)).unwrap();
    let a = parse(&h.position(StreamRef::All, 0));
    let u = parse(&h.position(StreamRef::User("ann"), 0));
    h.append(StreamRef::All, &message(1), 0);
    h.append(StreamRef::User("ann"), &message(2), 0);
    h.append(StreamRef::All, &message(3), 0);
    assert_eq!(h.entries(), 3);
    h.append(StreamRef::User("ann"), &message(4), 0);
    assert_eq!(h.entries(), 3);
    assert!(h.bytes() <= 3 * one + 10);
    assert!(h.replay(StreamRef::All, &a, 0).is_none(), "1 went first");
    assert_eq!(
        contents(&h.replay(StreamRef::User("ann"), &u, 0).unwrap()),
        [2, 4]
    );
    let held: usize = h
        .streams
        .iter()
        .flat_map(|(_, s)| s.entries.iter())
        .map(|w| w.len() + ENTRY_OVERHEAD)
        .sum();
    assert_eq!(h.bytes(), held);
}

#[test]
fn the_order_queue_stays_bounded_when_size_drops_entries() {
    let mut h = History::new(&config(1, 1 << 30)).unwrap();
    for n in 0..10_000 {
        h.append(StreamRef::All, &message(n), 0);
    }
    assert_eq!(h.entries(), 1);
    assert!(h.order.len() <= 1 + STALE_SLACK + 1, "{}", h.order.len());
    // What is left still ages out through the order queue.
    h.tick(10_000);
    assert_eq!((h.entries(), h.bytes()), (0, 0));
}

#[test]
fn since_and_positions_agree() {
    let mut h = History::new(&config(10, 1 << 20)).unwrap();
    let a = h.position(StreamRef::All, 0);
    let u = h.position(StreamRef::User("ann"), 0);
    let since = Since::parse(&format!("{a},{u}")).unwrap();
    assert!(h
        .replay(StreamRef::All, since.all.as_ref().unwrap(), 0)
        .is_some());
    assert!(h
        .replay(StreamRef::User("ann"), since.user.as_ref().unwrap(), 0)
        .is_some());
    assert!(h
        .replay(StreamRef::User("bob"), since.user.as_ref().unwrap(), 0)
        .is_none());
}

#[test]
fn a_message_that_is_not_an_object_is_not_kept() {
    let mut h = History::new(&config(10, 1 << 20)).unwrap();
    assert!(h.append(StreamRef::All, b"[1]", 0).is_none());
    assert_eq!(h.entries(), 0);
}
