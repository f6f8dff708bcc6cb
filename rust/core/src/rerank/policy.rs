//! The re-ranking policy: plain configuration (DESIGN.md invariant 3: configured, not trained),
//! its validation, and the fixed order in which rules relax when a feed cannot meet them.

use crate::{invalid, Result};

/// Every policy key, in the order the docs list them. Unknown keys are rejected with this list.
pub const POLICY_KEYS: &[&str] = &[
    "window",
    "max_topic_share",
    "max_per_creator",
    "blocked_categories",
    "category_caps",
    "fresh_floor",
    "diversity",
    "mmr_lambda",
    "dpp_alpha",
];

/// The error for a key that is not in [`POLICY_KEYS`].
pub fn unknown_key(key: &str) -> crate::Error {
    invalid!(
        "unknown re-rank policy key {key:?}; valid keys are: {}",
        POLICY_KEYS.join(", ")
    )
}

/// The diversity objective used to pick among the admissible candidates at each slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Diversity {
    /// Highest score first.
    #[default]
    None,
    /// Maximal marginal relevance: `lambda * score - (1 - lambda) * max cosine to the placed items`.
    Mmr,
    /// Greedy DPP MAP (Chen, Zhang, Zhou 2018) on `Diag(q) S Diag(q)`, `q = exp(alpha * score)`.
    Dpp,
}

impl Diversity {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Diversity::None),
            "mmr" => Ok(Diversity::Mmr),
            "dpp" => Ok(Diversity::Dpp),
            _ => Err(invalid!(
                "diversity must be one of \"none\", \"mmr\", \"dpp\"; got {s:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Diversity::None => "none",
            Diversity::Mmr => "mmr",
            Diversity::Dpp => "dpp",
        }
    }
}

/// A cap on one category: at most `floor(share * window)` items of it in every window. A safety
/// cap never relaxes (the feed gets shorter instead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CategoryCap {
    pub category: u64,
    pub share: f64,
    pub safety: bool,
}

/// A rule that may relax when the candidates cannot satisfy it. The discriminant is the fixed
/// relaxation priority: lower relaxes first. Safety rules (blocked categories, safety category
/// caps) are not in this list because they never relax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// "at least N fresh items in the first window": a floor that holds only when candidates allow.
    FreshFloor = 0,
    /// Topic share per window: the rule most often infeasible with skewed candidates.
    MaxTopicShare = 1,
    /// Non-safety (editorial) category caps.
    CategoryCaps = 2,
    /// Per-creator cap: protects against flooding, so it is the last to give way.
    MaxPerCreator = 3,
}

impl Rule {
    /// All relaxable rules in relaxation order.
    pub const ORDER: [Rule; 4] = [
        Rule::FreshFloor,
        Rule::MaxTopicShare,
        Rule::CategoryCaps,
        Rule::MaxPerCreator,
    ];

    /// The policy key that configures the rule (also the key in the reported relaxations).
    pub fn name(self) -> &'static str {
        match self {
            Rule::FreshFloor => "fresh_floor",
            Rule::MaxTopicShare => "max_topic_share",
            Rule::CategoryCaps => "category_caps",
            Rule::MaxPerCreator => "max_per_creator",
        }
    }

    pub(crate) fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A re-ranking policy. Every field has a neutral default: `Policy::default()` is "highest
/// score first, no caps". Check it with [`Policy::validate`] (the [`super::Reranker`] does).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Length of the sliding window every per-window rule applies to.
    pub window: usize,
    /// At most `floor(share * window)` items of one topic in any window; `None` = no cap.
    pub max_topic_share: Option<f64>,
    /// At most this many items of one creator in any window; `None` = no cap.
    pub max_per_creator: Option<usize>,
    /// Categories never shown (a safety rule).
    pub blocked_categories: Vec<u64>,
    /// Per-category caps (share of a window), optionally marked safety.
    pub category_caps: Vec<CategoryCap>,
    /// At least this many fresh items in the first window (first `min(window, k)` slots).
    pub fresh_floor: usize,
    pub diversity: Diversity,
    /// MMR trade-off in [0, 1]: 1 = relevance only, 0 = dissimilarity only.
    pub mmr_lambda: f64,
    /// DPP quality exponent (>= 0): q_i = exp(alpha * score_i). 0 = diversity only.
    pub dpp_alpha: f64,
}

/// The longest window a policy may ask for (a feed response is far shorter).
pub const MAX_WINDOW: usize = 100_000;

