//! The online feature tier in Redis, so several serving processes share one state (issue #8): the
//! real-time tier (each user's last interactions) and the near-real-time tier (the sliding-window
//! counters of `window.rs`). The in-process store stays the embedded default and the fallback:
//! every call here is bounded by a timeout, and after a failure the tier reports itself
//! unavailable for a while (one atomic load) so requests serve from the in-process snapshot
//! instead of waiting on a dead server. Key schema, encodings and TTLs: `docs/redis.md`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Client, Connection, RedisError, Value};

use super::idhash::IdMap;
use super::store::Interaction;
use super::window::{bucket_of, Window};
use crate::{invalid, Error, Result};

/// One counted event: (key, time in seconds, count per kind).
pub type CountEvent<const K: usize> = (u64, f64, [u32; K]);

/// Bytes of one encoded [`Interaction`] (see [`encode_interaction`]).
pub const INTERACTION_BYTES: usize = 22;
const INTERACTION_FORMAT: u8 = 1;
/// At most this many windows per family (fields per key stay few; HMGET stays small).
pub const MAX_WINDOWS: usize = 8;
/// Stale buckets deleted per window and key on each write, at most (see `stale_range`).
const MAX_STALE_BUCKETS: i64 = 64;

/// Encodes an interaction as 22 bytes, little-endian: format byte `1`, `item_id` u64, `ts` f64
/// (IEEE bits), `watched_frac` f32 (IEEE bits), flags u8 (bit 0 = liked).
pub fn encode_interaction(it: &Interaction) -> [u8; INTERACTION_BYTES] {
    let mut b = [0u8; INTERACTION_BYTES];
    b[0] = INTERACTION_FORMAT;
    b[1..9].copy_from_slice(&it.item_id.to_le_bytes());
    b[9..17].copy_from_slice(&it.ts.to_le_bytes());
    b[17..21].copy_from_slice(&it.watched_frac.to_le_bytes());
    b[21] = u8::from(it.liked);
    b
}

/// Decodes [`encode_interaction`]'s bytes; `None` for anything else (length, format, flags).
pub fn decode_interaction(b: &[u8]) -> Option<Interaction> {
    let b: &[u8; INTERACTION_BYTES] = b.try_into().ok()?;
    if b[0] != INTERACTION_FORMAT || b[21] > 1 {
        return None;
    }
    Some(Interaction {
        item_id: u64::from_le_bytes(b[1..9].try_into().ok()?),
        ts: f64::from_le_bytes(b[9..17].try_into().ok()?),
        watched_frac: f32::from_le_bytes(b[17..21].try_into().ok()?),
        liked: b[21] == 1,
    })
}

/// How to reach Redis and how long to wait for it. `Debug` redacts the URL's password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]` or `unix:///path/to/socket`.
    pub url: String,
    /// Separates deployments (and tests) sharing one server: keys start `fyp:{namespace}:`.
    /// 1..=64 characters of `[A-Za-z0-9_.-]`.
    pub namespace: String,
    /// TCP connect (plus handshake) timeout of a new connection.
    pub connect_timeout_ms: u64,
    /// Read and write timeout of each socket operation of a call.
    pub io_timeout_ms: u64,
    /// Idle connections kept for reuse. Concurrent calls beyond it open extra connections,
    /// which are closed after use instead of pooled.
    pub pool_size: usize,
    /// After a connection failure or timeout, calls fail at once (without touching the network)
    /// for this long; then one call probes the server again. 0 = every call tries.
    pub retry_after_ms: u64,
    /// Expiry of a user's history list, refreshed by every push.
    pub history_ttl_s: u64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/".to_string(),
            namespace: "default".to_string(),
            connect_timeout_ms: 100,
            io_timeout_ms: 25,
            pool_size: 8,
            retry_after_ms: 1_000,
            history_ttl_s: 7 * 24 * 3600,
        }
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact(&self.url))
            .field("namespace", &self.namespace)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("io_timeout_ms", &self.io_timeout_ms)
            .field("pool_size", &self.pool_size)
            .field("retry_after_ms", &self.retry_after_ms)
            .field("history_ttl_s", &self.history_ttl_s)
            .finish()
    }
}

fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if s.is_empty() || s.len() > max || !s.chars().all(ok_char) {
        return Err(invalid!(
            "{what} must be 1..={max} characters of [A-Za-z0-9_.-], got {s:?}"
        ));
    }
    Ok(())
}

