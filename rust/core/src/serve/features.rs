//! The ranker's input features, defined once: the online request path and the offline replay
//! (`serve::replay`, behind `fyp_core.features.training_set`) call these same functions, so
//! served and training features cannot drift (DESIGN §5.4).
//!
//! Every feature has a spec in [`REGISTRY`]: name, tier, version, kind. The feature set version
//! logged with every served vector is a hash of the registry, so a change to any definition is
//! a new version. A definition depends only on the stores' state, the batch snapshot, the
//! request time and the user embedding, never on the retrieval path or on serving config.

use super::store::{BatchTier, Items, NrtCounts, UserState};

/// Where a feature's data comes from and how fresh it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Computed from the request itself (the user embedding, the two-tower cross).
    Request,
    /// Updated on every event (`engage`, impressions): user last-N interactions.
    RealTime,
    /// Streaming aggregates over sliding windows: item and topic engagement, creator uploads.
    NearRealTime,
    /// Loaded from files and swapped atomically: embeddings, creator authority.
    Batch,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Request => "request",
            Tier::RealTime => "real_time",
            Tier::NearRealTime => "near_real_time",
            Tier::Batch => "batch",
        }
    }
}

/// One feature (or a block of `dim` features when `per_dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSpec {
    pub name: &'static str,
    pub tier: Tier,
    pub version: u32,
    /// A block of embedding width: the names are `name_0 .. name_{dim-1}`.
    pub per_dim: bool,
    /// Takes a handful of values (a flag): compared as categorical by the parity report.
    pub categorical: bool,
    pub doc: &'static str,
}

const fn f(name: &'static str, tier: Tier, version: u32, doc: &'static str) -> FeatureSpec {
    FeatureSpec {
        name,
        tier,
        version,
        per_dim: false,
        categorical: false,
        doc,
    }
}

const fn block(name: &'static str, tier: Tier, version: u32, doc: &'static str) -> FeatureSpec {
    FeatureSpec {
        per_dim: true,
        ..f(name, tier, version, doc)
    }
}

const fn flag(name: &'static str, tier: Tier, version: u32, doc: &'static str) -> FeatureSpec {
    FeatureSpec {
        categorical: true,
        ..f(name, tier, version, doc)
    }
}

use Tier::{Batch, NearRealTime, RealTime, Request};

/// The user block, in order.
pub const USER_FEATURES: [FeatureSpec; 6] = [
    block(
        "u_emb",
        Request,
        1,
        "user embedding: long-term blended with recent history",
    ),
    block(
        "u_long",
        Batch,
        1,
        "long-term user embedding (zeros if none)",
    ),
    f("u_hist_fill", RealTime, 1, "last-N interactions held / N"),
    f(
        "u_watch_frac",
        RealTime,
        1,
        "mean watched fraction over the last N",
    ),
    f(
        "u_like_rate",
        RealTime,
        1,
        "share of liked items over the last N",
    ),
    flag(
        "u_has_long",
        Batch,
        1,
        "1 if the batch tier has a long-term embedding",
    ),
];

/// The item block, in order.
pub const ITEM_FEATURES: [FeatureSpec; 14] = [
    block("i_emb", Batch, 1, "item content embedding"),
    block(
        "x_ui",
        Request,
        1,
        "user embedding * item embedding (two-tower cross)",
    ),
    f(
        "i_log_imp_s",
        NearRealTime,
        2,
        "log1p impressions, short window",
    ),
    f(
        "i_log_imp_l",
        NearRealTime,
        2,
        "log1p impressions, long window",
    ),
    f(
        "i_compl_rate_s",
        NearRealTime,
        2,
        "(completions+1)/(impressions+4), short window",
    ),
    f(
        "i_compl_rate_l",
        NearRealTime,
        2,
        "(completions+1)/(impressions+4), long window",
    ),
    f(
        "i_like_rate_s",
        NearRealTime,
        2,
        "(likes+1)/(impressions+4), short window",
    ),
    f(
        "i_like_rate_l",
        NearRealTime,
        2,
        "(likes+1)/(impressions+4), long window",
    ),
    f("i_log_age_h", Request, 1, "log1p item age in hours"),
    f(
        "i_freshness",
        Request,
        1,
        "0.5^(age_h / 6): freshness score",
    ),
    f(
        "t_compl_rate_s",
        NearRealTime,
        1,
        "topic (completions+1)/(impressions+4), short window",
    ),
    f(
        "t_trend",
        NearRealTime,
        1,
        "topic ln((imp_s+1)/(imp_l*w_s/w_l+1)): trending",
    ),
    f(
        "c_log_uploads_l",
        NearRealTime,
        1,
        "log1p creator uploads, long window",
    ),
    f(
        "c_authority",
        Batch,
        1,
        "creator authority from the batch tier",
    ),
];

