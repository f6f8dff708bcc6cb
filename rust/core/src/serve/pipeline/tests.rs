//! Tests of `feed` itself: stage timings, exploration share, caps on skewed catalogues,
//! experiment routing, bounds, one config snapshot, the log never losing rows silently.

use super::*;
use crate::ann::{HnswParams, Metric};
use crate::eventlog::EventLogConfig;
use crate::rank::{LayerSpec, Mlp, MlpConfig};
use crate::rerank::Policy;
use crate::serve::store::ItemInfo;
use crate::split::{Layer, Variant};

const DIM: usize = 4;

fn ranker(version: &str, tasks: usize, seed: f32) -> Arc<Mlp> {
    let d = user_width(DIM) + item_width(DIM);
    let weight: Vec<f32> = (0..d * tasks)
        .map(|i| ((i as f32 + seed) * 0.37).sin() * 0.1)
        .collect();
    let mut cfg = MlpConfig::new(
        vec![LayerSpec {
            weight,
            in_dim: d,
            out_dim: tasks,
            bias: vec![0.0; tasks],
        }],
        version,
    );
    cfg.input_schema = Some(vec![
        ("user".into(), user_width(DIM)),
        ("item".into(), item_width(DIM)),
    ]);
    Arc::new(Mlp::new(cfg).unwrap())
}

struct World {
    pipe: Pipeline,
}

/// `n` items; item i has topic `i % topics` and creator `creator(i)`.
fn world(n: u64, explore: f64, policy: Policy, creator: impl Fn(u64) -> u64) -> World {
    world_with(n, explore, policy, creator, None, vec![])
}

fn world_with(
    n: u64,
    explore: f64,
    policy: Policy,
    creator: impl Fn(u64) -> u64,
    log: Option<Arc<EventLog>>,
    layers: Vec<Layer>,
) -> World {
    let index = Arc::new(HnswIndex::new(DIM, Metric::Ip, HnswParams::default()).unwrap());
    let tasks = log.as_ref().map_or(3, |l| l.config().tasks.len());
    let rankers = Arc::new(RankerSet::new(ranker("v1", tasks, 0.0)));
    let reranker = Arc::new(Reranker::new(policy).unwrap());
    let split = TrafficSplit::new(explore, "fyp", layers).unwrap();
    let cfg = ServingConfig {
        explore_rate: explore,
        candidates: 200,
        ..ServingConfig::default()
    };
    let pipe = Pipeline::new(
        index,
        rankers,
        reranker,
        split,
        log,
        cfg,
        b"0123456789abcdef",
        PipelineOptions::default(),
    )
    .unwrap();
    let infos: Vec<ItemInfo> = (0..n)
        .map(|i| ItemInfo {
            id: i + 1,
            topic: (i % 10) as u32,
            creator: creator(i),
            category: 0,
            upload_ts: 0.0,
        })
        .collect();
    let emb: Vec<f32> = (0..n as usize * DIM)
        .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
        .collect();
    pipe.upsert_items(&infos, &emb, true, false).unwrap();
    World { pipe }
}

fn caps() -> Policy {
    Policy {
        window: 20,
        max_topic_share: Some(0.4),
        max_per_creator: Some(2),
        ..Policy::default()
    }
}

const NOW: f64 = 1_700_000_000.0;

#[test]
fn feed_reports_every_stage_and_serves_n() {
    let w = world(500, 0.05, caps(), |i| i % 50);
    let r = w.pipe.feed("alice", "r1", 20, NOW).unwrap();
    assert_eq!(r.slots.len(), 20);
    assert_eq!(r.timings.len(), Stage::ALL.len());
    assert!(r.timings.iter().all(|t| *t >= 0.0 && t.is_finite()));
    assert_eq!(Stage::Log.name(), "log");
    let positions: Vec<usize> = r.slots.iter().map(|s| s.position).collect();
    assert_eq!(positions, (0..20).collect::<Vec<_>>());
    assert_eq!(r.predictions.len(), 20 * 3);
}

#[test]
fn exploration_share_is_the_setpoint() {
    let w = world(2000, 0.2, Policy::default(), |i| i);
    let mut ex = 0usize;
    let mut total = 0usize;
    for q in 0..300 {
        let r = w
            .pipe
            .feed(&format!("u{q}"), &format!("r{q}"), 20, NOW)
            .unwrap();
        ex += r
            .slots
            .iter()
            .filter(|s| s.source == Source::Exploration)
            .count();
        total += r.slots.len();
    }
    let share = ex as f64 / total as f64;
    let sigma = (0.2f64 * 0.8 / total as f64).sqrt();
    assert!((share - 0.2).abs() < 3.0 * sigma, "share {share}");
}

