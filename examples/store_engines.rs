//! fjall against redb on Herald's workload, to choose the disk store's engine: appends of
//! 100-byte events keyed by channel and position (one event per commit with an fsync each, groups
//! of 32 and 256 per fsync, and one per commit without fsync), and range reads of 100 events after
//! a position in one channel.
//!
//!     cargo run --release --example store_engines [dir]
//!
//! The results that chose fjall are in src/history/disk/mod.rs.

use redb::ReadableDatabase;
use std::time::Instant;

const CHANNELS: u64 = 100;
const VALUE: [u8; 100] = [b'x'; 100];

fn key(ch: u64, pos: u64) -> Vec<u8> {
    let mut k = format!("channel-{ch:04}").into_bytes();
    k.push(0);
    k.extend_from_slice(&pos.to_be_bytes());
    k
}

trait Store {
    fn name(&self) -> &'static str;
    fn append(&self, batch: &[(Vec<u8>, &[u8])], sync: bool);
    fn range(&self, ch: u64, after: u64, n: usize) -> usize;
}

struct Fjall {
    db: fjall::Database,
    ks: fjall::Keyspace,
}
impl Store for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3.1"
    }
    fn append(&self, batch: &[(Vec<u8>, &[u8])], sync: bool) {
        let mut b = self.db.batch();
        for (k, v) in batch {
            b.insert(&self.ks, k.clone(), v.to_vec());
        }
        b.commit().unwrap();
        self.db.persist(if sync { fjall::PersistMode::SyncAll } else { fjall::PersistMode::Buffer }).unwrap();
    }
    fn range(&self, ch: u64, after: u64, n: usize) -> usize {
        let (lo, hi) = (key(ch, after + 1), key(ch, u64::MAX));
        self.ks.range(lo..=hi).take(n).map(|g| g.into_inner().unwrap().1.len()).sum()
    }
}

const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
struct Redb {
    db: redb::Database,
}
impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb 3.1"
    }
    fn append(&self, batch: &[(Vec<u8>, &[u8])], sync: bool) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(if sync { redb::Durability::Immediate } else { redb::Durability::None }).unwrap();
        {
            let mut t = tx.open_table(T).unwrap();
            for (k, v) in batch {
                t.insert(k.as_slice(), *v).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn range(&self, ch: u64, after: u64, n: usize) -> usize {
        let tx = self.db.begin_read().unwrap();
        let t = tx.open_table(T).unwrap();
        let (lo, hi) = (key(ch, after + 1), key(ch, u64::MAX));
        t.range(lo.as_slice()..=hi.as_slice()).unwrap().take(n).map(|r| r.unwrap().1.value().len()).sum()
    }
}

fn run(s: &dyn Store, events: u64, group: usize, sync: bool, pos: &mut u64) -> f64 {
    let start = Instant::now();
    let mut i = 0;
    while i < events {
        let batch: Vec<(Vec<u8>, &[u8])> = (0..group as u64)
            .map(|j| {
                *pos += 1;
                (key((i + j) % CHANNELS, *pos), &VALUE[..])
            })
            .collect();
        s.append(&batch, sync);
        i += group as u64;
    }
    events as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or("/tmp/sb".into());
    for engine in ["fjall", "redb"] {
        let path = std::path::Path::new(&dir).join(engine);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let s: Box<dyn Store> = if engine == "fjall" {
            let db = fjall::Database::builder(&path).open().unwrap();
            let ks = db.keyspace("events", fjall::KeyspaceCreateOptions::default).unwrap();
            Box::new(Fjall { db, ks })
        } else {
            Box::new(Redb { db: redb::Database::create(path.join("db.redb")).unwrap() })
        };
        let mut pos = 0;
        let a = run(&*s, 2_000, 1, true, &mut pos);
        let b = run(&*s, 20_000, 32, true, &mut pos);
        let c = run(&*s, 100_000, 256, true, &mut pos);
        let d = run(&*s, 100_000, 1, false, &mut pos);
        // range reads: 100 events after a position in the middle of a channel's history
        let start = Instant::now();
        let reads = 10_000u64;
        let mut bytes = 0;
        for r in 0..reads {
            bytes += s.range(r % CHANNELS, (r * 7919) % (pos / 2), 100);
        }
        let e = reads as f64 / start.elapsed().as_secs_f64();
        println!(
            "{}: fsync each event {a:.0}/s | fsync per 32 {b:.0}/s | fsync per 256 {c:.0}/s | no fsync, 1 per commit {d:.0}/s | range reads of 100 events {e:.0}/s ({bytes} bytes)",
            s.name()
        );
    }
}
