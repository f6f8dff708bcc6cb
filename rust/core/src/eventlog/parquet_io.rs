//! Rows -> Arrow arrays -> one Parquet file, made visible atomically: written under a hidden
//! `.part-*.tmp` name, fsynced, renamed, directory fsynced. Also reads the dedupe keys of
//! committed files back for write-ahead replay.

use super::fsio::{FsIo, IoFile};
use super::record::Record;
use super::schema::{arrow_schema, Table, SCHEMA_VERSION};
use crate::{Error, Result};
use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder, UInt64Builder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, UInt64Array,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn strs<'a>(rows: &'a [Record], f: impl Fn(&'a Record) -> &'a str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
}

fn ts(rows: &[Record]) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us()))
            .with_timezone("UTC"),
    )
}

macro_rules! col {
    ($arr:ty, $rows:expr, $variant:path, |$r:ident| $e:expr) => {
        Arc::new(<$arr>::from_iter_values($rows.iter().map(|x| match x {
            $variant($r) => $e,
            _ => Default::default(),
        }))) as ArrayRef
    };
}

macro_rules! bools {
    ($rows:expr, $variant:path, |$r:ident| $e:expr) => {
        Arc::new(BooleanArray::from_iter($rows.iter().map(|x| match x {
            $variant($r) => Some($e),
            _ => Some(false),
        }))) as ArrayRef
    };
}