impl RedisOptions {
    /// Checks every field; the URL's syntax is checked by [`RedisTier::connect`].
    pub fn validate(&self) -> Result<()> {
        check_name("RedisOptions.namespace", &self.namespace, 64)?;
        for (name, v) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("io_timeout_ms", self.io_timeout_ms),
        ] {
            if !(1..=60_000).contains(&v) {
                return Err(invalid!(
                    "RedisOptions.{name} must be in 1..=60000, got {v}"
                ));
            }
        }
        if !(1..=1024).contains(&self.pool_size) {
            return Err(invalid!(
                "RedisOptions.pool_size must be in 1..=1024, got {}",
                self.pool_size
            ));
        }
        if self.retry_after_ms > 3_600_000 {
            return Err(invalid!(
                "RedisOptions.retry_after_ms must be <= 3600000 (one hour), got {}",
                self.retry_after_ms
            ));
        }
        if !(1..=i64::MAX as u64).contains(&self.history_ttl_s) {
            return Err(invalid!(
                "RedisOptions.history_ttl_s must be >= 1, got {}",
                self.history_ttl_s
            ));
        }
        Ok(())
    }
}

/// Counters since [`RedisTier::connect`], and the current availability.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Read calls that went to the server (a call is one pipeline: one round trip).
    pub reads: u64,
    pub read_errors: u64,
    /// Write calls that went to the server.
    pub writes: u64,
    pub write_errors: u64,
    /// Calls (reads or writes) refused without touching the network while the tier was down.
    pub skipped_while_down: u64,
    /// What [`RedisTier::is_available`] says now.
    pub available: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// The URL as shown in messages: any password replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            } else {
                url.to_string()
            }
        }
        _ => url.to_string(),
    }
}