impl Default for Policy {
    fn default() -> Self {
        Policy {
            window: 20,
            max_topic_share: None,
            max_per_creator: None,
            blocked_categories: Vec::new(),
            category_caps: Vec::new(),
            fresh_floor: 0,
            diversity: Diversity::None,
            mmr_lambda: 0.5,
            dpp_alpha: 1.0,
        }
    }
}

impl Policy {
    /// Checks every value; the message names the key and the valid range.
    pub fn validate(&self) -> Result<()> {
        let w = self.window;
        if w == 0 || w > MAX_WINDOW {
            return Err(invalid!("window must be in [1, {MAX_WINDOW}], got {w}"));
        }
        if let Some(s) = self.max_topic_share {
            if !(s > 0.0 && s <= 1.0) {
                return Err(invalid!("max_topic_share must be in (0, 1], got {s}"));
            }
            if cap_count(s, w) == 0 {
                return Err(invalid!(
                    "max_topic_share {s} with window {w} allows floor({s} * {w}) = 0 items of any \
                     topic; use a share >= 1/window"
                ));
            }
        }
        if self.max_per_creator == Some(0) {
            return Err(invalid!("max_per_creator must be >= 1 (or unset), got 0"));
        }
        if self.fresh_floor > w {
            return Err(invalid!(
                "fresh_floor {} exceeds window {w}: the floor applies to the first window",
                self.fresh_floor
            ));
        }
        let mut seen: Vec<u64> = self.category_caps.iter().map(|c| c.category).collect();
        seen.sort_unstable();
        if let Some(d) = seen.windows(2).find(|p| p[0] == p[1]) {
            return Err(invalid!("category_caps lists category {} twice", d[0]));
        }
        for c in &self.category_caps {
            if !(c.share >= 0.0 && c.share <= 1.0) {
                return Err(invalid!(
                    "category_caps[{}] share must be in [0, 1], got {}",
                    c.category,
                    c.share
                ));
            }
        }
        if !(self.mmr_lambda >= 0.0 && self.mmr_lambda <= 1.0) {
            return Err(invalid!(
                "mmr_lambda must be in [0, 1], got {}",
                self.mmr_lambda
            ));
        }
        if !(self.dpp_alpha >= 0.0 && self.dpp_alpha.is_finite()) {
            return Err(invalid!(
                "dpp_alpha must be finite and >= 0, got {}",
                self.dpp_alpha
            ));
        }
        Ok(())
    }

    /// Whether the policy needs per-candidate categories.
    pub fn needs_categories(&self) -> bool {
        !self.blocked_categories.is_empty() || !self.category_caps.is_empty()
    }
}

/// `floor(share * window)` with a small tolerance so that 0.4 * 20 is 8, not 7.
pub fn cap_count(share: f64, window: usize) -> usize {
    (share * window as f64 + 1e-9).floor() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        Policy::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases: Vec<(Policy, &str)> = vec![
            (
                Policy {
                    window: 0,
                    ..Default::default()
                },
                "window",
            ),
            (
                Policy {
                    max_topic_share: Some(0.01),
                    ..Default::default()
                },
                "max_topic_share",
            ),
            (
                Policy {
                    max_topic_share: Some(f64::NAN),
                    ..Default::default()
                },
                "max_topic_share",
            ),
            (
                Policy {
                    max_per_creator: Some(0),
                    ..Default::default()
                },
                "max_per_creator",
            ),
            (
                Policy {
                    fresh_floor: 21,
                    ..Default::default()
                },
                "fresh_floor",
            ),
            (
                Policy {
                    mmr_lambda: 1.5,
                    ..Default::default()
                },
                "mmr_lambda",
            ),
            (
                Policy {
                    dpp_alpha: -1.0,
                    ..Default::default()
                },
                "dpp_alpha",
            ),
            (
                Policy {
                    category_caps: vec![CategoryCap {
                        category: 3,
                        share: 2.0,
                        safety: false,
                    }],
                    ..Default::default()
                },
                "category_caps",
            ),
        ];
        for (p, key) in cases {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn cap_count_rounds_shares_exactly() {
        assert_eq!(cap_count(0.4, 20), 8);
        assert_eq!(cap_count(0.3, 10), 3);
        assert_eq!(cap_count(0.1, 20), 2);
        assert_eq!(cap_count(0.0, 20), 0);
    }

    #[test]
    fn unknown_key_lists_valid_ones() {
        let e = unknown_key("windw").to_string();
        assert!(e.contains("windw") && e.contains("max_topic_share"));
    }
}
