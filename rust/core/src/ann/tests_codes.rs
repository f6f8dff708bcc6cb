//! The traversal codes an `auto` index chooses, and how a batch that crosses the calibration
//! point is inserted.

use super::tests::{exact, rng};
use super::*;
use std::collections::HashSet;

/// `n x dim` rows around 64 centres spread `spread` apart, each row within +-`width`/2.
fn clusters(n: usize, dim: usize, spread: f32, width: f32, seed: u64) -> Vec<f32> {
    let mut r = rng(seed);
    let centres: Vec<f32> = (0..64 * dim).map(|_| r() * spread).collect();
    (0..n)
        .flat_map(|i| {
            let c = (i * 13) % 64;
            (0..dim)
                .map(|j| centres[c * dim + j] + r() * width)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn recall(idx: &HnswIndex, d: &[f32], ids: &[u64], q: &[f32], ef: usize) -> f64 {
    let dim = idx.dim();
    let mut hit = 0;
    for x in q.chunks_exact(dim) {
        let truth: HashSet<u64> = exact(d, ids, x, 10, Metric::L2).into_iter().collect();
        let got = idx.search_one(x, 10, Some(ef), None).unwrap();
        hit += got.iter().filter(|g| truth.contains(&g.0)).count();
    }
    hit as f64 / (10 * q.len() / dim) as f64
}

fn l2_index(dim: usize) -> HnswIndex {
    let p = HnswParams {
        ef_construction: 100,
        ..HnswParams::default()
    };
    HnswIndex::new(dim, Metric::L2, p).unwrap()
}

#[test]
fn auto_keeps_8bit_codes_only_where_they_keep_neighbours() {
    let dim = 8;
    // Wide clusters: neighbours differ by many 8-bit steps. Tight ones: by a fraction of one.
    for (spread, width, want) in [(1.0, 1.0, "sq8"), (4.0, 0.02, "fp16")] {
        let d = clusters(4000, dim, spread, width, 5);
        let q = clusters(200, dim, spread, width, 6);
        let ids: Vec<u64> = (0..4000).collect();
        let idx = l2_index(dim);
        assert_eq!(idx.params().quantize, Quantize::Auto, "the default");
        idx.add(&ids[..500], &d[..500 * dim]).unwrap();
        assert_eq!(idx.codes(), None, "floats until {CALIBRATE_AT} items");
        idx.add(&ids[500..], &d[500 * dim..]).unwrap();
        assert_eq!(idx.codes(), Some(want), "spread {spread} width {width}");
        let r = recall(&idx, &d, &ids, &q, 64);
        assert!(r >= 0.95, "{want}: recall@10 {r}");
    }
}

#[test]
fn a_batch_crossing_calibration_is_whole_and_fitted_on_all_its_rows() {
    let dim = 16;
    let n = 3000;
    let mut d = clusters(n, dim, 1.0, 1.0, 7);
    // The batch's last rows lie far outside the range of the sample inserted first.
    for x in &mut d[(n - 10) * dim..] {
        *x *= 1.5;
    }
    // Duplicates across the split: the last row of an id wins.
    let mut ids: Vec<u64> = (0..n as u64).collect();
    ids[n - 1] = 5;
    let idx = l2_index(dim);
    idx.add(&ids, &d).unwrap();
    assert_eq!(idx.codes(), Some("sq8"));
    assert_eq!(idx.len(), n - 1);
    assert_eq!(idx.get_vector(5).unwrap(), d[(n - 1) * dim..].to_vec());
    for row in d[(n - 10) * dim..].chunks_exact(dim) {
        assert_eq!(idx.codes_clip(row), Some(false));
        let got = idx.search_one(row, 1, Some(32), None).unwrap();
        assert_eq!(got[0].1, 0.0, "an outlier finds itself");
    }
    // A bad row anywhere refuses the whole batch, before the split inserts anything.
    let fresh = l2_index(dim);
    let mut bad = d.clone();
    bad[(n - 1) * dim] = f32::NAN;
    assert!(fresh.add(&ids, &bad).is_err());
    assert_eq!((fresh.len(), fresh.codes()), (0, None));
}

#[test]
fn auto_choice_survives_save_load_and_rebuild() {
    let dim = 20;
    let mut d = clusters(2500, dim, 1.0, 1.0, 9);
    d[..dim].iter_mut().for_each(|x| *x = 3.0);
    let q = clusters(50, dim, 1.0, 1.0, 10);
    let ids: Vec<u64> = (0..2500).collect();
    let idx = l2_index(dim);
    idx.add(&ids, &d).unwrap();
    // Removing the outlier changes what a re-fit would see: the saved ranges are used instead.
    idx.remove(&[0]).unwrap();
    let bytes = idx.to_bytes();
    let back = HnswIndex::from_bytes(&bytes, "test").unwrap();
    assert_eq!(back.params().quantize, Quantize::Auto);
    assert_eq!(back.codes(), Some("sq8"));
    assert_eq!(back.codes_clip(&d[..dim]), Some(false), "the saved ranges");
    let search = |i: &HnswIndex| i.search(&q, 10, Some(16), Some(1), &Exclude::None).unwrap();
    assert_eq!(
        search(&back),
        search(&idx),
        "a loaded index answers as the saved one"
    );
    // A version 1 file (no codes section) still loads, choosing its codes again.
    let sq8_section = 1 + 8 * dim;
    let mut v1 = bytes[..bytes.len() - 8 - sq8_section].to_vec();
    v1[8..12].copy_from_slice(&1u32.to_le_bytes());
    let sum = xxhash_rust::xxh3::xxh3_64(&v1);
    v1.extend_from_slice(&sum.to_le_bytes());
    let old = HnswIndex::from_bytes(&v1, "v1").unwrap();
    assert_eq!((old.len(), old.codes()), (idx.len(), Some("sq8")));
    assert_eq!(
        old.codes_clip(&d[..dim]),
        Some(true),
        "re-fitted without the outlier"
    );
    idx.rebuild(None).unwrap();
    assert_eq!(idx.codes(), Some("sq8"));
}

#[test]
fn the_chosen_codes_size_the_storage() {
    // Memory of an auto index after its choice = an index built with that choice from the
    // start: the code storage is allocated for the codes chosen, not for the larger fp16.
    let dim = 64;
    for (spread, width, want, explicit) in [
        (1.0, 1.0, "sq8", Quantize::Sq8),
        (4.0, 0.02, "fp16", Quantize::Fp16),
    ] {
        let d = clusters(3000, dim, spread, width, 8);
        let ids: Vec<u64> = (0..3000).collect();
        let auto = l2_index(dim);
        auto.add(&ids[..700], &d[..700 * dim]).unwrap();
        let before = auto.stats().memory_bytes;
        auto.add(&ids[700..], &d[700 * dim..]).unwrap();
        assert_eq!(auto.codes(), Some(want));
        let p = HnswParams {
            ef_construction: 100,
            quantize: explicit,
            ..HnswParams::default()
        };
        let fixed = HnswIndex::new(dim, Metric::L2, p).unwrap();
        fixed.add(&ids, &d).unwrap();
        let (a, f) = (auto.stats(), fixed.stats());
        assert_eq!(a.slots, f.slots);
        // Levels follow (seed, slot), so the upper lists match too; allow a little for the id
        // maps. The old fp16-sized reservation was 64 bytes per slot over (sq8 at 64-d).
        let diff = (a.memory_bytes as i64 - f.memory_bytes as i64).abs();
        assert!(
            diff < (a.slots * 8) as i64,
            "{want}: auto {} vs {explicit:?} {}",
            a.memory_bytes,
            f.memory_bytes
        );
        assert!(before < a.memory_bytes, "codes allocated at the choice");
    }
}

/// `quantize="sq4"`: 4-bit codes once the index holds `CALIBRATE_AT` items, recall at a
/// modest beam (the float re-rank orders the candidates), the codes and ranges through save and
/// load, and no l2 (there is no 4-bit l2 kernel): refused at construction and in a file.
#[test]
fn sq4_codes_search_save_and_refuse_l2() {
    let dim = 96;
    let unit = |mut v: Vec<f32>| {
        for row in v.chunks_exact_mut(dim) {
            let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x /= n);
        }
        v
    };
    let d = unit(clusters(3000, dim, 1.0, 1.0, 21));
    let q = unit(clusters(100, dim, 1.0, 1.0, 22));
    let ids: Vec<u64> = (0..3000).collect();
    let p = HnswParams {
        ef_construction: 100,
        quantize: Quantize::Sq4,
        ..HnswParams::default()
    };
    let idx = HnswIndex::new(dim, Metric::Ip, p).unwrap();
    idx.add(&ids[..500], &d[..500 * dim]).unwrap();
    assert_eq!(idx.codes(), None, "floats until {CALIBRATE_AT} items");
    idx.add(&ids[500..], &d[500 * dim..]).unwrap();
    assert_eq!(idx.codes(), Some("sq4"));
    let recall_ip = |idx: &HnswIndex| {
        let mut hit = 0;
        for x in q.chunks_exact(dim) {
            let truth: HashSet<u64> = exact(&d, &ids, x, 10, Metric::Ip).into_iter().collect();
            let got = idx.search_one(x, 10, Some(64), None).unwrap();
            hit += got.iter().filter(|g| truth.contains(&g.0)).count();
            // Returned distances are exact (float re-rank), not 4-bit approximations.
            let v = idx.get_vector(got[0].0).unwrap();
            let dot: f32 = x.iter().zip(&v).map(|(a, b)| a * b).sum();
            assert!((got[0].1 - (1.0 - dot)).abs() < 1e-4);
        }
        hit as f64 / (q.len() / dim * 10) as f64
    };
    let floats = HnswIndex::new(
        dim,
        Metric::Ip,
        HnswParams {
            quantize: Quantize::Off,
            ..p
        },
    )
    .unwrap();
    floats.add(&ids, &d).unwrap();
    let (r4, rf) = (recall_ip(&idx), recall_ip(&floats));
    assert!(
        r4 >= rf - 0.02,
        "recall@10 at ef 64: 4-bit codes {r4}, float rows {rf}"
    );
    let back = HnswIndex::from_bytes(&idx.to_bytes(), "sq4").unwrap();
    assert_eq!(
        (back.params().quantize, back.codes()),
        (Quantize::Sq4, Some("sq4"))
    );
    let search = |i: &HnswIndex| i.search(&q, 10, Some(16), Some(1), &Exclude::None).unwrap();
    assert_eq!(
        search(&back),
        search(&idx),
        "a loaded index answers as the saved one"
    );
    let err = HnswIndex::new(dim, Metric::L2, p)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sq4") && err.contains("l2"), "{err}");
    // The same file with its metric byte set to l2 is refused, not searched with ip codes.
    let mut bytes = idx.to_bytes();
    bytes[16] = Metric::L2.code();
    let n = bytes.len() - 8;
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[..n]);
    bytes[n..].copy_from_slice(&sum.to_le_bytes());
    let err = HnswIndex::from_bytes(&bytes, "l2")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("4-bit codes with metric l2"), "{err}");
}
