//! The counterfactual event log (DESIGN.md §4): the serving pipeline hands each response's rows
//! to a bounded queue and returns; a background thread writes zstd Parquet, Hive-partitioned by
//! dt/hour, each file visible only once complete. Durable rows (the exploration arm and
//! engagements) are journaled to a write-ahead file first, so backpressure and kill -9 lose none.
//! On-disk contract: docs/eventlog_schema.md.

mod columns;
mod fsio;
mod parquet_io;
pub mod record;
pub mod schema;
mod stats;
mod tables;
pub mod token;
mod wal;
mod worker;
mod writer;

pub use parquet_io::{read_feature_events, read_rows};
pub use record::{
    check_token, Engagement, ExplorationEvent, FeatureEvent, FeatureEventKind, Impression,
    RankerScore, Record, RequestRecords, RequestRow, ServedFeatures, Source,
};
pub use schema::{arrow_schema, Table, DEFAULT_TASKS, SCHEMA_VERSION};
pub use stats::{StatsSnapshot, N_TABLES};
pub use tables::{impression_key, schema_ipc};
pub use token::{user_token, UserTokenizer};
pub(crate) use worker::json_str;
pub use writer::{keep_request, now_us, EventLog, EventLogConfig};

#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod tests;