/// A failure that says the server is gone or slow (as opposed to a bad reply).
fn is_availability_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// The shared online tier. `Send + Sync`: one per process, shared by every request thread.
pub struct RedisTier {
    opts: RedisOptions,
    shown_url: String,
    client: Client,
    prefix: String,
    pool: Mutex<Vec<Connection>>,
    epoch: Instant,
    /// 0 = up; otherwise calls fail fast until this time (ms since `epoch`, always >= 1).
    down_until_ms: AtomicU64,
    last_error: Mutex<String>,
    reads: AtomicU64,
    read_errors: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    skipped: AtomicU64,
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("url", &self.shown_url)
            .field("namespace", &self.opts.namespace)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisTier {
    /// Checks the options and the URL, then probes the server once (bounded by
    /// `connect_timeout_ms`). An invalid URL or option is an `InvalidArgument` error; a server
    /// that is down is *not* an error: a serving process must be able to start without it. The
    /// tier then starts unavailable ([`is_available`](Self::is_available) is false) and probes
    /// again after `retry_after_ms`.
    pub fn connect(opts: RedisOptions) -> Result<RedisTier> {
        opts.validate()?;
        let shown_url = redact(&opts.url);
        let client = Client::open(opts.url.as_str())
            .map_err(|e| invalid!("RedisOptions.url {shown_url:?} is not a valid redis URL (redis://host:port/db or unix:///path): {e}"))?;
        let tier = RedisTier {
            prefix: format!("fyp:{}:", opts.namespace),
            shown_url,
            client,
            opts,
            pool: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            down_until_ms: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            reads: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        };
        match tier.open_connection() {
            Ok(con) => tier.pool.lock().push(con),
            Err(e) => tier.mark_down(&format!("connect failed: {e}")),
        }
        Ok(tier)
    }

    pub fn options(&self) -> &RedisOptions {
        &self.opts
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        &self.shown_url
    }

    /// False for `retry_after_ms` after a connection failure or timeout: the request path
    /// should then read its in-process snapshot without calling this tier. One atomic load.
    pub fn is_available(&self) -> bool {
        let d = self.down_until_ms.load(Ordering::Acquire);
        d == 0 || self.now_ms() >= d
    }

    pub fn stats(&self) -> RedisStats {
        RedisStats {
            reads: self.reads.load(Ordering::Relaxed),
            read_errors: self.read_errors.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            skipped_while_down: self.skipped.load(Ordering::Relaxed),
            available: self.is_available(),
        }
    }

    /// `fyp:{namespace}:u:{user_key:x}`: a list of encoded interactions, oldest first.
    pub fn user_key(&self, user_key: u64) -> String {
        format!("{}u:{user_key:x}", self.prefix)
    }

    /// `fyp:{namespace}:{family}:{key}`: a hash of window counts.
    pub fn counter_key(&self, family: &str, key: u64) -> String {
        format!("{}{family}:{key}", self.prefix)
    }

    /// Appends interactions to their users' histories (in the order given, most recent last),
    /// keeps the last `history_len` of each and refreshes its TTL: one pipeline.
    pub fn push_interactions(
        &self,
        items: &[(u64, Interaction)],
        history_len: usize,
    ) -> Result<()> {
        if history_len == 0 || history_len > i64::MAX as usize {
            return Err(invalid!("history_len must be > 0, got {history_len}"));
        }
        if items.is_empty() {
            return Ok(());
        }
        // One RPUSH per user, users in order of first appearance, each user's items in order.
        let mut order: Vec<u64> = Vec::new();
        let mut per_user: IdMap<Vec<[u8; INTERACTION_BYTES]>> = IdMap::default();
        for (user, it) in items {
            per_user
                .entry(*user)
                .or_insert_with(|| {
                    order.push(*user);
                    Vec::new()
                })
                .push(encode_interaction(it));
        }
        let keep_from = -(history_len as i64);
        let mut p = redis::pipe();
        for user in &order {
            let key = self.user_key(*user);
            p.cmd("RPUSH").arg(&key);
            for enc in &per_user[user] {
                p.arg(&enc[..]);
            }
            p.cmd("LTRIM").arg(&key).arg(keep_from).arg(-1);
            p.cmd("EXPIRE").arg(&key).arg(self.opts.history_ttl_s);
        }
        self.run(Op::Write, "push_interactions", |con| {
            self.exchange(con, &p.get_packed_pipeline(), p.len(), false)
                .map(|_| ())
        })
    }

    /// A user's history, oldest first; empty for an unknown (or expired) user.
    pub fn user_history(&self, user_key: u64) -> Result<Vec<Interaction>> {
        let key = self.user_key(user_key);
        let mut p = redis::pipe();
        p.cmd("LRANGE").arg(&key).arg(0).arg(-1);
        let mut replies = self.run(Op::Read, "user_history", |con| {
            self.exchange(con, &p.get_packed_pipeline(), 1, true)
        })?;
        let entries = match replies.pop() {
            Some(Value::Array(v)) => v,
            other => return Err(self.corrupt(format!("LRANGE {key} returned {other:?}"))),
        };
        entries
            .iter()
            .map(|v| match v {
                Value::BulkString(b) => decode_interaction(b).ok_or_else(|| {
                    self.corrupt(format!(
                        "{key} holds a {}-byte entry that is not an encoded interaction \
                         ({INTERACTION_BYTES} bytes, format {INTERACTION_FORMAT})",
                        b.len()
                    ))
                }),
                other => Err(self.corrupt(format!("{key} holds an entry {other:?}"))),
            })
            .collect()
    }

    /// Counts events into every window of `family`: one pipeline of `HINCRBY key
    /// "{width}:{bucket}:{kind}" delta` (zero deltas skipped), then per key an `HDEL` of the
    /// fields of buckets two or more behind the key's newest bucket in this batch, and an
    /// `EXPIRE key (2 x widest window)`. Updates commute, so concurrent writers in any order
    /// give the state one writer would.
    pub fn add_events<const K: usize>(
        &self,
        family: &str,
        events: &[(u64, f64, [u32; K])],
        widths: &[f64],
    ) -> Result<()> {
        self.add_events_many::<K>(&[(family, events)], widths)
    }

    /// [`add_events`](Self::add_events) for several families in one pipeline (one round trip).
    pub fn add_events_many<const K: usize>(
        &self,
        batches: &[(&str, &[CountEvent<K>])],
        widths: &[f64],
    ) -> Result<()> {
        for (family, events) in batches {
            check_family::<K>(family, widths)?;
            if let Some((key, ts, _)) = events.iter().find(|(_, ts, _)| !ts.is_finite()) {
                return Err(invalid!(
                    "event timestamps must be finite, got {ts} for key {key}"
                ));
            }
        }
        if batches.iter().all(|(_, e)| e.is_empty()) {
            return Ok(());
        }
        let ttl = expiry_s(widths);
        let mut p = redis::pipe();
        let mut field = String::new();
        for (family, events) in batches {
            // Newest bucket of each key and window in this batch; keys in order of first appearance.
            let mut order: Vec<u64> = Vec::new();
            let mut newest: IdMap<[i64; MAX_WINDOWS]> = IdMap::default();
            for (key, ts, deltas) in *events {
                let rkey = self.counter_key(family, *key);
                let top = newest.entry(*key).or_insert_with(|| {
                    order.push(*key);
                    [i64::MIN; MAX_WINDOWS]
                });
                for (w, &width) in widths.iter().enumerate() {
                    let b = bucket_of(*ts, width);
                    top[w] = top[w].max(b);
                    for (k, &d) in deltas.iter().enumerate() {
                        if d == 0 {
                            continue;
                        }
                        field_name(&mut field, width, b, k);
                        p.cmd("HINCRBY").arg(&rkey).arg(&field).arg(d);
                    }
                }
            }
            for key in &order {
                let rkey = self.counter_key(family, *key);
                let top = &newest[key];
                let mut stale: Vec<String> = Vec::new();
                for (w, &width) in widths.iter().enumerate() {
                    for b in stale_range(top[w], width, widths) {
                        for k in 0..K {
                            field_name(&mut field, width, b, k);
                            stale.push(field.clone());
                        }
                    }
                }
                if !stale.is_empty() {
                    p.cmd("HDEL").arg(&rkey).arg(&stale);
                }
                p.cmd("EXPIRE").arg(&rkey).arg(ttl);
            }
        }
        self.run(Op::Write, "add_events", |con| {
            self.exchange(con, &p.get_packed_pipeline(), p.len(), false)
                .map(|_| ())
        })
    }

    /// The windows of `keys` as seen at `now`: `out[i][w]` is key `i`'s window of width
    /// `widths[w]`, `Window { bucket: bucket_of(now), cur, prev }`, exactly what an in-process
    /// `Window` fed the same events would give from `Window::at(now, width)` (for `now` not
    /// before the newest event). One round trip: one `HMGET` per key, of the current and previous
    /// bucket's field of each kind and window.
    pub fn read_windows<const K: usize>(
        &self,
        family: &str,
        keys: &[u64],
        now: f64,
        widths: &[f64],
    ) -> Result<Vec<Vec<Window<K>>>> {
        Ok(self
            .read_windows_many::<K>(&[(family, keys)], now, widths)?
            .pop()
            .unwrap_or_default())
    }

    /// [`read_windows`](Self::read_windows) for several families (same kinds and widths) in
    /// one round trip: `out[f]` answers `reqs[f]`. A request reads items and their topics so.
    pub fn read_windows_many<const K: usize>(
        &self,
        reqs: &[(&str, &[u64])],
        now: f64,
        widths: &[f64],
    ) -> Result<Vec<Vec<Vec<Window<K>>>>> {
        for (family, _) in reqs {
            check_family::<K>(family, widths)?;
        }
        if !now.is_finite() {
            return Err(invalid!("now must be finite, got {now}"));
        }
        let n_keys: usize = reqs.iter().map(|(_, k)| k.len()).sum();
        if n_keys == 0 {
            return Ok(reqs.iter().map(|_| Vec::new()).collect());
        }
        let n_fields = widths.len() * 2 * K;
        let (buckets, tail) = window_fields::<K>(now, widths);
        let packed = self.hmget_commands(reqs, n_keys, n_fields, &tail);
        let replies = self.run(Op::Read, "read_windows", |con| {
            self.exchange(con, &packed, n_keys, true)
        })?;
        if replies.len() != n_keys {
            return Err(self.corrupt(format!(
                "read_windows got {} replies for {n_keys} keys",
                replies.len(),
            )));
        }
        let mut all = Vec::with_capacity(reqs.len());
        let mut replies = replies.iter();
        for (family, keys) in reqs {
            let mut out = Vec::with_capacity(keys.len());
            for (reply, key) in replies.by_ref().take(keys.len()).zip(*keys) {
                out.push(self.decode_windows::<K>(reply, family, *key, &buckets, n_fields)?);
            }
            all.push(out);
        }
        Ok(all)
    }

    /// Encodes one `HMGET` per key of `reqs` (RESP, by hand), each followed by the shared
    /// encoded field list `tail` (`n_fields` fields).
    fn hmget_commands(
        &self,
        reqs: &[(&str, &[u64])],
        n_keys: usize,
        n_fields: usize,
        tail: &[u8],
    ) -> Vec<u8> {
        let mut head = Vec::with_capacity(16);
        resp_array(&mut head, 2 + n_fields);
        resp_bulk(&mut head, b"HMGET");
        let mut packed: Vec<u8> = Vec::with_capacity(n_keys * (head.len() + 64 + tail.len()));
        let mut rkey = String::with_capacity(self.prefix.len() + 38);
        for (family, keys) in reqs {
            for key in *keys {
                rkey.clear();
                push_fmt(&mut rkey, format_args!("{}{family}:{key}", self.prefix));
                packed.extend_from_slice(&head);
                resp_bulk(&mut packed, rkey.as_bytes());
                packed.extend_from_slice(tail);
            }
        }
        packed
    }

    /// One key's windows (one per bucket of `buckets`) from its `HMGET` reply.
    #[inline]
    fn decode_windows<const K: usize>(
        &self,
        reply: &Value,
        family: &str,
        key: u64,
        buckets: &[i64],
        n_fields: usize,
    ) -> Result<Vec<Window<K>>> {
        let vals = match reply {
            Value::Array(v) if v.len() == n_fields => v,
            other => {
                return Err(self.corrupt(format!(
                    "HMGET of {n_fields} fields of {family}:{key} returned {other:?}"
                )))
            }
        };
        let mut wins = Vec::with_capacity(buckets.len());
        for (w, &bucket) in buckets.iter().enumerate() {
            let mut win = Window::<K> {
                bucket,
                cur: [0; K],
                prev: [0; K],
            };
            let base = w * 2 * K;
            for k in 0..K {
                win.cur[k] = self.count(&vals[base + k], family, key)?;
                win.prev[k] = self.count(&vals[base + K + k], family, key)?;
            }
            wins.push(win);
        }
        Ok(wins)
    }

    /// Deletes every key of this namespace (tests, and resetting a deployment). Not for the
    /// request path: it walks the keyspace with SCAN.
    pub fn clear_namespace(&self) -> Result<u64> {
        let pattern = format!("{}*", self.prefix);
        self.run(Op::Write, "clear_namespace", |con| {
            let mut cursor: u64 = 0;
            let mut deleted: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query(con)?;
                if !keys.is_empty() {
                    let n: u64 = redis::cmd("DEL").arg(&keys).query(con)?;
                    deleted += n;
                }
                if next == 0 {
                    return Ok(deleted);
                }
                cursor = next;
            }
        })
    }

