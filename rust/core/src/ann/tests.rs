//! Core tests against brute force: recall, removal, replacement, concurrency, persistence.

use super::*;
use std::collections::HashSet;
use std::sync::Arc;

pub(super) fn rng(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// Clustered data (so the graph has structure), `n x dim`.
pub(super) fn data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let centers: Vec<f32> = (0..16 * dim).map(|_| r() * 4.0).collect();
    let mut out = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (i * 7) % 16;
        for j in 0..dim {
            out.push(centers[c * dim + j] + r());
        }
    }
    out
}

pub(super) fn exact(data: &[f32], ids: &[u64], q: &[f32], k: usize, metric: Metric) -> Vec<u64> {
    let dim = q.len();
    let qn: f64 = q.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let mut d: Vec<(f64, u64)> = data
        .chunks_exact(dim)
        .zip(ids)
        .map(|(v, &id)| {
            let dot: f64 = v.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
            let dist = match metric {
                Metric::Ip => 1.0 - dot,
                Metric::Cosine => {
                    let vn: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                    1.0 - dot / (vn * qn)
                }
                Metric::L2 => v
                    .iter()
                    .zip(q)
                    .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                    .sum(),
            };
            (dist, id)
        })
        .collect();
    d.sort_by(|a, b| a.0.total_cmp(&b.0));
    d.into_iter().take(k).map(|x| x.1).collect()
}

fn recall(idx: &HnswIndex, data: &[f32], ids: &[u64], queries: &[f32], k: usize, ef: usize) -> f64 {
    let dim = idx.dim();
    let mut hit = 0;
    let mut tot = 0;
    for q in queries.chunks_exact(dim) {
        let truth: HashSet<u64> = exact(data, ids, q, k, idx.metric()).into_iter().collect();
        let got = idx.search_one(q, k, Some(ef), None).unwrap();
        hit += got.iter().filter(|(id, _)| truth.contains(id)).count();
        tot += truth.len();
    }
    hit as f64 / tot as f64
}

#[test]
fn recall_against_brute_force_all_metrics_and_odd_dims() {
    for (metric, dim) in [(Metric::Ip, 24), (Metric::Cosine, 37), (Metric::L2, 16)] {
        let n = 3000;
        let mut d = data(n, dim, 1);
        if metric == Metric::Ip {
            // Inner-product search is run on normalised embeddings in the product; on raw
            // vectors 1 - dot is not a metric and no HNSW (ours or hnswlib) gets high recall.
            for row in d.chunks_exact_mut(dim) {
                let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                row.iter_mut().for_each(|x| *x /= n);
            }
        }
        let ids: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
        let idx = HnswIndex::new(
            dim,
            metric,
            HnswParams {
                m: 12,
                ef_construction: 100,
                ..Default::default()
            },
        )
        .unwrap();
        idx.add(&ids, &d).unwrap();
        assert_eq!(idx.len(), n);
        let q = data(50, dim, 99);
        let r = recall(&idx, &d, &ids, &q, 10, 200);
        assert!(r > 0.95, "{metric:?} recall {r}");
        // distances ascending and consistent with the metric
        let got = idx.search_one(&q[..dim], 10, Some(50), None).unwrap();
        assert!(got.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}

#[test]
fn remove_and_replace_are_immediate() {
    let dim = 8;
    let n = 500;
    let d = data(n, dim, 2);
    let ids: Vec<u64> = (0..n as u64).collect();
    let idx = HnswIndex::new(dim, Metric::L2, HnswParams::default()).unwrap();
    idx.add(&ids, &d).unwrap();
    let q = &d[5 * dim..6 * dim];
    assert_eq!(idx.search_one(q, 1, None, None).unwrap()[0].0, 5);
    assert_eq!(idx.remove(&[5, 100_000]).unwrap(), 1);
    assert!(!idx.contains(5));
    assert!(idx
        .search_one(q, 50, None, None)
        .unwrap()
        .iter()
        .all(|x| x.0 != 5));
    // replace id 7 with the vector of row 5: it now answers that query
    idx.add(&[7], q).unwrap();
    let top = idx.search_one(q, 1, None, None).unwrap();
    assert_eq!(top[0].0, 7);
    assert!(top[0].1 < 1e-6);
    assert_eq!(idx.len(), n - 1);
    assert_eq!(idx.get_vector(7).unwrap(), q.to_vec());
    let hits = idx.search_one(q, 100, None, None).unwrap();
    let uniq: HashSet<u64> = hits.iter().map(|x| x.0).collect();
    assert_eq!(uniq.len(), hits.len(), "no id twice");
}

#[test]
fn exclude_still_returns_k() {
    let dim = 8;
    let n = 2000;
    let d = data(n, dim, 3);
    let ids: Vec<u64> = (0..n as u64).collect();
    let idx = HnswIndex::new(dim, Metric::L2, HnswParams::default()).unwrap();
    idx.add(&ids, &d).unwrap();
    let q = &d[..dim];
    let near: IdSet = exact(&d, &ids, q, 200, Metric::L2).into_iter().collect();
    let f = |id: u64| near.contains(&id);
    let got = idx.search_one(q, 10, Some(50), Some(&f)).unwrap();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|x| !near.contains(&x.0)));
    let truth = exact(&d, &ids, q, 210, Metric::L2);
    let want: HashSet<u64> = truth[200..].iter().copied().collect();
    let hit = got.iter().filter(|x| want.contains(&x.0)).count();
    assert!(hit >= 8, "exclude recall {hit}/10");
}

