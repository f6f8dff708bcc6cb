//! The counterfactual records of one response: impressions, exploration events, live and
//! shadow scores, the request row (DESIGN §4), built from the frozen response.

use super::{micros, FeedResponse, Source};
use crate::eventlog::{
    json_str, ExplorationEvent, Impression, RankerScore, RequestRecords, RequestRow,
};
use crate::split::TrafficSplit;

/// The user's experiment variants as the `experiments` JSON object.
fn experiments_json(split: &TrafficSplit, user_token: &str) -> String {
    let parts: Vec<String> = split
        .variants(user_token)
        .iter()
        .filter_map(|(l, v)| v.map(|v| format!("{}:{}", json_str(l), json_str(v))))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn score_row(
    r: &FeedResponse,
    i: usize,
    ts_us: i64,
    version: &str,
    is_shadow: bool,
    value: f32,
    preds: &[f32],
) -> RankerScore {
    let s = &r.slots[i];
    RankerScore {
        impression_id: s.impression_id.clone(),
        ts_us,
        model_version: version.to_owned(),
        is_shadow,
        value_score: value,
        preds: preds.to_vec(),
        request_id: r.request_id.clone(),
        exploration: s.source == Source::Exploration,
        sampled_pct: 100.0,
    }
}

/// Every row the response logs. Exploration impressions carry no experiment (the arm is
/// never part of an experiment).
pub(super) fn request_records(
    r: &FeedResponse,
    split: &TrafficSplit,
    cand_ids: Vec<u64>,
    cand_values: Vec<f32>,
    now: f64,
) -> RequestRecords {
    let ts_us = micros(now);
    let experiments = experiments_json(split, &r.user_token);
    let tasks = r.task_names.len();
    let mut out = RequestRecords::default();
    for (i, s) in r.slots.iter().enumerate() {
        let exploration = s.source == Source::Exploration;
        out.impressions.push(Impression {
            impression_id: s.impression_id.clone(),
            ts_us,
            request_id: r.request_id.clone(),
            user_token: r.user_token.clone(),
            item_id: s.item_id,
            position: s.position as i32,
            source: s.source,
            propensity: s.propensity,
            model_version: r.slot_version(i).to_owned(),
            experiments: if exploration {
                "{}".to_owned()
            } else {
                experiments.clone()
            },
            topic: s.topic as i32,
            creator_id: s.creator,
            sampled_pct: 100.0,
        });
        if exploration {
            out.exploration.push(ExplorationEvent {
                impression_id: s.impression_id.clone(),
                ts_us,
                user_token: r.user_token.clone(),
                item_id: s.item_id,
                position: s.position as i32,
                topic: s.topic as i32,
                propensity: s.propensity,
                policy: "uniform".to_owned(),
            });
        }
        let live = &r.predictions[i * tasks..(i + 1) * tasks];
        out.scores.push(score_row(
            r,
            i,
            ts_us,
            r.slot_version(i),
            false,
            s.value,
            live,
        ));
        for sh in &r.shadows {
            let p = &sh.predictions[i * tasks..(i + 1) * tasks];
            out.scores
                .push(score_row(r, i, ts_us, &sh.version, true, sh.values[i], p));
        }
    }
    out.request = Some(RequestRow {
        request_id: r.request_id.clone(),
        ts_us,
        user_token: r.user_token.clone(),
        candidate_item_ids: cand_ids,
        candidate_scores: cand_values,
        served_item_ids: r.slots.iter().map(|s| s.item_id).collect(),
        sampled_pct: 100.0,
        shadow_versions: Vec::new(),
        shadow_candidate_scores: Vec::new(),
    });
    out
}
