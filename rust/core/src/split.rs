//! Deterministic traffic assignment (DESIGN.md §3): which slots are exploration, and which
//! experiment variant a user sees. Exploration is carved first from a pure function of
//! (salt, user_token, request_id, slot); experiment layers only partition the ranked rest.

use crate::{invalid, Error, Result};
use xxhash_rust::xxh3::xxh3_64;

/// Number of experiment buckets per layer: `bucket(layer, user)` is in `[0, BUCKETS)`.
pub const BUCKETS: u32 = 10_000;
const SEP: u8 = 0x1f;
const TWO_POW_NEG_53: f64 = 1.0 / (1u64 << 53) as f64;

/// One experiment arm: users whose bucket is in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub name: String,
    pub start: u32,
    pub end: u32,
}

/// One experiment layer. Buckets not covered by any variant are outside the experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: String,
    pub variants: Vec<Variant>,
}

/// A string argument that is either one value broadcast over the batch or one value per row.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    One(&'a str),
    Many(&'a [String]),
}

impl<'a> Keys<'a> {
    fn len(&self) -> Option<usize> {
        match self {
            Keys::One(_) => None,
            Keys::Many(v) => Some(v.len()),
        }
    }
    #[inline]
    fn get(self, i: usize) -> &'a str {
        match self {
            Keys::One(s) => s,
            Keys::Many(v) if v.len() == 1 => &v[0],
            Keys::Many(v) => &v[i],
        }
    }
}

/// The exploration/experiment splitter. Immutable once built, so it is shared across threads freely.
#[derive(Debug, Clone)]
pub struct TrafficSplit {
    explore_rate: f64,
    salt: String,
    layers: Vec<Layer>,
}

