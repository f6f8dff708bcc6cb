//! The catalogue stream: uploads and take-downs published to one Redis Stream per namespace
//! (`fyp:{namespace}:catalog`), so every serving host applies every other host's catalogue
//! changes (issue #16). Entries carry the publishing pipeline's stream name (`o`), a kind
//! (`k`: `u` upload, `r` removal) and a binary payload (`d`, little-endian, below). Applying is
//! idempotent (an upload is an upsert by item id, a removal removes), so a host that re-reads
//! entries after a restart ends with the same item set.

use super::{Op, RedisTier};
use crate::serve::store::ItemInfo;
use crate::{invalid, Error, Result};
use redis::Value;

/// Entries kept in the stream (approximate trim, `MAXLEN ~`): a host further behind than this
/// must reload a snapshot; [`RedisTier::read_catalog`] reports it as a gap.
pub const STREAM_MAXLEN: usize = 1_000_000;

const UPLOAD_FORMAT: u8 = 1;
const REMOVAL_FORMAT: u8 = 1;

/// One catalogue change.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogChange {
    Upload { info: ItemInfo, embedding: Vec<f32> },
    Removal { ids: Vec<u64>, ts: f64 },
}

/// One entry read back: its stream id, the publishing pipeline, the change.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub id: String,
    pub origin: String,
    pub change: CatalogChange,
}

/// What one read returned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogRead {
    pub entries: Vec<CatalogEntry>,
    /// Entries ever removed from the stream (`entries-added - length`, by trimming): a reader
    /// that consumed fewer entries than this since the stream began missed some.
    pub trimmed: u64,
}

/// Upload payload: format u8, id u64, topic u32, creator u64, category u32, upload_ts f64,
/// dim u32, then dim f32.
fn encode_upload(info: &ItemInfo, emb: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(37 + 4 * emb.len());
    b.push(UPLOAD_FORMAT);
    b.extend_from_slice(&info.id.to_le_bytes());
    b.extend_from_slice(&info.topic.to_le_bytes());
    b.extend_from_slice(&info.creator.to_le_bytes());
    b.extend_from_slice(&info.category.to_le_bytes());
    b.extend_from_slice(&info.upload_ts.to_le_bytes());
    b.extend_from_slice(&(emb.len() as u32).to_le_bytes());
    for x in emb {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// Removal payload: format u8, ts f64, n u32, then n u64 ids.
fn encode_removal(ids: &[u64], ts: f64) -> Vec<u8> {
    let mut b = Vec::with_capacity(13 + 8 * ids.len());
    b.push(REMOVAL_FORMAT);
    b.extend_from_slice(&ts.to_le_bytes());
    b.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        b.extend_from_slice(&id.to_le_bytes());
    }
    b
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, t) = (self.0.get(..N)?, self.0.get(N..)?);
        self.0 = t;
        h.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn f64(&mut self) -> Option<f64> {
        self.take().map(f64::from_le_bytes)
    }
    fn f32(&mut self) -> Option<f32> {
        self.take().map(f32::from_le_bytes)
    }
}

fn decode_upload(b: &[u8]) -> Option<CatalogChange> {
    let mut r = Reader(b);
    if r.u8()? != UPLOAD_FORMAT {
        return None;
    }
    let info = ItemInfo {
        id: r.u64()?,
        topic: r.u32()?,
        creator: r.u64()?,
        category: r.u32()?,
        upload_ts: r.f64()?,
    };
    let dim = r.u32()? as usize;
    if r.0.len() != 4 * dim {
        return None;
    }
    let embedding = (0..dim).map(|_| r.f32()).collect::<Option<Vec<f32>>>()?;
    Some(CatalogChange::Upload { info, embedding })
}

fn decode_removal(b: &[u8]) -> Option<CatalogChange> {
    let mut r = Reader(b);
    if r.u8()? != REMOVAL_FORMAT {
        return None;
    }
    let ts = r.f64()?;
    let n = r.u32()? as usize;
    if r.0.len() != 8 * n {
        return None;
    }
    let ids = (0..n).map(|_| r.u64()).collect::<Option<Vec<u64>>>()?;
    Some(CatalogChange::Removal { ids, ts })
}

/// Orders stream ids `ms-seq` numerically.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

impl RedisTier {
    /// `fyp:{namespace}:catalog`.
    pub fn catalog_key(&self) -> String {
        format!("{}catalog", self.prefix)
    }

    /// Appends changes to the catalogue stream in one pipeline; returns their stream ids.
    pub fn publish_catalog(&self, origin: &str, changes: &[CatalogChange]) -> Result<Vec<String>> {
        if changes.is_empty() {
            return Ok(vec![]);
        }
        let key = self.catalog_key();
        let mut p = redis::pipe();
        for c in changes {
            let (kind, payload) = match c {
                CatalogChange::Upload { info, embedding } => ("u", encode_upload(info, embedding)),
                CatalogChange::Removal { ids, ts } => ("r", encode_removal(ids, *ts)),
            };
            p.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("o")
                .arg(origin)
                .arg("k")
                .arg(kind)
                .arg("d")
                .arg(payload);
        }
        let replies = self.run(Op::Write, "publish_catalog", |con| {
            self.exchange(con, &p.get_packed_pipeline(), changes.len(), false)
        })?;
        replies
            .iter()
            .map(|v| {
                bytes(v)
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(str::to_owned)
                    .ok_or_else(|| self.corrupt(format!("XADD replied {v:?}")))
            })
            .collect()
    }