    fn count(&self, v: &Value, family: &str, key: u64) -> Result<u32> {
        let n: i64 = match v {
            Value::Nil => return Ok(0),
            Value::Int(n) => *n,
            Value::BulkString(b) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    self.corrupt(format!(
                        "{family}:{key} holds a non-integer count {:?}",
                        String::from_utf8_lossy(b)
                    ))
                })?,
            other => {
                return Err(self.corrupt(format!("{family}:{key} holds a count {other:?}")));
            }
        };
        if n < 0 {
            return Err(self.corrupt(format!("{family}:{key} holds a negative count {n}")));
        }
        // The in-process Window saturates at u32::MAX too.
        Ok(n.min(i64::from(u32::MAX)) as u32)
    }

    fn corrupt(&self, msg: String) -> Error {
        Error::Corrupt(format!(
            "redis {} (namespace {}): {msg}",
            self.shown_url, self.opts.namespace
        ))
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Whether a call may touch the network: yes when up; when down, only once the retry time
    /// has passed, and then only for the one caller that claims the probe.
    fn admit(&self) -> bool {
        let d = self.down_until_ms.load(Ordering::Acquire);
        if d == 0 {
            return true;
        }
        let now = self.now_ms();
        if now < d {
            return false;
        }
        self.down_until_ms
            .compare_exchange(
                d,
                now + self.opts.retry_after_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    fn mark_down(&self, msg: &str) {
        *self.last_error.lock() = msg.to_string();
        self.down_until_ms
            .store(self.now_ms() + self.opts.retry_after_ms, Ordering::Release);
        // Pooled connections to a server that failed are as dead as the one that just failed.
        self.pool.lock().clear();
    }

    fn mark_up(&self) {
        if self.down_until_ms.load(Ordering::Relaxed) != 0 {
            self.down_until_ms.store(0, Ordering::Release);
        }
    }

    fn open_connection(&self) -> std::result::Result<Connection, RedisError> {
        let con = self
            .client
            .get_connection_with_timeout(Duration::from_millis(self.opts.connect_timeout_ms))?;
        let io = Some(Duration::from_millis(self.opts.io_timeout_ms));
        con.set_read_timeout(io)?;
        con.set_write_timeout(io)?;
        Ok(con)
    }

    /// Sends a pipeline and reads its replies, stopping at the first failure. Not
    /// `Pipeline::query`: that keeps reading after a failed reply, one socket timeout per
    /// command, which on a stalled server is 1000 x io_timeout for a 1000-candidate read.
    ///
    /// Reads (`deadline`) also give up once `io_timeout` has passed since the call began, so a
    /// read takes at most about twice `io_timeout` (the deadline plus the socket operation in
    /// flight) however many replies trickle in. Writes are bounded per socket operation only:
    /// a large batch may legitimately take longer, and a write reported failed after it was
    /// applied would be worse than a slow one.
    fn exchange(
        &self,
        con: &mut Connection,
        packed: &[u8],
        commands: usize,
        deadline: bool,
    ) -> std::result::Result<Vec<Value>, RedisError> {
        let start = Instant::now();
        let budget = Duration::from_millis(self.opts.io_timeout_ms);
        con.send_packed_command(packed)?;
        let mut out = Vec::with_capacity(commands);
        for _ in 0..commands {
            if deadline && start.elapsed() > budget {
                return Err(RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "no complete reply within io_timeout_ms = {}",
                        budget.as_millis()
                    ),
                )));
            }
            out.push(con.recv_response()?.extract_error()?);
        }
        Ok(out)
    }

    fn io_error(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        Error::Io(format!("redis {}: {what} failed: {e}", self.shown_url))
    }

    /// Runs one pipeline on a pooled connection, with the availability bookkeeping.
    ///
    /// A dead pooled connection (the server restarted since it was pooled) is not a reason to
    /// declare the server down: reads retry once on a fresh connection; writes do not (an
    /// `HINCRBY` pipeline that may have been applied must not be applied twice) and fail,
    /// counted, without marking the tier down. A failure on a fresh connection, or a timeout,
    /// marks the tier down for `retry_after_ms`.
    fn run<T>(
        &self,
        op: Op,
        what: &str,
        f: impl Fn(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let (calls, errors) = match op {
            Op::Read => (&self.reads, &self.read_errors),
            Op::Write => (&self.writes, &self.write_errors),
        };
        if !self.admit() {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            let last = self.last_error.lock().clone();
            return Err(Error::Io(format!(
                "redis {}: {what} skipped: the server is marked unavailable for {} ms after a failure ({last})",
                self.shown_url, self.opts.retry_after_ms
            )));
        }
        calls.fetch_add(1, Ordering::Relaxed);
        let pooled = self.pool.lock().pop();
        let attempt = |con: Option<Connection>| -> std::result::Result<T, (RedisError, bool)> {
            let (mut con, fresh) = match con {
                Some(c) => (c, false),
                None => (self.open_connection().map_err(|e| (e, true))?, true),
            };
            match f(&mut con) {
                Ok(v) => {
                    let mut pool = self.pool.lock();
                    if pool.len() < self.opts.pool_size {
                        pool.push(con);
                    }
                    Ok(v)
                }
                Err(e) => Err((e, fresh)),
            }
        };
        let mut result = attempt(pooled);
        if let Err((e, false)) = &result {
            if e.is_connection_dropped() && !e.is_timeout() {
                self.pool.lock().clear();
                if op == Op::Read {
                    result = attempt(None);
                }
            }
        }
        match result {
            Ok(v) => {
                self.mark_up();
                Ok(v)
            }
            Err((e, fresh)) => {
                errors.fetch_add(1, Ordering::Relaxed);
                let err = self.io_error(what, &e);
                // A bad reply (e.g. WRONGTYPE: a foreign key in our namespace, or OOM) is not
                // an outage: the server answered, so it stays available.
                if is_availability_error(&e) && (fresh || e.is_timeout() || op == Op::Read) {
                    self.mark_down(&err.to_string());
                }
                Err(err)
            }
        }
    }
}