fn count(specs: &[FeatureSpec], dim: usize) -> usize {
    specs.iter().map(|s| if s.per_dim { dim } else { 1 }).sum()
}

pub fn user_width(dim: usize) -> usize {
    count(&USER_FEATURES, dim)
}

pub fn item_width(dim: usize) -> usize {
    count(&ITEM_FEATURES, dim)
}

/// The registry: every feature spec, user block first.
pub fn registry() -> impl Iterator<Item = &'static FeatureSpec> {
    USER_FEATURES.iter().chain(ITEM_FEATURES.iter())
}

/// One name per column (blocks expanded), with its spec: user block first.
pub fn columns(dim: usize) -> Vec<(String, &'static FeatureSpec)> {
    let mut out = Vec::with_capacity(user_width(dim) + item_width(dim));
    for s in registry() {
        if s.per_dim {
            out.extend((0..dim).map(|i| (format!("{}_{i}", s.name), s)));
        } else {
            out.push((s.name.to_owned(), s));
        }
    }
    out
}

/// Names of every feature, user block first, for logs and model schemas.
pub fn feature_names(dim: usize) -> Vec<String> {
    columns(dim).into_iter().map(|(n, _)| n).collect()
}

/// Identifies the definitions: a hash of every spec's name, tier and version, and the width.
pub fn feature_set_version(dim: usize) -> String {
    let mut key = format!("dim={dim}");
    for s in registry() {
        key.push_str(&format!(";{}:{}:{}", s.name, s.tier.name(), s.version));
    }
    format!("fs-{:016x}", xxhash_rust::xxh3::xxh3_64(key.as_bytes()))
}

/// Writes the user block into `out` (length `user_width(dim)`). `user_emb` may be all zeros for
/// a cold-start user; `long_term` comes from the batch tier.
pub fn user_block(
    user: Option<&UserState>,
    long_term: Option<&[f32]>,
    user_emb: &[f32],
    history_len: usize,
    out: &mut [f32],
) {
    let dim = user_emb.len();
    out[..dim].copy_from_slice(user_emb);
    let long = &mut out[dim..2 * dim];
    match long_term {
        Some(l) if l.len() == dim => long.copy_from_slice(l),
        _ => long.fill(0.0),
    }
    let stats = &mut out[2 * dim..];
    let (n, watch, likes) = user.map_or((0usize, 0.0f32, 0.0f32), |u| {
        let n = u.history.len();
        // fold from +0.0: `sum()` of no f32 is -0.0, which the replay would not reproduce
        let w: f32 = u
            .history
            .iter()
            .fold(0.0, |a, i| a + i.watched_frac.clamp(0.0, 1.0));
        let l = u.history.iter().filter(|i| i.liked).count() as f32;
        (n, w, l)
    });
    let nf = n.max(1) as f32;
    stats[0] = n as f32 / history_len.max(1) as f32;
    stats[1] = watch / nf;
    stats[2] = likes / nf;
    stats[3] = f32::from(u8::from(long_term.is_some_and(|l| l.len() == dim)));
}

/// Writes the item block of the item in dense `slot` into `out` (length `item_width(dim)`).
/// `nrt` is the item's near-real-time state at `now`: `items.nrt_many` for the in-process
/// tier, or the same counts read from the shared (Redis) tier.
pub fn item_block(
    items: &Items,
    batch: &BatchTier,
    slot: usize,
    user_emb: &[f32],
    now: f64,
    nrt: &NrtCounts,
    out: &mut [f32],
) {
    let dim = items.dim();
    let e = items.embedding(slot);
    out[..dim].copy_from_slice(e);
    for ((o, u), i) in out[dim..2 * dim].iter_mut().zip(user_emb).zip(e) {
        *o = u * i;
    }
    let (c, t, uploads) = (nrt.item, nrt.topic, nrt.creator_uploads);
    let creator = items.creator(slot);
    let [ws, wl] = items.windows();
    let s = &mut out[2 * dim..];
    // smoothed rates: a prior of 1 success in 4 impressions keeps new items from 0/0 and 1/1
    let rate = |num: f32, den: f32| (num + 1.0) / (den + 4.0);
    let age_h = ((now - items.upload_ts(slot)) / 3600.0).max(0.0);
    s[0] = c.impressions[0].ln_1p();
    s[1] = c.impressions[1].ln_1p();
    s[2] = rate(c.completions[0], c.impressions[0]);
    s[3] = rate(c.completions[1], c.impressions[1]);
    s[4] = rate(c.likes[0], c.impressions[0]);
    s[5] = rate(c.likes[1], c.impressions[1]);
    s[6] = (age_h as f32).ln_1p();
    s[7] = (-age_h / 6.0).exp2() as f32;
    s[8] = rate(t.completions[0], t.impressions[0]);
    s[9] = ((t.impressions[0] + 1.0) / (t.impressions[1] * (ws / wl) as f32 + 1.0)).ln();
    s[10] = uploads[1].ln_1p();
    s[11] = batch.authority(creator);
}