/// Counts, per response, the worst creator and topic counts over every window of `w` slots.
fn worst_window(slots: &[Slot], w: usize) -> (usize, usize) {
    let mut worst = (0, 0);
    for start in 0..slots.len() {
        let win = &slots[start..(start + w).min(slots.len())];
        for s in win {
            let c = win.iter().filter(|x| x.creator == s.creator).count();
            let t = win.iter().filter(|x| x.topic == s.topic).count();
            worst = (worst.0.max(c), worst.1.max(t));
        }
    }
    worst
}

#[test]
fn exploration_respects_the_caps_on_a_skewed_catalogue() {
    // one creator owns half the catalogue; 30% exploration: pinned items alone would often
    // give that creator 3 slots of 20
    let w = world(1000, 0.3, caps(), |i| if i % 2 == 0 { 0 } else { i });
    for q in 0..200 {
        let r = w
            .pipe
            .feed(&format!("u{q}"), &format!("r{q}"), 20, NOW)
            .unwrap();
        let (c, t) = worst_window(&r.slots, 20);
        let relaxed: Vec<&str> = r.relaxed.iter().map(|x| x.0).collect();
        assert!(
            c <= 2 || relaxed.contains(&"max_per_creator"),
            "request {q}: {c} items of one creator, relaxed {relaxed:?}"
        );
        assert!(
            t <= 8 || relaxed.contains(&"max_topic_share"),
            "request {q}: topic {t}"
        );
        for s in r.slots.iter().filter(|s| s.source == Source::Exploration) {
            assert!(s.propensity > 0.0 && s.propensity <= 1.0);
        }
    }
}

#[test]
fn exploration_propensity_is_conditional_on_the_caps() {
    // 10 items: creators 0,0,0,0,0,1,2,3,4,5; every slot explores; cap 1 per creator
    let policy = Policy {
        window: 20,
        max_per_creator: Some(1),
        ..Policy::default()
    };
    let w = world(10, 1.0, policy, |i| if i < 5 { 0 } else { i - 4 });
    let r = w.pipe.feed("u", "r", 6, NOW).unwrap();
    assert_eq!(r.slots.len(), 6);
    let mut creators: Vec<u64> = r.slots.iter().map(|s| s.creator).collect();
    creators.sort_unstable();
    creators.dedup();
    assert_eq!(creators.len(), 6, "{:?}", r.slots);
    // slot 0 draws from all 10; the last slot from the one item left admissible
    assert!((r.slots[0].propensity - 0.1).abs() < 1e-12);
    assert!((r.slots[5].propensity - 1.0).abs() < 1e-12);
}

#[test]
fn bad_requests_are_refused_with_the_argument_named() {
    let w = world(50, 0.05, Policy::default(), |i| i);
    let msg = |e: crate::Error| e.to_string();
    assert!(msg(w.pipe.feed("u", "r", 0, NOW).unwrap_err()).contains("n must be in"));
    assert!(msg(w.pipe.feed("u", "r", MAX_FEED_N + 1, NOW).unwrap_err()).contains("n must be in"));
    assert!(msg(w.pipe.feed("", "r", 5, NOW).unwrap_err()).contains("user_id"));
    assert!(msg(w.pipe.feed("u", "", 5, NOW).unwrap_err()).contains("request_id"));
    assert!(msg(w.pipe.feed("u", "r", 5, f64::NAN).unwrap_err()).contains("now"));
    let big = ItemInfo {
        id: 9999,
        topic: 3_000_000_000,
        creator: 1,
        category: 0,
        upload_ts: 0.0,
    };
    let e = w
        .pipe
        .upsert_items(&[big], &[0.0; DIM], true, true)
        .unwrap_err();
    assert!(msg(e).contains("topic 3000000000"));
    assert!(!w.pipe.index().contains(9999));
}

#[test]
fn impression_ids_are_unique_per_user_and_stable_per_retry() {
    let w = world(300, 0.05, Policy::default(), |i| i);
    let a = w.pipe.feed("alice", "same", 10, NOW).unwrap();
    let b = w.pipe.feed("bob", "same", 10, NOW).unwrap();
    for (x, y) in a.slots.iter().zip(&b.slots) {
        assert_ne!(x.impression_id, y.impression_id);
    }
    assert_eq!(
        ingest::impression_id("same", &a.user_token, 3),
        a.slots[3].impression_id
    );
    // engage credits the user who saw it
    w.pipe
        .engage(
            &a.slots[0].impression_id,
            5.0,
            true,
            false,
            false,
            false,
            NOW + 1.0,
        )
        .unwrap();
    let key = w.pipe.user_key("alice");
    assert!(w
        .pipe
        .users
        .with_user(key, |u| u.unwrap().history.len() == 1));
    assert!(w.pipe.users.with_user(w.pipe.user_key("bob"), |u| u
        .is_none_or(|u| u.history.is_empty())));
}

