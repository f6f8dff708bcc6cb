//! Rows -> Arrow arrays -> one Parquet file, made visible atomically: written under a hidden
//! `.part-*.tmp` name, fsynced, renamed, directory fsynced. Also reads the dedupe keys of
//! committed files back for write-ahead replay, and whole files for the replay and tests.

use super::fsio::{FsIo, IoFile};
use super::record::{FeatureEvent, Record};
use super::schema::{Table, SCHEMA_VERSION};
pub use super::tables::to_batch;
use super::tables::{from_batch, rows_of};
use crate::{Error, Result};
use arrow_array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
pub fn read_feature_events(path: &Path) -> Result<Vec<FeatureEvent>> {
    read_file(path, rows_of::<FeatureEvent>)
}

/// Reads every row of a committed file of `table` (write-ahead-only fields come back empty).
pub fn read_rows(path: &Path, table: Table) -> Result<Vec<Record>> {
    read_file(path, |b| from_batch(table, b))
}

fn read_file<T>(path: &Path, rows: impl Fn(&RecordBatch) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(format!("{}: {e}", path.display()));
    let f = File::open(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.build())
        .map_err(|e| corrupt(&e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| corrupt(&e))?;
        out.extend(rows(&batch).map_err(|e| corrupt(&e))?);
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