#[cfg(test)]
mod tests {
    use super::super::store::{Interaction, ItemInfo, ItemStore, UserStore};
    use super::*;

    #[test]
    fn registry_names_and_version() {
        let dim = 3;
        let names = feature_names(dim);
        assert_eq!(names.len(), user_width(dim) + item_width(dim));
        assert_eq!(user_width(dim), 2 * dim + 4);
        assert_eq!(item_width(dim), 2 * dim + 12);
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert_eq!(names[0], "u_emb_0");
        assert_eq!(names[2 * dim], "u_hist_fill");
        assert_eq!(names.last().map(String::as_str), Some("c_authority"));
        assert_ne!(feature_set_version(3), feature_set_version(4));
        assert_eq!(feature_set_version(3), feature_set_version(3));
    }

    #[test]
    fn blocks_have_their_widths_and_values() {
        let dim = 3;
        let items = ItemStore::new(dim, [60.0, 600.0]).unwrap();
        let info = |id, creator| ItemInfo {
            id,
            topic: 1,
            creator,
            category: 0,
            upload_ts: 0.0,
        };
        items
            .upsert(&[info(5, 2), info(6, 2)], &[1.0, 2.0, 3.0, 0.0, 0.0, 1.0])
            .unwrap();
        items.record(5, 0.0, true, true, false).unwrap();
        let users = UserStore::new(4, 4).unwrap();
        let k = UserStore::key_of_token("u");
        users.record_interaction(
            k,
            Interaction {
                item_id: 5,
                watched_frac: 0.5,
                liked: true,
                ts: 0.0,
            },
        );
        let mut ub = vec![9.0; user_width(dim)];
        users.with_user(k, |u| user_block(u, None, &[0.1, 0.2, 0.3], 4, &mut ub));
        assert_eq!(ub, vec![0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 0.0]);
        users.with_user(k, |u| {
            user_block(u, Some(&[1.0, 1.0, 1.0]), &[0.1, 0.2, 0.3], 4, &mut ub)
        });
        assert_eq!((&ub[3..6], ub[9]), (&[1.0, 1.0, 1.0][..], 1.0));
        let batch = BatchTier::new("b", 0.0, dim, &[], &[], &[2], &[0.75]).unwrap();
        let mut ib = vec![9.0; item_width(dim)];
        let t = items.read();
        item_block(
            &t,
            &batch,
            0,
            &[0.1, 0.2, 0.3],
            3600.0,
            &t.nrt_many(&[0], 3600.0)[0],
            &mut ib,
        );
        assert_eq!(&ib[..6], &[1.0, 2.0, 3.0, 0.1, 0.4, 0.90000004]);
        let s = &ib[6..];
        // at one hour, the short window (60 s) is empty and the long one (600 s) too
        assert_eq!((s[0], s[1]), (0.0, 0.0));
        assert!((s[6] - 2f32.ln()).abs() < 1e-6);
        assert!((s[7] - 0.5f32.powf(1.0 / 6.0)).abs() < 1e-6);
        assert_eq!(s[10], 0.0); // two uploads, both older than the long window
        assert_eq!(s[11], 0.75);
        // at t=30 the short window holds the impression and the completion
        item_block(
            &t,
            &batch,
            0,
            &[0.1, 0.2, 0.3],
            30.0,
            &t.nrt_many(&[0], 30.0)[0],
            &mut ib,
        );
        let s = &ib[6..];
        assert_eq!(s[0], 2f32.ln());
        assert_eq!(s[2], 2.0 / 5.0);
        assert_eq!(s[8], 2.0 / 5.0); // topic 1 saw the same events
        assert_eq!(s[10], 3f32.ln()); // creator 2 uploaded 2 items
    }
}