fn u64_lists<'a>(rows: &'a [Record], f: impl Fn(&'a Record) -> &'a [u64]) -> ArrayRef {
    let mut b = ListBuilder::new(UInt64Builder::new());
    for r in rows {
        b.values().append_slice(f(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

fn f32_lists<'a>(rows: &'a [Record], f: impl Fn(&'a Record) -> &'a [f32]) -> ArrayRef {
    let mut b = ListBuilder::new(Float32Builder::new());
    for r in rows {
        b.values().append_slice(f(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

fn str_lists<'a>(rows: &'a [Record], f: impl Fn(&'a Record) -> &'a [String]) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for v in f(r) {
            b.values().append_value(v);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Builds the Arrow batch of one table. Every row must belong to `table`.
pub fn to_batch(table: Table, rows: &[Record], tasks: &[String]) -> Result<RecordBatch> {
    use Record as R;
    if let Some(r) = rows.iter().find(|r| r.table() != table) {
        return Err(Error::InvalidArgument(format!(
            "a {} row was routed to {}",
            r.table().name(),
            table.name()
        )));
    }
    let cols: Vec<ArrayRef> = match table {
        Table::Impressions => vec![
            strs(rows, |x| match x {
                R::Impression(r) => &r.impression_id,
                _ => "",
            }),
            ts(rows),
            strs(rows, |x| match x {
                R::Impression(r) => &r.request_id,
                _ => "",
            }),
            strs(rows, |x| match x {
                R::Impression(r) => &r.user_token,
                _ => "",
            }),
            col!(UInt64Array, rows, R::Impression, |r| r.item_id),
            col!(Int32Array, rows, R::Impression, |r| r.position),
            strs(rows, |x| match x {
                R::Impression(r) => r.source.as_str(),
                _ => "",
            }),
            col!(Float64Array, rows, R::Impression, |r| r.propensity),
            strs(rows, |x| match x {
                R::Impression(r) => &r.model_version,
                _ => "",
            }),
            strs(rows, |x| match x {
                R::Impression(r) => &r.experiments,
                _ => "",
            }),
            col!(Int32Array, rows, R::Impression, |r| r.topic),
            col!(UInt64Array, rows, R::Impression, |r| r.creator_id),
            col!(Float64Array, rows, R::Impression, |r| r.sampled_pct),
        ],
        Table::Engagements => vec![
            strs(rows, |x| match x {
                R::Engagement(r) => &r.impression_id,
                _ => "",
            }),
            ts(rows),
            strs(rows, |x| match x {
                R::Engagement(r) => &r.user_token,
                _ => "",
            }),
            col!(Float32Array, rows, R::Engagement, |r| r.watched_seconds),
            bools!(rows, R::Engagement, |r| r.completed),
            bools!(rows, R::Engagement, |r| r.liked),
            bools!(rows, R::Engagement, |r| r.shared),
            bools!(rows, R::Engagement, |r| r.followed),
        ],
        Table::ExplorationEvents => vec![
            strs(rows, |x| match x {
                R::Exploration(r) => &r.impression_id,
                _ => "",
            }),
            ts(rows),
            strs(rows, |x| match x {
                R::Exploration(r) => &r.user_token,
                _ => "",
            }),
            col!(UInt64Array, rows, R::Exploration, |r| r.item_id),
            col!(Int32Array, rows, R::Exploration, |r| r.position),
            col!(Int32Array, rows, R::Exploration, |r| r.topic),
            col!(Float64Array, rows, R::Exploration, |r| r.propensity),
            strs(rows, |x| match x {
                R::Exploration(r) => &r.policy,
                _ => "",
            }),
        ],
        Table::RankerScores => {
            let mut v = vec![
                strs(rows, |x| match x {
                    R::Score(r) => &r.impression_id,
                    _ => "",
                }),
                ts(rows),
                strs(rows, |x| match x {
                    R::Score(r) => &r.model_version,
                    _ => "",
                }),
                bools!(rows, R::Score, |r| r.is_shadow),
                col!(Float32Array, rows, R::Score, |r| r.value_score),
            ];
            for t in 0..tasks.len() {
                v.push(col!(Float32Array, rows, R::Score, |r| r
                    .preds
                    .get(t)
                    .copied()
                    .unwrap_or(f32::NAN)));
            }
            v.push(col!(Float64Array, rows, R::Score, |r| r.sampled_pct));
            v
        }
        Table::Requests => vec![
            strs(rows, |x| match x {
                R::Request(r) => &r.request_id,
                _ => "",
            }),
            ts(rows),
            strs(rows, |x| match x {
                R::Request(r) => &r.user_token,
                _ => "",
            }),
            u64_lists(rows, |x| match x {
                R::Request(r) => &r.candidate_item_ids,
                _ => &[],
            }),
            f32_lists(rows, |x| match x {
                R::Request(r) => &r.candidate_scores,
                _ => &[],
            }),
            u64_lists(rows, |x| match x {
                R::Request(r) => &r.served_item_ids,
                _ => &[],
            }),
            col!(Float64Array, rows, R::Request, |r| r.sampled_pct),
            str_lists(rows, |x| match x {
                R::Request(r) => &r.shadow_versions,
                _ => &[],
            }),
            f32_lists(rows, |x| match x {
                R::Request(r) => &r.shadow_candidate_scores,
                _ => &[],
            }),
        ],
        Table::ServedFeatures => vec![
            strs(rows, |x| match x {
                R::Features(r) => &r.request_id,
                _ => "",
            }),
            ts(rows),
            col!(UInt64Array, rows, R::Features, |r| r.item_id),
            f32_lists(rows, |x| match x {
                R::Features(r) => &r.features,
                _ => &[],
            }),
            strs(rows, |x| match x {
                R::Features(r) => &r.feature_set_version,
                _ => "",
            }),
            col!(Float64Array, rows, R::Features, |r| r.sampled_pct),
        ],
        Table::FeatureEvents => vec![
            ts(rows),
            strs(rows, |x| match x {
                R::FeatureEvent(r) => &r.stream,
                _ => "",
            }),
            col!(UInt64Array, rows, R::FeatureEvent, |r| r.seq),
            strs(rows, |x| match x {
                R::FeatureEvent(r) => r.kind.as_str(),
                _ => "",
            }),
            strs(rows, |x| match x {
                R::FeatureEvent(r) => &r.request_id,
                _ => "",
            }),
            strs(rows, |x| match x {
                R::FeatureEvent(r) => &r.user_token,
                _ => "",
            }),
            u64_lists(rows, |x| match x {
                R::FeatureEvent(r) => &r.item_ids,
                _ => &[],
            }),
            col!(Float32Array, rows, R::FeatureEvent, |r| r.watched_frac),
            bools!(rows, R::FeatureEvent, |r| r.completed),
            bools!(rows, R::FeatureEvent, |r| r.liked),
            col!(Int32Array, rows, R::FeatureEvent, |r| r.topic),
            col!(UInt64Array, rows, R::FeatureEvent, |r| r.creator_id),
            col!(Int32Array, rows, R::FeatureEvent, |r| r.category),
            col!(Float64Array, rows, R::FeatureEvent, |r| r.upload_ts),
            f32_lists(rows, |x| match x {
                R::FeatureEvent(r) => &r.embedding,
                _ => &[],
            }),
            col!(Float32Array, rows, R::FeatureEvent, |r| r.long_term_weight),
            col!(Float32Array, rows, R::FeatureEvent, |r| r.recency_half_life),
        ],
    };
    RecordBatch::try_new(arrow_schema(table, tasks), cols).map_err(|e| {
        Error::InvalidArgument(format!("cannot build the {} batch: {e}", table.name()))
    })
}

/// The writer properties and schema metadata of one table's files.
fn writer_props(
    table: Table,
    extra_meta: &[(String, String)],
    zstd_level: i32,
) -> Result<(WriterProperties, std::collections::HashMap<String, String>)> {
    let mut kv = vec![
        KeyValue::new("fyp.schema_version".to_string(), SCHEMA_VERSION.to_string()),
        KeyValue::new("fyp.table".to_string(), table.name().to_string()),
    ];
    kv.extend(
        extra_meta
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    // the same pairs also go into the embedded Arrow schema, so pyarrow's schema.metadata shows them
    let meta = kv
        .iter()
        .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
        .collect();
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|e| Error::InvalidArgument(format!("zstd level {zstd_level}: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_key_value_metadata(Some(kv))
        .set_created_by(format!("fyp_core {}", env!("CARGO_PKG_VERSION")));
    // unique ids gain nothing from a dictionary and cost a hash per value
    let props = match table {
        Table::Impressions
        | Table::ExplorationEvents
        | Table::RankerScores
        | Table::Engagements => {
            props.set_column_dictionary_enabled(ColumnPath::from("impression_id"), false)
        }
        Table::Requests => {
            props.set_column_dictionary_enabled(ColumnPath::from("request_id"), false)
        }
        Table::ServedFeatures | Table::FeatureEvents => props,
    }
    .build();
    Ok((props, meta))
}

/// A file that became visible.
pub struct Written {
    pub path: PathBuf,
    /// The file is renamed into place (visible, survives kill -9) but fsyncing its directory
    /// failed, so the rename may not survive a power cut.
    pub dir_sync_error: Option<String>,
}

/// Writes `batch` as `dir/name` (zstd), visible only once complete: written under a hidden
/// temporary name, fsynced, renamed, directory fsynced. `Err` means no file became visible.
pub fn write_atomic(
    io: &FsIo,
    dir: &Path,
    name: &str,
    table: Table,
    batch: &RecordBatch,
    extra_meta: &[(String, String)],
    zstd_level: i32,
) -> Result<Written> {
    let err = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        Error::Io(format!("{what} {}: {e}", p.display()))
    };
    fs::create_dir_all(dir).map_err(|e| err("cannot create directory", dir, &e))?;
    let (props, meta) = writer_props(table, extra_meta, zstd_level)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    let file = io
        .create_truncate(&tmp)
        .map_err(|e| err("cannot create", &tmp, &e))?;
    let sync_handle = file
        .try_clone()
        .map_err(|e| err("cannot clone handle of", &tmp, &e))?;
    let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(meta));
    let sink = IoFile {
        file,
        path: tmp.clone(),
        io: io.clone(),
    };
    let result = (|| -> std::result::Result<(), String> {
        let batch = batch
            .clone()
            .with_schema(schema.clone())
            .map_err(|e| e.to_string())?;
        let mut w = ArrowWriter::try_new(sink, schema, Some(props)).map_err(|e| e.to_string())?;
        w.write(&batch).map_err(|e| e.to_string())?;
        w.close().map_err(|e| e.to_string())?;
        io.sync_all(&sync_handle, &tmp).map_err(|e| e.to_string())
    })()
    .and_then(|()| {
        io.rename(&tmp, &dst)
            .map_err(|e| format!("cannot rename into place: {e}"))
    });
    if let Err(e) = result {
        return Err(match io.remove(&tmp) {
            Ok(()) => err("cannot write", &tmp, &e),
            Err(r) if r.kind() == std::io::ErrorKind::NotFound => err("cannot write", &tmp, &e),
            // a leftover temporary is hidden from readers and removed at the next start
            Err(r) => err("cannot write", &tmp, &format!("{e} (removing it: {r})")),
        });
    }
    let dir_sync_error = io
        .sync_dir(dir)
        .err()
        .map(|e| format!("cannot fsync directory {}: {e}", dir.display()));
    Ok(Written {
        path: dst,
        dir_sync_error,
    })
}

/// The dedupe keys ([`Record::dedupe_key`]) of every row of a committed file.
pub fn read_keys(path: &Path, table: Table) -> Result<Vec<String>> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let b = ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| corrupt(&e))?;
    let (a, second) = match table {
        Table::Impressions | Table::ExplorationEvents => ("impression_id", None),
        Table::RankerScores => ("impression_id", Some("model_version")),
        Table::Engagements => ("impression_id", Some("ts")),
        Table::Requests => ("request_id", None),
        Table::ServedFeatures => ("request_id", Some("item_id")),
        Table::FeatureEvents => ("stream", Some("seq")),
    };
    let names: Vec<&str> = std::iter::once(a).chain(second).collect();
    let mask = ProjectionMask::columns(b.parquet_schema(), names.iter().copied());
    let reader = b.with_projection(mask).build().map_err(|e| corrupt(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        let col = |n: &str| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| corrupt(&format!("column {n} missing")))
        };
        let first = col(a)?;
        let first = first
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| corrupt(&format!("{a} is not a string column")))?;
        let sec = match second {
            Some(n) => Some(col(n)?),
            None => None,
        };
        for i in 0..batch.num_rows() {
            let k = first.value(i);
            let key = match &sec {
                None => k.to_string(),
                Some(c) => {
                    let v = if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
                        s.value(i).to_string()
                    } else if let Some(t) = c.as_any().downcast_ref::<TimestampMicrosecondArray>() {
                        t.value(i).to_string()
                    } else if let Some(u) = c.as_any().downcast_ref::<UInt64Array>() {
                        u.value(i).to_string()
                    } else {
                        return Err(corrupt(&"unexpected key column type"));
                    };
                    format!("{k}\u{1f}{v}")
                }
            };
            out.push(key);
        }
    }
    Ok(out)
}

/// Reads every row of a committed `feature_events` file (the feature store's changelog).
pub fn read_feature_events(path: &Path) -> Result<Vec<super::record::FeatureEvent>> {
    use super::record::{FeatureEvent, FeatureEventKind};
    use arrow_array::{Int32Array, ListArray};
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| corrupt(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        macro_rules! col {
            ($name:expr, $ty:ty) => {
                batch
                    .column_by_name($name)
                    .and_then(|c| c.as_any().downcast_ref::<$ty>())
                    .ok_or_else(|| corrupt(&format!("column {} missing or mistyped", $name)))?
            };
        }
        let ts = col!("ts", TimestampMicrosecondArray);
        let stream = col!("stream", StringArray);
        let seq = col!("seq", UInt64Array);
        let kind = col!("kind", StringArray);
        let request_id = col!("request_id", StringArray);
        let user_token = col!("user_token", StringArray);
        let item_ids = col!("item_ids", ListArray);
        let watched = col!("watched_frac", Float32Array);
        let completed = col!("completed", BooleanArray);
        let liked = col!("liked", BooleanArray);
        let topic = col!("topic", Int32Array);
        let creator = col!("creator_id", UInt64Array);
        let category = col!("category", Int32Array);
        let upload_ts = col!("upload_ts", Float64Array);
        let embedding = col!("embedding", ListArray);
        let ltw = col!("long_term_weight", Float32Array);
        let rhl = col!("recency_half_life", Float32Array);
        let ids_values = item_ids
            .values()
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| corrupt(&"item_ids is not a list of uint64"))?;
        let emb_values = embedding
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| corrupt(&"embedding is not a list of float32"))?;
        let (io, eo) = (item_ids.value_offsets(), embedding.value_offsets());
        for i in 0..batch.num_rows() {
            let ids = &ids_values.values()[io[i] as usize..io[i + 1] as usize];
            let emb = &emb_values.values()[eo[i] as usize..eo[i + 1] as usize];
            out.push(FeatureEvent {
                ts_us: ts.value(i),
                stream: stream.value(i).to_owned(),
                seq: seq.value(i),
                kind: FeatureEventKind::parse(kind.value(i)).map_err(|e| corrupt(&e))?,
                request_id: request_id.value(i).to_owned(),
                user_token: user_token.value(i).to_owned(),
                item_ids: ids.to_vec(),
                watched_frac: watched.value(i),
                completed: completed.value(i),
                liked: liked.value(i),
                topic: topic.value(i),
                creator_id: creator.value(i),
                category: category.value(i),
                upload_ts: upload_ts.value(i),
                embedding: emb.to_vec(),
                long_term_weight: ltw.value(i),
                recency_half_life: rhl.value(i),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    /// Removes a test directory; only "it was not there" is expected and passed over.
    fn clear(d: &std::path::Path) {
        if let Err(e) = fs::remove_dir_all(d) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::NotFound,
                "{}: {e}",
                d.display()
            );
        }
    }
    use super::*;
    use crate::eventlog::record::tests::samples;

    #[test]
    fn every_table_writes_and_keys_read_back() {
        let d = std::env::temp_dir().join(format!("fyp-pq-{}", std::process::id()));
        clear(&d);
        let tasks: Vec<String> = super::super::schema::DEFAULT_TASKS
            .iter()
            .map(|s| s.to_string())
            .collect();
        for r in samples() {
            let t = r.table();
            let b = to_batch(t, std::slice::from_ref(&r), &tasks).unwrap();
            assert_eq!(b.num_rows(), 1);
            let io = FsIo::default();
            let p = write_atomic(&io, &d, &format!("{}.parquet", t.name()), t, &b, &[], 1)
                .unwrap()
                .path;
            assert!(p.exists());
            assert_eq!(read_keys(&p, t).unwrap(), vec![r.dedupe_key()]);
            if let Record::FeatureEvent(ev) = &r {
                assert_eq!(read_feature_events(&p).unwrap(), vec![ev.clone()]);
            }
        }
        // no temporary file is left behind
        let names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        // rows of another table are refused
        assert!(to_batch(Table::Requests, &samples()[..1], &tasks).is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