impl TrafficSplit {
    /// Validates the configuration: `explore_rate` in [0, 1], a non-empty salt, and layers with
    /// unique non-empty names whose variant ranges lie in [0, 10000) and do not overlap.
    pub fn new(explore_rate: f64, salt: &str, layers: Vec<Layer>) -> Result<Self> {
        if !(0.0..=1.0).contains(&explore_rate) {
            return Err(invalid!(
                "explore_rate must be in [0, 1], got {explore_rate}"
            ));
        }
        if salt.is_empty() {
            return Err(invalid!("salt must be a non-empty string"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for layer in &layers {
            validate_layer(layer)?;
            if !seen.insert(layer.name.as_str()) {
                return Err(invalid!(
                    "layer name {:?} appears more than once",
                    layer.name
                ));
            }
        }
        Ok(Self {
            explore_rate,
            salt: salt.to_owned(),
            layers,
        })
    }

    pub fn explore_rate(&self) -> f64 {
        self.explore_rate
    }
    pub fn salt(&self) -> &str {
        &self.salt
    }
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The uniform number in [0, 1) that decides a slot: `(xxh3_64(key) >> 11) * 2^-53`.
    pub fn unit(&self, user_token: &str, request_id: &str, slot: i64) -> f64 {
        let mut buf =
            Vec::with_capacity(self.salt.len() + user_token.len() + request_id.len() + 24);
        self.unit_with(&mut buf, user_token, request_id, slot)
    }

    #[inline]
    fn key_prefix(&self, buf: &mut Vec<u8>, user_token: &str, request_id: &str) {
        buf.clear();
        buf.extend_from_slice(self.salt.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(user_token.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(request_id.as_bytes());
        buf.push(SEP);
    }

    #[inline]
    fn unit_with(&self, buf: &mut Vec<u8>, user_token: &str, request_id: &str, slot: i64) -> f64 {
        self.key_prefix(buf, user_token, request_id);
        buf.extend_from_slice(itoa::Buffer::new().format(slot).as_bytes());
        (xxh3_64(buf) >> 11) as f64 * TWO_POW_NEG_53
    }

    pub fn is_exploration(&self, user_token: &str, request_id: &str, slot: i64) -> bool {
        self.unit(user_token, request_id, slot) < self.explore_rate
    }

    /// Vectorised `is_exploration` with numpy-style broadcasting: `Keys::One` arguments and a
    /// one-element `slots` broadcast; every other argument must have the same length.
    pub fn assign_batch(
        &self,
        users: Keys<'_>,
        requests: Keys<'_>,
        slots: &[i64],
    ) -> Result<Vec<bool>> {
        let lens = [
            ("user_tokens", users.len()),
            ("request_ids", requests.len()),
            ("slots", Some(slots.len())),
        ];
        let n = lens
            .iter()
            .filter_map(|(_, l)| *l)
            .filter(|&l| l != 1)
            .max()
            .unwrap_or(slots.len().min(1));
        for (name, len) in lens {
            if let Some(len) = len {
                if len != n && len != 1 {
                    return Err(invalid!(
                        "{name} has {len} entries but the batch has {n}; pass equal lengths, one string or one slot"
                    ));
                }
            }
        }
        let slot_at = |i: usize| if slots.len() == 1 { slots[0] } else { slots[i] };
        let mut buf = Vec::with_capacity(self.salt.len() + 128);
        if users.len().unwrap_or(1) == 1 && requests.len().unwrap_or(1) == 1 && n > 0 {
            // One request's slots (the serving case): the key prefix is built once, only the slot
            // digits change per row.
            self.key_prefix(&mut buf, users.get(0), requests.get(0));
            let prefix = buf.len();
            let mut digits = itoa::Buffer::new();
            return Ok((0..n)
                .map(|i| {
                    buf.truncate(prefix);
                    buf.extend_from_slice(digits.format(slot_at(i)).as_bytes());
                    ((xxh3_64(&buf) >> 11) as f64 * TWO_POW_NEG_53) < self.explore_rate
                })
                .collect());
        }
        Ok((0..n)
            .map(|i| {
                self.unit_with(&mut buf, users.get(i), requests.get(i), slot_at(i))
                    < self.explore_rate
            })
            .collect())
    }

    /// A 64-bit seed for choosing *which* item an exploration slot shows: xxh3 of
    /// `salt \x1f "explore-item" \x1f user_token \x1f request_id \x1f slot`. Like `unit`, a
    /// pure function of the key, so replaying a request reproduces its exploration items.
    pub fn exploration_seed(&self, user_token: &str, request_id: &str, slot: i64) -> u64 {
        let mut buf =
            Vec::with_capacity(self.salt.len() + user_token.len() + request_id.len() + 40);
        buf.extend_from_slice(self.salt.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(b"explore-item");
        buf.push(SEP);
        buf.extend_from_slice(user_token.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(request_id.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(itoa::Buffer::new().format(slot).as_bytes());
        xxh3_64(&buf)
    }

    /// The user's experiment bucket in `layer`, in `[0, 10000)`: sticky per user, independent of
    /// any slot or request. The layer need not be configured.
    pub fn bucket(&self, layer: &str, user_token: &str) -> u32 {
        let mut buf = Vec::with_capacity(self.salt.len() + layer.len() + user_token.len() + 8);
        buf.extend_from_slice(self.salt.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(b"layer");
        buf.push(SEP);
        buf.extend_from_slice(layer.as_bytes());
        buf.push(SEP);
        buf.extend_from_slice(user_token.as_bytes());
        (xxh3_64(&buf) % BUCKETS as u64) as u32
    }

    /// The variant of a configured layer this user is in, or `None` when the user's bucket is
    /// outside every variant. Experiments apply to ranked slots only; callers must not consult
    /// this for exploration slots.
    pub fn variant(&self, layer: &str, user_token: &str) -> Result<Option<&str>> {
        let l = self
            .layers
            .iter()
            .find(|l| l.name == layer)
            .ok_or_else(|| {
                let known: Vec<&str> = self.layers.iter().map(|l| l.name.as_str()).collect();
                Error::NotFound(format!(
                    "unknown layer {layer:?}; configured layers: {known:?}"
                ))
            })?;
        let b = self.bucket(layer, user_token);
        Ok(l.variants
            .iter()
            .find(|v| v.start <= b && b < v.end)
            .map(|v| v.name.as_str()))
    }

    /// Every configured layer with this user's variant (None when outside the layer's ranges).
    pub fn variants(&self, user_token: &str) -> Vec<(&str, Option<&str>)> {
        self.layers
            .iter()
            .map(|l| {
                let b = self.bucket(&l.name, user_token);
                (
                    l.name.as_str(),
                    l.variants
                        .iter()
                        .find(|v| v.start <= b && b < v.end)
                        .map(|v| v.name.as_str()),
                )
            })
            .collect()
    }
}

fn validate_layer(layer: &Layer) -> Result<()> {
    if layer.name.is_empty() {
        return Err(invalid!(
            "a layer has an empty name; give every layer a non-empty name"
        ));
    }
    if layer.variants.is_empty() {
        return Err(invalid!("layer {:?} has no variants", layer.name));
    }
    let mut names = std::collections::BTreeSet::new();
    for v in &layer.variants {
        if v.name.is_empty() {
            return Err(invalid!(
                "layer {:?} has a variant with an empty name",
                layer.name
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(invalid!(
                "layer {:?} has variant {:?} twice",
                layer.name,
                v.name
            ));
        }
        if v.start >= v.end || v.end > BUCKETS {
            return Err(invalid!(
                "layer {:?} variant {:?} has bucket range [{}, {}); ranges must satisfy 0 <= start < end <= {BUCKETS}",
                layer.name, v.name, v.start, v.end
            ));
        }
    }
    let mut sorted: Vec<&Variant> = layer.variants.iter().collect();
    sorted.sort_by_key(|v| v.start);
    for w in sorted.windows(2) {
        if w[1].start < w[0].end {
            return Err(invalid!(
                "layer {:?}: variants {:?} [{}, {}) and {:?} [{}, {}) overlap",
                layer.name,
                w[0].name,
                w[0].start,
                w[0].end,
                w[1].name,
                w[1].start,
                w[1].end
            ));
        }
    }
    Ok(())
}

/// Experiment layers from a config value: a list `[{"name": str, "variants": {variant:
/// [start, end)}}, ...]` or a map `{layer: {variant: [start, end)}}`; `Null` = none. The
/// ranges are checked by [`TrafficSplit::new`].
pub fn layers_from_value(v: &crate::config::Value) -> Result<Vec<Layer>> {
    use crate::config::Value;
    match v {
        Value::Null => Ok(vec![]),
        Value::Map(m) => m
            .iter()
            .map(|(k, vars)| {
                let name = k.key("layer")?.to_owned();
                let variants = variants_from_value(&name, vars)?;
                Ok(Layer { name, variants })
            })
            .collect(),
        Value::List(l) => l.iter().map(layer_from_entry).collect(),
        _ => Err(invalid!(
            "layers must be a list of {{'name': str, 'variants': {{name: [start, end)}}}} or a dict"
        )),
    }
}

fn layer_from_entry(item: &crate::config::Value) -> Result<Layer> {
    let m = item.map("each layer must be a dict with keys 'name' and 'variants'")?;
    let (mut name, mut variants) = (None, None);
    for (k, v) in m {
        match k.key("layer")? {
            "name" => name = Some(v.str("layer 'name'")?.to_owned()),
            "variants" => variants = Some(v),
            other => {
                return Err(invalid!(
                    "unknown layer key {other:?}; valid keys are 'name' and 'variants'"
                ))
            }
        }
    }
    let name = name.ok_or_else(|| invalid!("a layer is missing its 'name'"))?;
    let v = variants.ok_or_else(|| invalid!("layer {name:?} is missing 'variants'"))?;
    let variants = variants_from_value(&name, v)?;
    Ok(Layer { name, variants })
}

fn variants_from_value(layer: &str, v: &crate::config::Value) -> Result<Vec<Variant>> {
    use crate::config::Value;
    let what = format!("layer {layer:?}: variants must be a dict {{variant_name: [start, end)}}");
    v.map(&what)?
        .iter()
        .map(|(k, range)| {
            let name = k.key(&format!("layer {layer:?}: variant"))?.to_owned();
            let pair = match range {
                Value::List(p) => p,
                _ => {
                    return Err(invalid!(
                        "layer {layer:?} variant {name:?}: range must be a pair [start, end) of ints"
                    ))
                }
            };
            let [s, e] = pair.as_slice() else {
                return Err(invalid!(
                    "layer {layer:?} variant {name:?}: range must have exactly 2 ints [start, end), got {}",
                    pair.len()
                ));
            };
            let (start, end) = (s.int("range start")?, e.int("range end")?);
            match (u32::try_from(start), u32::try_from(end)) {
                (Ok(start), Ok(end)) => Ok(Variant { name, start, end }),
                _ => Err(invalid!(
                    "layer {layer:?} variant {name:?} has bucket range [{start}, {end}); ranges must satisfy 0 <= start < end <= 10000"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(rate: f64) -> TrafficSplit {
        TrafficSplit::new(rate, "fyp", vec![]).unwrap()
    }

    #[test]
    fn unit_matches_spec_bytes() {
        let s = split(0.05);
        let h = xxh3_64("fyp\x1fu1\x1fr1\x1f7".as_bytes());
        assert_eq!(s.unit("u1", "r1", 7), (h >> 11) as f64 * TWO_POW_NEG_53);
        let h = xxh3_64("fyp\x1fü\x1f\x1f-3".as_bytes());
        assert_eq!(s.unit("ü", "", -3), (h >> 11) as f64 * TWO_POW_NEG_53);
    }

    #[test]
    fn unit_in_range_and_share_near_rate() {
        let s = split(0.05);
        let slots: Vec<i64> = (0..200_000).collect();
        let out = s
            .assign_batch(Keys::One("user"), Keys::One("req"), &slots)
            .unwrap();
        let share = out.iter().filter(|&&b| b).count() as f64 / out.len() as f64;
        let sigma = (0.05f64 * 0.95 / 200_000.0).sqrt();
        assert!((share - 0.05).abs() < 4.0 * sigma, "share {share}");
        for slot in 0..1000 {
            let u = s.unit("a", "b", slot);
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn batch_equals_scalar() {
        let s = split(0.3);
        let users: Vec<String> = (0..500).map(|i| format!("u{i}")).collect();
        let reqs: Vec<String> = (0..500).map(|i| format!("r{}", i / 20)).collect();
        let slots: Vec<i64> = (0..500).map(|i| i % 20).collect();
        let out = s
            .assign_batch(Keys::Many(&users), Keys::Many(&reqs), &slots)
            .unwrap();
        for i in 0..500 {
            assert_eq!(out[i], s.is_exploration(&users[i], &reqs[i], slots[i]));
        }
        assert!(s
            .assign_batch(Keys::Many(&users[..3]), Keys::One("r"), &slots)
            .is_err());
    }

    #[test]
    fn rejects_bad_config() {
        assert!(TrafficSplit::new(f64::NAN, "s", vec![]).is_err());
        assert!(TrafficSplit::new(1.5, "s", vec![]).is_err());
        assert!(TrafficSplit::new(0.1, "", vec![]).is_err());
        let v = |n: &str, a, b| Variant {
            name: n.into(),
            start: a,
            end: b,
        };
        let overlap = Layer {
            name: "l".into(),
            variants: vec![v("a", 0, 6000), v("b", 5000, 10000)],
        };
        let err = TrafficSplit::new(0.1, "s", vec![overlap]).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        let outside = Layer {
            name: "l".into(),
            variants: vec![v("a", 0, 10001)],
        };
        assert!(TrafficSplit::new(0.1, "s", vec![outside]).is_err());
        let unnamed = Layer {
            name: "".into(),
            variants: vec![v("a", 0, 10)],
        };
        assert!(TrafficSplit::new(0.1, "s", vec![unnamed]).is_err());
    }

    #[test]
    fn layers_never_change_exploration() {
        let v = |n: &str, a, b| Variant {
            name: n.into(),
            start: a,
            end: b,
        };
        let plain = split(0.05);
        let layered = TrafficSplit::new(
            0.05,
            "fyp",
            vec![Layer {
                name: "ranker".into(),
                variants: vec![v("c", 0, 5000), v("t", 5000, 10000)],
            }],
        )
        .unwrap();
        let slots: Vec<i64> = (0..50_000).collect();
        assert_eq!(
            plain
                .assign_batch(Keys::One("u"), Keys::One("r"), &slots)
                .unwrap(),
            layered
                .assign_batch(Keys::One("u"), Keys::One("r"), &slots)
                .unwrap()
        );
        let b = layered.bucket("ranker", "u");
        let want = if b < 5000 { "c" } else { "t" };
        assert_eq!(layered.variant("ranker", "u").unwrap(), Some(want));
        assert!(matches!(
            layered.variant("nope", "u"),
            Err(Error::NotFound(_))
        ));
    }
}