fn resp_array(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The current bucket of each width at `now`, and the RESP-encoded `HMGET` field list shared by
/// every key. Field order: for each window, cur kinds 0..K then prev kinds 0..K. The commands
/// are encoded by hand (RESP arrays of bulk strings): the fields are the same for every key, so
/// they are encoded once; redis-rs' builder took ~1 ms for 1000 keys.
fn window_fields<const K: usize>(now: f64, widths: &[f64]) -> (Vec<i64>, Vec<u8>) {
    let n_fields = widths.len() * 2 * K;
    let mut buckets: Vec<i64> = Vec::with_capacity(widths.len());
    let mut tail: Vec<u8> = Vec::with_capacity(n_fields * 24);
    let mut f = String::new();
    for &width in widths {
        let b = bucket_of(now, width);
        buckets.push(b);
        for bucket in [b, b.saturating_sub(1)] {
            for k in 0..K {
                field_name(&mut f, width, bucket, k);
                resp_bulk(&mut tail, f.as_bytes());
            }
        }
    }
    (buckets, tail)
}

fn resp_bulk(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(b.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// Field `"{width}:{bucket}:{kind}"`, e.g. `"3600:493213:0"` (`width` as Rust prints f64, so
/// 3600.0 -> `3600`, 0.5 -> `0.5`).
fn field_name(out: &mut String, width: f64, bucket: i64, kind: usize) {
    out.clear();
    push_fmt(out, format_args!("{width}:{bucket}:{kind}"));
}

/// Appends formatted text to a `String` without allocating a new one. `String`'s `fmt::Write`
/// never returns an error (it only grows the buffer), so there is no failure to refuse or
/// count here; the `Display` impls formatted are std's for numbers and `str`.
fn push_fmt(out: &mut String, args: std::fmt::Arguments<'_>) {
    let written = out.write_fmt(args);
    debug_assert!(written.is_ok(), "fmt::Write for String is infallible");
}

/// TTL of a counter hash: twice the widest window (whole seconds, at least 1). A key with no
/// write for that long holds nothing a read could return.
pub fn expiry_s(widths: &[f64]) -> u64 {
    let widest = widths.iter().copied().fold(0.0f64, f64::max);
    ((2.0 * widest).ceil() as u64).max(1)
}

/// Buckets whose fields a write at newest bucket `top` deletes: `top-2` down to the oldest bucket
/// that could still exist in a live key (`2 x widest / width` buckets back, at most 64). Since
/// every write touches every window of a key and the key expires `2 x widest` after its last
/// write, a window's fields older than that range are already gone with an earlier version of
/// the key; so each hash holds at most the two live buckets per window (plus, until the next
/// write, events more than one bucket late, which reads never name).
fn stale_range(top: i64, width: f64, widths: &[f64]) -> std::ops::RangeInclusive<i64> {
    let span = ((expiry_s(widths) as f64 / width).ceil() as i64 + 1).clamp(2, MAX_STALE_BUCKETS);
    top.saturating_sub(span)..=top.saturating_sub(2)
}

fn check_family<const K: usize>(family: &str, widths: &[f64]) -> Result<()> {
    check_name("family", family, 16)?;
    if family == "u" {
        return Err(invalid!("family \"u\" is reserved for user histories"));
    }
    if K == 0 {
        return Err(invalid!(
            "a window family needs at least one event kind (K >= 1)"
        ));
    }
    if widths.is_empty() || widths.len() > MAX_WINDOWS {
        return Err(invalid!(
            "widths must hold 1..={MAX_WINDOWS} window widths, got {}",
            widths.len()
        ));
    }
    for (i, w) in widths.iter().enumerate() {
        if !(w.is_finite() && *w >= 1e-3 && *w <= 1e9) {
            return Err(invalid!(
                "widths[{i}] must be a finite number of seconds in [0.001, 1e9], got {w}"
            ));
        }
        if widths[..i].contains(w) {
            return Err(invalid!("widths[{i}] = {w} is listed twice"));
        }
    }
    Ok(())
}

mod stream;
pub(crate) use stream::parse_id;
pub use stream::{check_upload_dim, CatalogChange, CatalogEntry, CatalogRead, STREAM_MAXLEN};

#[cfg(test)]
mod tests;