    /// Up to `count` entries after stream id `after` ("0-0" = from the start), oldest first,
    /// and whether entries after `after` were trimmed before they could be read (a gap).
    pub fn read_catalog(&self, after: &str, count: usize) -> Result<CatalogRead> {
        parse_id(after).ok_or_else(|| {
            invalid!("stream position must look like 1700000000000-0, got {after:?}")
        })?;
        if count == 0 || count > 100_000 {
            return Err(invalid!("count must be in [1, 100000], got {count}"));
        }
        let key = self.catalog_key();
        let range: Value = self.run(Op::Read, "read_catalog", |con| {
            redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query(con)
        })?;
        let entries = self.entries(&range)?;
        // one reply per call, so a missing stream (an error reply) leaves the connection clean
        let info: Option<Value> = self.run(Op::Read, "read_catalog", |con| {
            match redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query::<Value>(con)
            {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.to_string().contains("no such key") => Ok(None),
                Err(e) => Err(e),
            }
        })?;
        let trimmed = match info {
            Some(v) => self.trimmed(&v)?,
            None => 0,
        };
        Ok(CatalogRead { entries, trimmed })
    }

    /// `entries-added - length` of an XINFO STREAM reply (RESP2 flat list or RESP3 map).
    fn trimmed(&self, info: &Value) -> Result<u64> {
        let pairs: Vec<(&Value, &Value)> = match info {
            Value::Array(v) => v.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            other => return Err(self.corrupt(format!("XINFO STREAM replied {other:?}"))),
        };
        let int = |name: &[u8]| {
            pairs
                .iter()
                .find(|(k, _)| bytes(k) == Some(name))
                .and_then(|(_, v)| match v {
                    Value::Int(n) => u64::try_from(*n).ok(),
                    _ => None,
                })
        };
        match (int(b"entries-added"), int(b"length")) {
            (Some(added), Some(len)) => Ok(added.saturating_sub(len)),
            _ => {
                Err(self
                    .corrupt("XINFO STREAM has no entries-added/length (Redis >= 7 needed)".into()))
            }
        }
    }

    fn entries(&self, range: &Value) -> Result<Vec<CatalogEntry>> {
        let Value::Array(items) = range else {
            return Err(self.corrupt(format!("XRANGE replied {range:?}")));
        };
        items.iter().map(|e| self.entry(e)).collect()
    }

    fn entry(&self, e: &Value) -> Result<CatalogEntry> {
        let bad = |what: &str| self.corrupt(format!("catalogue entry {what}: {e:?}"));
        let Value::Array(pair) = e else {
            return Err(bad("is not [id, fields]"));
        };
        let [id, fields] = pair.as_slice() else {
            return Err(bad("is not [id, fields]"));
        };
        let id = bytes(id)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| bad("has no id"))?;
        let Value::Array(fields) = fields else {
            return Err(bad("has no fields"));
        };
        let get = |name: &[u8]| {
            fields
                .chunks_exact(2)
                .find(|kv| bytes(&kv[0]) == Some(name))
                .and_then(|kv| bytes(&kv[1]))
        };
        let origin = get(b"o").and_then(|b| std::str::from_utf8(b).ok());
        let change = match (get(b"k"), get(b"d")) {
            (Some(b"u"), Some(d)) => decode_upload(d),
            (Some(b"r"), Some(d)) => decode_removal(d),
            _ => None,
        };
        match (origin, change) {
            (Some(o), Some(change)) => Ok(CatalogEntry {
                id: id.to_owned(),
                origin: o.to_owned(),
                change,
            }),
            _ => Err(bad("cannot be decoded")),
        }
    }
}

/// Checks an entry's upload against the pipeline's embedding width.
pub fn check_upload_dim(entry: &CatalogEntry, dim: usize) -> Result<()> {
    if let CatalogChange::Upload { info, embedding } = &entry.change {
        if embedding.len() != dim {
            return Err(Error::Corrupt(format!(
                "catalogue entry {} uploads item {} with a {}-d embedding; this host serves {dim}-d",
                entry.id,
                info.id,
                embedding.len()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let info = ItemInfo {
            id: 7,
            topic: 3,
            creator: 9,
            category: 1,
            upload_ts: 1.5,
        };
        let emb = vec![0.25f32, -1.0, 3.0];
        let u = encode_upload(&info, &emb);
        assert_eq!(
            decode_upload(&u),
            Some(CatalogChange::Upload {
                info,
                embedding: emb
            })
        );
        assert_eq!(decode_upload(&u[..u.len() - 1]), None);
        let r = encode_removal(&[1, 2, 3], 9.0);
        assert_eq!(
            decode_removal(&r),
            Some(CatalogChange::Removal {
                ids: vec![1, 2, 3],
                ts: 9.0
            })
        );
        assert_eq!(decode_removal(&r[..5]), None);
        assert!(parse_id("12-3") < parse_id("12-10"));
        assert_eq!(parse_id("x"), None);
    }
}