#[test]
fn config_updates_are_one_snapshot() {
    let w = world(100, 0.05, Policy::default(), |i| i);
    let ch = |k: &str, v: Value| (k.to_owned(), v);
    std::thread::scope(|s| {
        for t in 0..4 {
            let p = &w.pipe;
            s.spawn(move || {
                for i in 0..200 {
                    let rate = f64::from((t * 200 + i) % 100) / 100.0;
                    p.update_config(&[ch("explore_rate", Value::Float(rate))], None)
                        .unwrap();
                    let sv = p.serving();
                    assert_eq!(sv.config.explore_rate, sv.split.explore_rate());
                }
            });
        }
    });
    let sv = w.pipe.serving();
    assert_eq!(sv.config.explore_rate, sv.split.explore_rate());
    let e = w
        .pipe
        .update_config(&[ch("candidates", Value::Int(-1))], None)
        .unwrap_err();
    assert!(e.to_string().contains("candidates"));
    let e = w
        .pipe
        .update_config(&[ch("nope", Value::Int(1))], None)
        .unwrap_err();
    assert!(e.to_string().contains("unknown config key"));
}

#[test]
fn routed_users_are_ranked_by_their_model_and_exploration_stays_live() {
    let layer = Layer {
        name: "ranker".into(),
        variants: vec![Variant {
            name: "candidate".into(),
            start: 0,
            end: 5000,
        }],
    };
    let w = world_with(500, 0.3, Policy::default(), |i| i, None, vec![layer]);
    w.pipe.rankers.add_shadow(ranker("v2", 3, 5.0)).unwrap();
    assert!(w.pipe.set_route("ranker", "candidate", Some("v9")).is_err());
    assert!(w.pipe.set_route("nope", "candidate", Some("v2")).is_err());
    w.pipe.set_route("ranker", "candidate", Some("v2")).unwrap();
    let split = w.pipe.split();
    let (mut routed, mut live, mut explored) = (0, 0, 0);
    for q in 0..200 {
        let user = format!("u{q}");
        let r = w.pipe.feed(&user, &format!("r{q}"), 20, NOW).unwrap();
        let in_variant = split.variant("ranker", &r.user_token).unwrap() == Some("candidate");
        assert_eq!(r.model_version, if in_variant { "v2" } else { "v1" });
        if in_variant {
            routed += 1;
            // the routed model's predictions are the frozen ones, not a shadow's
            assert!(r.shadows.iter().all(|s| s.version != "v2"));
            // the exploration slots keep the live model's prediction and version, in the
            // response and in every logged row (impressions and ranker scores)
            let recs = records::request_records(&r, &split, vec![], vec![], NOW);
            for (i, s) in r.slots.iter().enumerate() {
                let want = if s.source == Source::Exploration {
                    "v1"
                } else {
                    "v2"
                };
                assert_eq!(r.slot_version(i), want);
                assert_eq!(recs.impressions[i].model_version, want);
                assert!(recs
                    .scores
                    .iter()
                    .any(|x| x.impression_id == s.impression_id
                        && !x.is_shadow
                        && x.model_version == want));
            }
            explored += r
                .slots
                .iter()
                .filter(|s| s.source == Source::Exploration)
                .count();
        } else {
            live += 1;
            assert!(r.shadows.iter().any(|s| s.version == "v2"));
        }
    }
    assert!(routed > 50 && live > 50 && explored > 50);
    assert_eq!(w.pipe.stats.routed_requests.load(Ordering::Relaxed), routed);
}