#[test]
fn padding_and_empty_index() {
    let idx = HnswIndex::new(4, Metric::Ip, HnswParams::default()).unwrap();
    let r = idx
        .search(&[1.0, 0.0, 0.0, 0.0], 3, None, Some(1), &Exclude::None)
        .unwrap();
    assert_eq!(r.ids, vec![PAD_ID; 3]);
    assert!(r.distances.iter().all(|d| d.is_infinite()));
    idx.add(&[1, 2], &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
        .unwrap();
    let r = idx
        .search(&[1.0, 0.0, 0.0, 0.0], 3, None, Some(2), &Exclude::None)
        .unwrap();
    assert_eq!(r.ids, vec![1, 2, PAD_ID]);
    assert_eq!(r.distances[..2], [0.0, 1.0]);
    assert!(idx.add(&[3], &[f32::NAN, 0.0, 0.0, 0.0]).is_err());
    assert!(idx.add(&[u64::MAX], &[1.0, 0.0, 0.0, 0.0]).is_err());
    assert!(idx.search_one(&[1.0, 0.0, 0.0], 1, None, None).is_err());
    assert!(idx
        .search_one(&[1.0, 0.0, 0.0, 0.0], 0, None, None)
        .is_err());
    assert_eq!(idx.len(), 2);
}

#[test]
fn concurrent_add_search_remove() {
    let dim = 16;
    let n = 4000;
    let d = Arc::new(data(n, dim, 4));
    let idx = Arc::new(
        HnswIndex::new(
            dim,
            Metric::L2,
            HnswParams {
                capacity: 64,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let removed: Arc<HashSet<u64>> = Arc::new((0..n as u64).filter(|i| i % 5 == 0).collect());
    let mut hs = Vec::new();
    for t in 0..4u64 {
        let (d, idx, removed) = (d.clone(), idx.clone(), removed.clone());
        hs.push(std::thread::spawn(move || {
            for i in (t as usize..n).step_by(4) {
                idx.add(&[i as u64], &d[i * dim..(i + 1) * dim]).unwrap();
                let got = idx
                    .search_one(&d[i * dim..(i + 1) * dim], 5, Some(32), None)
                    .unwrap();
                assert!(got.iter().all(|x| (x.0 as usize) < n && x.1.is_finite()));
                if i % 5 == 0 && i >= 4 * 5 {
                    idx.remove(&[(i - 20) as u64]).unwrap();
                }
            }
            let _ = removed;
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    // every 5th id below n - 20 removed
    for i in 0..n as u64 {
        let should = !(i % 5 == 0 && (i as usize) < n - 20);
        assert_eq!(idx.contains(i), should, "{i}");
        if should {
            let q = &d[i as usize * dim..(i as usize + 1) * dim];
            // Approximate search: ef is generous so a miss means a broken graph, not bad luck.
            let got = idx.search_one(q, 1, Some(256), None).unwrap();
            assert!(got[0].1 < 1e-5, "id {i} not found as top-1: {got:?}");
        }
    }
}

#[test]
fn rebuild_keeps_items_and_drops_tombstones() {
    let dim = 8;
    let n = 1500;
    let d = data(n, dim, 5);
    let ids: Vec<u64> = (0..n as u64).collect();
    let idx = HnswIndex::new(dim, Metric::L2, HnswParams::default()).unwrap();
    idx.add(&ids, &d).unwrap();
    idx.remove(&ids[..500]).unwrap();
    let st = idx.stats();
    assert_eq!(st.tombstones + st.free_slots, 500, "{st:?}");
    idx.rebuild(Some(2)).unwrap();
    assert_eq!(idx.stats().tombstones, 0);
    assert_eq!(idx.len(), 1000);
    let r = recall(&idx, &d[500 * dim..], &ids[500..], &d[..20 * dim], 10, 64);
    assert!(r > 0.95, "{r}");
}

/// Rebuilds back to back while two writers add (in parallel batches, whose tasks keep their own
/// handle on the live graph) and remove: every write lands in the graph that ends up live.
#[test]
fn rebuilds_lose_no_concurrent_write() {
    let dim = 8;
    let d = data(6000, dim, 9);
    let idx = Arc::new(HnswIndex::new(dim, Metric::L2, HnswParams::default()).unwrap());
    let first: Vec<u64> = (0..2000).collect();
    idx.add(&first, &d[..2000 * dim]).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rebuilder = {
        let (idx, done) = (Arc::clone(&idx), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || n < 3 {
                idx.rebuild(Some(1)).unwrap();
                n += 1;
            }
            n
        })
    };
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let (idx, d) = (Arc::clone(&idx), d.clone());
            std::thread::spawn(move || {
                for b in 0..50u64 {
                    let lo = 2000 + w * 2000 + b * 40;
                    let ids: Vec<u64> = (lo..lo + 40).collect();
                    let rows = &d[lo as usize * dim..(lo as usize + 40) * dim];
                    idx.add_with_threads(&ids, rows, Some(2)).unwrap();
                    idx.remove(&[w * 1000 + b]).unwrap();
                }
            })
        })
        .collect();
    writers.into_iter().for_each(|t| t.join().unwrap());
    done.store(true, std::sync::atomic::Ordering::Release);
    let rebuilds = rebuilder.join().unwrap();
    let removed: HashSet<u64> = (0..2u64)
        .flat_map(|w| (0..50).map(move |b| w * 1000 + b))
        .collect();
    let want: HashSet<u64> = (0..6000).filter(|i| !removed.contains(i)).collect();
    let got: HashSet<u64> = idx.ids().into_iter().collect();
    assert_eq!(got, want, "after {rebuilds} rebuilds");
    for id in [2000u64, 3999, 4000, 5999, 1500] {
        assert_eq!(
            idx.get_vector(id).unwrap()[..dim],
            d[id as usize * dim..(id as usize + 1) * dim]
        );
    }
}

#[test]
fn save_load_round_trip_and_corruption() {
    let dim = 12;
    let n = 800;
    let d = data(n, dim, 6);
    let ids: Vec<u64> = (0..n as u64).map(|i| i << 20).collect();
    let idx = HnswIndex::new(dim, Metric::Cosine, HnswParams::default()).unwrap();
    idx.add(&ids, &d).unwrap();
    idx.remove(&ids[..10]).unwrap();
    let dir = std::env::temp_dir().join(format!("fyp_hnsw_test_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("i.hnsw");
    idx.save(&p).unwrap();
    let back = HnswIndex::load(&p).unwrap();
    assert_eq!(back.len(), idx.len());
    let a = idx
        .search(&d[..50 * dim], 10, Some(40), Some(1), &Exclude::None)
        .unwrap();
    let b = back
        .search(&d[..50 * dim], 10, Some(40), Some(1), &Exclude::None)
        .unwrap();
    assert_eq!(a, b);
    let bytes = std::fs::read(&p).unwrap();
    let bad = dir.join("bad.hnsw");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        HnswIndex::load(&bad),
        Err(crate::Error::Corrupt(_))
    ));
    let mut flipped = bytes.clone();
    flipped[200] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    assert!(matches!(
        HnswIndex::load(&bad),
        Err(crate::Error::Corrupt(_))
    ));
    std::fs::write(&bad, b"hello world, not an index").unwrap();
    assert!(matches!(
        HnswIndex::load(&bad),
        Err(crate::Error::Corrupt(_))
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The bounded re-rank (stops once no later code distance can beat the k-th float distance)
/// returns what re-ranking every candidate returns, on near-duplicates where the fp16, 8-bit and
/// 4-bit rounding reorder neighbours (with a bound of 0 it fails).
#[test]
fn bounded_rerank_equals_full_rerank() {
    use super::graph::Graph;
    use super::scratch::Cand;
    let (dim, n) = (24usize, 2000usize);
    let mut r = rng(5);
    let modes = [Quantize::Fp16, Quantize::Sq8, Quantize::Sq4];
    for (metric, mode) in [Metric::Ip, Metric::L2]
        .into_iter()
        .flat_map(|m| modes.map(|q| (m, q)))
        .filter(|(m, q)| q.supports(*m))
    {
        let g = Graph::new(dim, metric, 8, 64, n, 1, mode);
        let centers: Vec<f32> = (0..4 * dim).map(|_| r()).collect();
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..dim)
                    .map(|j| centers[(i % 4) * dim + j] + r() * 1e-3)
                    .collect()
            })
            .collect();
        for (i, v) in rows.iter().enumerate() {
            g.insert(i as u64, v).unwrap();
        }
        g.calibrate(None).unwrap();
        let codec = g.codec.get().unwrap();
        let max_norm = rows
            .iter()
            .map(|v| v.iter().map(|x| x * x).sum::<f32>().sqrt())
            .fold(0f32, f32::max);
        for t in 0..20 {
            let mut q = rows[t * 37].clone();
            q.iter_mut().for_each(|x| *x += r() * 1e-3);
            q.resize(g.store.stride, 0.0);
            let qc = codec.query(metric, &q);
            let mut cands: Vec<Cand> = (0..n as u32)
                .map(|id| Cand {
                    d: qc.dist(g.store.code(id)),
                    id,
                })
                .collect();
            cands.sort_unstable();
            cands.truncate(300);
            for k in [1, 10, 100] {
                let (mut a, mut b) = (cands.clone(), cands.clone());
                g.rerank(&q, &mut a, k, qc.error_bound(max_norm, false));
                g.rerank(&q, &mut b, k, f32::INFINITY);
                assert_eq!(a, b, "{metric:?} {mode:?} query {t} k {k}");
            }
        }
    }
}

#[test]
fn keep_best_is_push_then_pop() {
    use super::graph::keep_best;
    use super::scratch::Cand;
    use std::collections::BinaryHeap;
    let mut r = rng(11);
    for ef in [1usize, 2, 7, 64] {
        let (mut a, mut b) = (BinaryHeap::new(), BinaryHeap::new());
        for id in 0..2000u32 {
            // Coarse distances, so ties (broken by node) occur.
            let c = Cand {
                d: (r() * 50.0).round(),
                id,
            };
            let lower = keep_best(&mut a, c, ef);
            b.push(c);
            if b.len() > ef {
                b.pop();
            }
            let want = if b.len() >= ef {
                b.peek().unwrap().d
            } else {
                f32::INFINITY
            };
            assert_eq!(lower, want, "ef {ef}, offer {id}");
            assert_eq!(a.clone().into_sorted_vec(), b.clone().into_sorted_vec());
        }
    }
}
