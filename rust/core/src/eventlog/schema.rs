//! The on-disk contract of the event log (docs/eventlog_schema.md): table names, Arrow schemas,
//! schema version and the Hive partition of a timestamp. Analytics reads exactly this.

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::sync::Arc;

/// Written into every file as key-value metadata `fyp.schema_version`.
pub const SCHEMA_VERSION: &str = "1";

/// The default ranker task set: one `pred_<task>` column per task in `ranker_scores`.
pub const DEFAULT_TASKS: [&str; 5] = ["finish", "like", "share", "follow", "watch_seconds"];

/// The six tables of DESIGN.md §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Impressions = 0,
    Engagements = 1,
    ExplorationEvents = 2,
    RankerScores = 3,
    Requests = 4,
    ServedFeatures = 5,
    /// The feature store's changelog (an additive v1 table, see docs/eventlog_schema.md).
    FeatureEvents = 6,
}

impl Table {
    pub const ALL: [Table; 7] = [
        Table::Impressions,
        Table::Engagements,
        Table::ExplorationEvents,
        Table::RankerScores,
        Table::Requests,
        Table::ServedFeatures,
        Table::FeatureEvents,
    ];

    /// The directory name under the log root (also the `fyp.table` metadata value).
    pub fn name(self) -> &'static str {
        match self {
            Table::Impressions => "impressions",
            Table::Engagements => "engagements",
            Table::ExplorationEvents => "exploration_events",
            Table::RankerScores => "ranker_scores",
            Table::Requests => "requests",
            Table::ServedFeatures => "served_features",
            Table::FeatureEvents => "feature_events",
        }
    }

    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(i: u8) -> Option<Table> {
        Table::ALL.get(i as usize).copied()
    }
}

fn ts_field() -> Field {
    Field::new(
        "ts",
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn s(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn list_of(name: &str, inner: DataType) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", inner, true))),
        false,
    )
}

/// The Arrow schema of `table`; `tasks` names the `pred_<task>` columns of `ranker_scores`.
pub fn arrow_schema(table: Table, tasks: &[String]) -> SchemaRef {
    use DataType::*;
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    let fields: Vec<Field> = match table {
        Table::Impressions => vec![
            s("impression_id"),
            ts_field(),
            s("request_id"),
            s("user_token"),
            f("item_id", UInt64),
            f("position", Int32),
            s("source"),
            f("propensity", Float64),
            s("model_version"),
            s("experiments"),
            f("topic", Int32),
            f("creator_id", UInt64),
            f("sampled_pct", Float64),
        ],
        Table::Engagements => vec![
            s("impression_id"),
            ts_field(),
            s("user_token"),
            f("watched_seconds", Float32),
            f("completed", Boolean),
            f("liked", Boolean),
            f("shared", Boolean),
            f("followed", Boolean),
        ],
        Table::ExplorationEvents => vec![
            s("impression_id"),
            ts_field(),
            s("user_token"),
            f("item_id", UInt64),
            f("position", Int32),
            f("topic", Int32),
            f("propensity", Float64),
            s("policy"),
        ],
        Table::RankerScores => {
            let mut v = vec![
                s("impression_id"),
                ts_field(),
                s("model_version"),
                f("is_shadow", Boolean),
                f("value_score", Float32),
            ];
            v.extend(tasks.iter().map(|t| f(&format!("pred_{t}"), Float32)));
            v.push(f("sampled_pct", Float64));
            v
        }
        Table::Requests => vec![
            s("request_id"),
            ts_field(),
            s("user_token"),
            list_of("candidate_item_ids", UInt64),
            list_of("candidate_scores", Float32),
            list_of("served_item_ids", UInt64),
            f("sampled_pct", Float64),
            list_of("shadow_versions", Utf8),
            list_of("shadow_candidate_scores", Float32),
        ],
        Table::ServedFeatures => vec![
            s("request_id"),
            ts_field(),
            f("item_id", UInt64),
            list_of("features", Float32),
            s("feature_set_version"),
            f("sampled_pct", Float64),
        ],
        Table::FeatureEvents => vec![
            ts_field(),
            s("stream"),
            f("seq", UInt64),
            s("kind"),
            s("request_id"),
            s("user_token"),
            list_of("item_ids", UInt64),
            f("watched_frac", Float32),
            f("completed", Boolean),
            f("liked", Boolean),
            f("topic", Int32),
            f("creator_id", UInt64),
            f("category", Int32),
            f("upload_ts", Float64),
            list_of("embedding", Float32),
            f("long_term_weight", Float32),
            f("recency_half_life", Float32),
        ],
    };
    Arc::new(Schema::new(fields))
}

/// A Hive partition: UTC day (days since 1970-01-01) and hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition {
    pub day: i64,
    pub hour: u8,
}

impl Partition {
    pub fn of_micros(ts_us: i64) -> Partition {
        let secs = ts_us.div_euclid(1_000_000);
        let day = secs.div_euclid(86_400);
        let hour = (secs.rem_euclid(86_400) / 3600) as u8;
        Partition { day, hour }
    }

    /// `dt=YYYY-MM-DD/hour=HH`, the relative directory under a table.
    pub fn dir(self) -> String {
        let (y, m, d) = civil_from_days(self.day);
        format!("dt={y:04}-{m:02}-{d:02}/hour={:02}", self.hour)
    }
}

/// Days since 1970-01-01 -> (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_matches_known_dates() {
        assert_eq!(Partition::of_micros(0).dir(), "dt=1970-01-01/hour=00");
        // 2024-02-29T23:59:59Z = 1709251199
        assert_eq!(
            Partition::of_micros(1_709_251_199_000_000).dir(),
            "dt=2024-02-29/hour=23"
        );
        assert_eq!(
            Partition::of_micros(1_709_251_200_000_000).dir(),
            "dt=2024-03-01/hour=00"
        );
        assert_eq!(Partition::of_micros(-1).dir(), "dt=1969-12-31/hour=23");
    }

    #[test]
    fn civil_round_trip_against_day_counting() {
        // brute force: walk day by day from 1970 and compare
        let mut y = 1970i64;
        let (mut m, mut d) = (1u32, 1u32);
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        for z in 0..80_000i64 {
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
            let mdays = [
                31,
                if leap(y) { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ];
            d += 1;
            if d > mdays[(m - 1) as usize] {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn table_names_round_trip() {
        for t in Table::ALL {
            assert_eq!(Table::from_name(t.name()), Some(t));
            assert_eq!(Table::from_index(t.index() as u8), Some(t));
        }
        let tasks: Vec<String> = DEFAULT_TASKS.iter().map(|s| s.to_string()).collect();
        let sc = arrow_schema(Table::RankerScores, &tasks);
        assert!(sc.field_with_name("pred_watch_seconds").is_ok());
    }
}