#[test]
fn a_shadow_the_log_cannot_record_is_refused_and_refusals_are_counted() {
    let dir = std::env::temp_dir().join(format!("fyp-pipe-{}", std::process::id()));
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    }
    let cfg = EventLogConfig {
        tasks: vec!["a".into(), "b".into(), "c".into()],
        ..EventLogConfig::new(&dir)
    };
    let log = EventLog::open(cfg).unwrap();
    let w = world_with(
        200,
        0.05,
        Policy::default(),
        |i| i,
        Some(log.clone()),
        vec![],
    );
    let e = w.pipe.add_shadow(ranker("v5", 5, 1.0)).unwrap_err();
    assert!(e.to_string().contains("5 tasks"), "{e}");
    w.pipe.feed("u", "r0", 10, NOW).unwrap();
    assert_eq!(w.pipe.stats.log_rejected.load(Ordering::Relaxed), 0);
    log.close().unwrap();
    w.pipe.feed("u", "r1", 10, NOW).unwrap();
    assert_eq!(w.pipe.stats.log_rejected.load(Ordering::Relaxed), 1);
    assert!(w.pipe.stats.log_rows_rejected.load(Ordering::Relaxed) >= 10);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_host_source_supplies_candidates() {
    struct Trending;
    impl CandidateSource for Trending {
        fn name(&self) -> &str {
            "trending"
        }
        fn fetch(
            &self,
            ctx: &SourceContext<'_>,
            budget: usize,
            _taken: &(dyn Fn(u64) -> bool + Sync),
        ) -> Result<Vec<usize>> {
            Ok((0..budget)
                .filter_map(|i| ctx.items.slot_of(400 + i as u64))
                .collect())
        }
    }
    let w = world(500, 0.0, Policy::default(), |i| i);
    assert!(w.pipe.add_source(Arc::new(Trending), 0.0).is_err());
    w.pipe.add_source(Arc::new(Trending), 0.5).unwrap();
    let r = w.pipe.feed("u", "r", 20, NOW).unwrap();
    assert_eq!(r.n_candidates, 200);
}

fn tower(version: &str, inputs: usize, outputs: usize) -> Arc<Mlp> {
    let weight: Vec<f32> = (0..inputs * outputs)
        .map(|i| ((i as f32) * 0.71).cos())
        .collect();
    let cfg = MlpConfig::new(
        vec![LayerSpec {
            weight,
            in_dim: inputs,
            out_dim: outputs,
            bias: vec![0.0; outputs],
        }],
        version,
    );
    Arc::new(Mlp::new(cfg).unwrap())
}

#[test]
fn a_retrieval_swap_reconciles_the_index_and_embeds_later_uploads() {
    let w = world(300, 0.0, Policy::default(), |i| i);
    let items = w.pipe.items.read();
    let content: Vec<f32> = (0..200).flat_map(|s| items.embedding(s).to_vec()).collect();
    drop(items);
    let (ut, it) = (tower("u1", user_width(DIM), 3), tower("i1", DIM, 3));
    let index = Arc::new(HnswIndex::new(3, Metric::Ip, HnswParams::default()).unwrap());
    let ids: Vec<u64> = (1..=200).collect();
    index
        .add(&ids, &it.predict(&content, 200).unwrap())
        .unwrap();
    w.pipe.remove_items(&[5], NOW).unwrap();
    let bad = Retrieval {
        version: "t1".into(),
        user_tower: Some(ut.clone()),
        item_tower: None,
        index: index.clone(),
    };
    assert!(w.pipe.set_retrieval(bad).is_err());
    w.pipe
        .set_retrieval(Retrieval {
            version: "t1".into(),
            user_tower: Some(ut),
            item_tower: Some(it.clone()),
            index: index.clone(),
        })
        .unwrap();
    // items 201..=300 were added by the swap, item 5 (taken down) removed
    assert_eq!(index.len(), 299);
    assert!(index.contains(300) && !index.contains(5));
    let e = [0.5f32, -0.25, 0.125, 1.0];
    let up = ItemInfo {
        id: 1000,
        topic: 1,
        creator: 1,
        category: 0,
        upload_ts: NOW,
    };
    w.pipe.upsert_items(&[up], &e, true, true).unwrap();
    assert_eq!(index.get_vector(1000).unwrap(), it.predict(&e, 1).unwrap());
    // a warm user is served through the tower's index
    let r = w.pipe.feed("u", "r0", 10, NOW).unwrap();
    w.pipe
        .engage(
            &r.slots[0].impression_id,
            9.0,
            true,
            false,
            false,
            false,
            NOW + 1.0,
        )
        .unwrap();
    let r = w.pipe.feed("u", "r1", 10, NOW + 2.0).unwrap();
    assert!(!r.cold_start && r.slots.len() == 10);
    assert_eq!(w.pipe.retrieval().version, "t1");
}

fn snap_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("fyp-pipe-snap-{name}-{}", std::process::id()));
    match std::fs::remove_dir_all(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clean {}: {e}", d.display()),
    }
    d
}

