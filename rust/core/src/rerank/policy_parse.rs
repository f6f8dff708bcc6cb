//! A re-ranking policy from a config [`Value`] (a Python dict, a TOML table): the one parser of
//! the policy schema, with messages that say which key is wrong and what it takes.

use super::policy::{unknown_key, CategoryCap, Diversity, Policy, POLICY_KEYS};
use crate::config::Value;
use crate::{invalid, Result};

fn category_cap(k: &Value, cap: &Value) -> Result<CategoryCap> {
    let category = k.id("category_caps")?;
    let key = format!("category_caps[{category}]");
    let (share, safety) = match cap {
        Value::Map(spec) => {
            let mut share = None;
            let mut safety = false;
            for (sk, sv) in spec {
                match sk.key(&key)? {
                    "share" => share = Some(sv.float(&format!("{key}.share"))?),
                    "safety" => safety = sv.boolean(&format!("{key}.safety"))?,
                    other => {
                        return Err(invalid!(
                            "{key}: unknown key {other:?}; valid keys are share, safety"
                        ))
                    }
                }
            }
            (
                share.ok_or_else(|| invalid!("{key} needs a \"share\""))?,
                safety,
            )
        }
        v => (v.float(&key)?, false),
    };
    Ok(CategoryCap {
        category,
        share,
        safety,
    })
}

fn category_caps(v: &Value) -> Result<Vec<CategoryCap>> {
    if v.is_null() {
        return Ok(vec![]);
    }
    v.map("category_caps must be a dict {category: share | {\"share\": float, \"safety\": bool}}")?
        .iter()
        .map(|(k, cap)| category_cap(k, cap))
        .collect()
}

fn blocked(v: &Value) -> Result<Vec<u64>> {
    match v {
        Value::Null => Ok(vec![]),
        Value::List(l) => l.iter().map(|c| c.id("blocked_categories")).collect(),
        _ => Err(invalid!(
            "blocked_categories must be a list of category ids"
        )),
    }
}

fn optional<T>(v: &Value, f: impl FnOnce(&Value) -> Result<T>) -> Result<Option<T>> {
    if v.is_null() {
        Ok(None)
    } else {
        f(v).map(Some)
    }
}

impl Policy {
    /// Sets one key of the policy schema (not validated: call [`Policy::validate`] after).
    pub fn set(&mut self, key: &str, v: &Value) -> Result<()> {
        match key {
            "window" => self.window = v.count(key)?,
            "max_topic_share" => self.max_topic_share = optional(v, |v| v.float(key))?,
            "max_per_creator" => self.max_per_creator = optional(v, |v| v.count(key))?,
            "blocked_categories" => self.blocked_categories = blocked(v)?,
            "category_caps" => self.category_caps = category_caps(v)?,
            "fresh_floor" => self.fresh_floor = v.count(key)?,
            "diversity" => {
                let s = v
                    .str(key)
                    .map_err(|_| invalid!("diversity must be one of \"none\", \"mmr\", \"dpp\""))?;
                self.diversity = Diversity::parse(s)?;
            }
            "mmr_lambda" => self.mmr_lambda = v.float(key)?,
            "dpp_alpha" => self.dpp_alpha = v.float(key)?,
            _ => return Err(unknown_key(key)),
        }
        Ok(())
    }

    /// Applies every key of a mapping (a dict or TOML table) to the policy, then validates it.
    pub fn apply(&mut self, v: &Value) -> Result<()> {
        let what = format!("a policy must be a dict of keys {}", POLICY_KEYS.join(", "));
        for (k, val) in v.map(&what)? {
            let key = k.key("policy")?;
            self.set(key, val)?;
        }
        self.validate()
    }

    /// The policy a mapping describes (defaults for the keys it leaves out), validated.
    pub fn from_value(v: &Value) -> Result<Policy> {
        let mut p = Policy::default();
        p.apply(v)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.into())
    }

    #[test]
    fn parses_every_key_and_names_bad_ones() {
        let v = Value::Map(vec![
            (s("window"), Value::Int(10)),
            (s("max_topic_share"), Value::Float(0.5)),
            (s("max_per_creator"), Value::Null),
            (
                s("blocked_categories"),
                Value::List(vec![Value::Int(3), s("4")]),
            ),
            (
                s("category_caps"),
                Value::Map(vec![
                    (s("1"), Value::Float(0.1)),
                    (
                        Value::Int(2),
                        Value::Map(vec![
                            (s("share"), Value::Float(0.2)),
                            (s("safety"), Value::Bool(true)),
                        ]),
                    ),
                ]),
            ),
            (s("diversity"), s("dpp")),
        ]);
        let p = Policy::from_value(&v).unwrap();
        assert_eq!(p.window, 10);
        assert_eq!(p.blocked_categories, vec![3, 4]);
        assert!(p.category_caps[1].safety && p.category_caps[1].category == 2);
        assert_eq!(p.diversity, Diversity::Dpp);
        let bad = |k: &str, x: Value| {
            Policy::from_value(&Value::Map(vec![(s(k), x)]))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("window", Value::Bool(true)).contains("window must be an int"));
        assert!(bad("windw", Value::Int(1)).contains("valid keys"));
        assert!(bad("diversity", Value::Int(1)).contains("\"mmr\""));
        assert!(bad("blocked_categories", s("3")).contains("list of category ids"));
        assert!(Policy::from_value(&Value::List(vec![])).is_err());
    }
}
