//! The ranker's input features, defined once: the online request path and any offline replay
//! call these same functions, so served and training features cannot drift (DESIGN §5.4).
//!
//! user block (2*dim + 4): user embedding | long-term embedding (zeros if none) |
//!   history fill, mean watched fraction, like rate, has-long-term
//! item block (2*dim + 8): item embedding | user ⊙ item (the two-tower cross) |
//!   log1p impressions (short, long), completion rate (short, long), like rate (short, long),
//!   log1p age in hours, is-fresh

use super::store::{Items, UserState};

pub const USER_STATS: usize = 4;
pub const ITEM_STATS: usize = 8;

pub fn user_width(dim: usize) -> usize {
    2 * dim + USER_STATS
}

pub fn item_width(dim: usize) -> usize {
    2 * dim + ITEM_STATS
}

/// Names of every feature, user block first, for logs and model schemas.
pub fn feature_names(dim: usize) -> Vec<String> {
    let mut n: Vec<String> = (0..dim).map(|i| format!("u_emb_{i}")).collect();
    n.extend((0..dim).map(|i| format!("u_long_{i}")));
    n.extend(["u_hist_fill", "u_watch_frac", "u_like_rate", "u_has_long"].map(String::from));
    n.extend((0..dim).map(|i| format!("i_emb_{i}")));
    n.extend((0..dim).map(|i| format!("x_ui_{i}")));
    n.extend(
        [
            "i_log_imp_s",
            "i_log_imp_l",
            "i_compl_rate_s",
            "i_compl_rate_l",
            "i_like_rate_s",
            "i_like_rate_l",
            "i_log_age_h",
            "i_is_fresh",
        ]
        .map(String::from),
    );
    n
}

/// Writes the user block into `out` (length `user_width(dim)`). `user_emb` may be all zeros for
/// a cold-start user.
pub fn user_block(user: Option<&UserState>, user_emb: &[f32], history_len: usize, out: &mut [f32]) {
    let dim = user_emb.len();
    out[..dim].copy_from_slice(user_emb);
    let long = &mut out[dim..2 * dim];
    match user.and_then(|u| u.long_term.as_deref()) {
        Some(l) if l.len() == dim => long.copy_from_slice(l),
        _ => long.fill(0.0),
    }
    let stats = &mut out[2 * dim..];
    let (n, watch, likes) = user.map_or((0usize, 0.0f32, 0.0f32), |u| {
        let n = u.history.len();
        let w: f32 = u
            .history
            .iter()
            .map(|i| i.watched_frac.clamp(0.0, 1.0))
            .sum();
        let l = u.history.iter().filter(|i| i.liked).count() as f32;
        (n, w, l)
    });
    let nf = n.max(1) as f32;
    stats[0] = n as f32 / history_len.max(1) as f32;
    stats[1] = watch / nf;
    stats[2] = likes / nf;
    stats[3] = f32::from(u8::from(user.is_some_and(|u| u.long_term.is_some())));
}

/// Writes the item block of the item in dense `slot` into `out` (length `item_width(dim)`).
pub fn item_block(
    items: &Items,
    slot: usize,
    user_emb: &[f32],
    now: f64,
    fresh: bool,
    out: &mut [f32],
) {
    let dim = items.dim();
    let e = items.embedding(slot);
    out[..dim].copy_from_slice(e);
    for ((o, u), i) in out[dim..2 * dim].iter_mut().zip(user_emb).zip(e) {
        *o = u * i;
    }
    let c = items.counters(slot, now);
    let s = &mut out[2 * dim..];
    // smoothed rates: a prior of 1 success in 4 impressions keeps new items from 0/0 and 1/1
    let rate = |num: f32, den: f32| (num + 1.0) / (den + 4.0);
    s[0] = c.impressions[0].ln_1p();
    s[1] = c.impressions[1].ln_1p();
    s[2] = rate(c.completions[0], c.impressions[0]);
    s[3] = rate(c.completions[1], c.impressions[1]);
    s[4] = rate(c.likes[0], c.impressions[0]);
    s[5] = rate(c.likes[1], c.impressions[1]);
    s[6] = (((now - items.upload_ts(slot)) / 3600.0).max(0.0) as f32).ln_1p();
    s[7] = f32::from(u8::from(fresh));
}

#[cfg(test)]
mod tests {
    use super::super::store::{Interaction, ItemInfo, ItemStore, UserStore};
    use super::*;

    #[test]
    fn blocks_have_their_widths_and_values() {
        let dim = 3;
        assert_eq!(feature_names(dim).len(), user_width(dim) + item_width(dim));
        let items = ItemStore::new(dim, [60.0, 600.0]).unwrap();
        items
            .upsert(
                &[ItemInfo {
                    id: 5,
                    topic: 1,
                    creator: 2,
                    category: 0,
                    upload_ts: 0.0,
                }],
                &[1.0, 2.0, 3.0],
            )
            .unwrap();
        items.record(5, 0.0, true, true, false).unwrap();
        let users = UserStore::new(dim, 4, 4).unwrap();
        let k = UserStore::key("u");
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
        users.with_user(k, |u| user_block(u, &[0.1, 0.2, 0.3], 4, &mut ub));
        assert_eq!(ub, vec![0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 0.0]);
        let mut ib = vec![9.0; item_width(dim)];
        item_block(&items.read(), 0, &[0.1, 0.2, 0.3], 3600.0, true, &mut ib);
        assert_eq!(&ib[..6], &[1.0, 2.0, 3.0, 0.1, 0.4, 0.90000004]);
        assert!((ib[6] - (0.5f32.powf(60.0) + 0.0).ln_1p()).abs() < 1e-6);
        assert!((ib[12] - 2f32.ln()).abs() < 1e-6 && ib[13] == 1.0);
    }
}