fn upload(p: &Pipeline, id: u64) {
    let info = ItemInfo {
        id,
        topic: (id % 7) as u32,
        creator: id % 13,
        category: 0,
        upload_ts: NOW + id as f64,
    };
    let e = [0.1 * (id % 5) as f32, -0.2, 0.3, 0.05 * (id % 3) as f32];
    p.upsert_items(&[info], &e, true, false).unwrap();
}

#[test]
fn a_snapshot_restores_the_same_catalogue_and_serves() {
    let d = snap_dir("restore");
    let a = world(300, 0.0, caps(), |i| i % 30).pipe;
    a.remove_items(&[5, 6], NOW).unwrap();
    a.set_creator_authority(&[1, 2], &[0.5, 0.25]).unwrap();
    let r = a.save_snapshot(&d, 2).unwrap();
    assert_eq!(r.items, 298);
    let b = world(0, 0.0, caps(), |i| i).pipe;
    upload(&b, 10_000); // not in the snapshot: taken down by the load
    let l = b.load_snapshot(&d).unwrap();
    assert_eq!((l.items, l.skipped.len()), (298, 0));
    assert_eq!(b.catalog_digest(), a.catalog_digest());
    assert_eq!(b.index().len(), 298);
    assert_eq!(b.batch().checksum(), a.batch().checksum());
    assert_eq!(b.feed("u", "r", 20, NOW + 1.0).unwrap().slots.len(), 20);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let d = snap_dir("fallback");
    let a = world(100, 0.0, caps(), |i| i % 10).pipe;
    a.save_snapshot(&d, 3).unwrap();
    let first = a.catalog_digest();
    upload(&a, 5000);
    let newest = a.save_snapshot(&d, 3).unwrap().path;
    let items = newest.join("items.bin");
    let mut b = std::fs::read(&items).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    std::fs::write(&items, &b).unwrap();
    let c = world(0, 0.0, caps(), |i| i).pipe;
    let l = c.load_snapshot(&d).unwrap();
    assert_eq!(l.skipped.len(), 1, "{:?}", l.skipped);
    assert!(l.skipped[0].contains("items.bin fails its xxh3 checksum"));
    assert_eq!(c.catalog_digest(), first);
    assert_eq!(c.snapshot_state().fallbacks.load(Ordering::Relaxed), 1);
    // both corrupt: refused, with each reason
    let older = crate::serve::snapshot::list(&d).unwrap()[1].join("index.hnsw");
    let n = std::fs::metadata(&older).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&older)
        .unwrap()
        .set_len(n / 2)
        .unwrap();
    let e = c.load_snapshot(&d).err().unwrap().to_string();
    assert!(
        e.contains("no valid snapshot") && e.contains("truncated"),
        "{e}"
    );
    let empty = snap_dir("empty");
    assert!(matches!(
        c.load_snapshot(&empty),
        Err(crate::Error::NotFound(_))
    ));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_snapshot_taken_during_uploads_is_a_consistent_cut() {
    let d = snap_dir("cut");
    let a = Arc::new(world(200, 0.0, caps(), |i| i % 20).pipe);
    let w = {
        let a = a.clone();
        std::thread::spawn(move || {
            for k in 0..400u64 {
                upload(&a, 100_000 + k);
                upload(&a, k % 200 + 1); // replaced: its old node tombstoned after some cuts
                if k % 5 == 0 {
                    a.remove_items(&[(k * 7) % 200 + 1], NOW).unwrap();
                }
            }
        })
    };
    let mut seen = Vec::new();
    // at most 40 cuts, all kept (keep 50): a fast machine would otherwise prune the first
    // ones while the loop still holds their paths
    while (!w.is_finished() && seen.len() < 40) || seen.len() < 3 {
        let r = a.save_snapshot(&d, 50).unwrap();
        seen.push(r.path);
    }
    w.join().unwrap();
    for p in &seen {
        let b = world(0, 0.0, caps(), |i| i).pipe;
        let ms = crate::serve::snapshot::read_manifest(p).unwrap().created_ms;
        let l = b.load_snapshot_where(&d, |m| m.created_ms == ms).unwrap();
        // the index holds exactly the table's live items: no upload half in the cut
        assert_eq!(b.index().len(), l.items);
        assert_eq!(b.items.read().n_live(), l.items);
        let mut ids = b.index().ids();
        ids.sort_unstable();
        let t = b.items.read();
        let mut live: Vec<u64> = (0..t.slots())
            .filter(|&s| t.is_live(s))
            .map(|s| t.id(s))
            .collect();
        live.sort_unstable();
        assert_eq!(ids, live);
    }
    std::fs::remove_dir_all(&d).unwrap();
}
