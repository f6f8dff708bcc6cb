# Hand-written stubs for the fyp_core._core extension. Checked against the extension by
# `python -m mypy.stubtest fyp_core._core` in .ci/run: keep every export here.

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypedDict, Union, final

import numpy as np
import numpy.typing as npt

__version__: str
#: Every table the event log writes, in the Rust schema's order (one source of truth).
EVENTLOG_TABLES: tuple[str, ...]
#: The default ranker task set of ``ranker_scores`` (one ``pred_<task>`` column per task).
EVENTLOG_DEFAULT_TASKS: tuple[str, ...]
#: The ``fyp.schema_version`` every log file carries.
EVENTLOG_SCHEMA_VERSION: str

def _eventlog_schema_ipc(table: str, tasks: list[str]) -> bytes: ...
def _wait_interruptible(seconds: float) -> None: ...
def impression_keys(impression_ids: _StrArg) -> npt.NDArray[np.uint64]: ...
def impression_ids(
    request_ids: _StrArg, user_tokens: _StrArg, positions: npt.ArrayLike
) -> list[str]: ...

_StrArg = Union[str, Sequence[str], npt.NDArray[np.str_], npt.NDArray[np.object_]]
_IntArg = Union[int, Sequence[int], npt.NDArray[np.integer]]
_BoolArg = Union[bool, Sequence[bool], npt.NDArray[np.bool_], npt.NDArray[np.integer]]

class _RedisStats(TypedDict):
    available: bool
    reads: int
    read_errors: int
    writes: int
    write_errors: int
    skipped_while_down: int
    fallbacks: int
    write_failures: int
    served_from_shared: int
    catalog_published: int
    catalog_publish_failures: int
    catalog_applied: int
    catalog_gaps: int
    catalog_superseded: int
    catalog_pending: int
    catalog_republished: int
    catalog_pending_dropped: int

class _SnapshotStats(TypedDict):
    written: int
    write_failures: int
    loads: int
    fallbacks: int
    gap_reloads: int
    gap_reload_failures: int
    last_cut_ms: float
    last_error: str

class _SnapshotWritten(TypedDict):
    path: str
    items: int
    position: str
    bytes: int
    cut_ms: float
    total_ms: float
    pruned: int

class _SnapshotLoaded(TypedDict):
    path: str
    items: int
    position: str
    consumed: int
    skipped: list[str]
    load_ms: float

class _SnapshotManifest(TypedDict):
    path: str
    dim: int
    items: int
    position: str
    consumed: int
    created_ms: int
    origin: str
    retrieval_version: str

class _PipelineStats(TypedDict, total=False):
    """`FeedPipeline.stats()`: counters since construction (all ints unless noted)."""

    requests: int
    slots: int
    exploration_slots: int
    fresh_slots: int
    cold_starts: int
    relaxed_responses: int
    fresh_retrieval_rate: float
    index_items: int
    store_items: int
    users: int
    log_rejected: int
    log_rows_rejected: int
    engagements_on_removed: int
    impressions_on_removed: int
    routed_requests: int
    shadows_skipped: int
    snapshots: _SnapshotStats
    log_queue_depth: int  # with an event log
    log_dropped: int  # with an event log
    log_not_durable: int  # with an event log
    redis: _RedisStats  # with a Redis tier

class _TierFreshness(TypedDict):
    age_s: float
    p99_age_s: float
    cadence_s: float
    alert: bool

class _BatchInfo(TypedDict):
    version: str
    as_of: float
    n_users: int
    n_creators: int

class _SyncReport(TypedDict):
    applied: int
    own: int
    gap: bool
    reloaded: bool
    superseded: int
    position: str

class _ModelVersions(TypedDict):
    live: str
    shadows: list[str]
    history: list[str]

class CorruptFileError(ValueError):
    """A file is truncated, corrupted, or not a fyp_core file of the expected kind."""

# ---- traffic assignment (rust/core/src/split.rs) ----

@final
class TrafficSplit:
    def __new__(
        cls,
        explore_rate: float = 0.05,
        salt: str = "fyp",
        layers: list[dict[str, object]] | dict[str, dict[str, tuple[int, int]]] | None = None,
    ) -> TrafficSplit: ...
    @property
    def explore_rate(self) -> float: ...
    @property
    def salt(self) -> str: ...
    @property
    def layers(self) -> dict[str, dict[str, tuple[int, int]]]: ...
    def unit(self, user_token: str, request_id: str, slot: int) -> float: ...
    def is_exploration(self, user_token: str, request_id: str, slot: int) -> bool: ...
    def assign_batch(
        self, user_tokens: _StrArg, request_ids: _StrArg, slots: _IntArg
    ) -> npt.NDArray[np.bool_]: ...
    def bucket(self, layer: str, user_token: str) -> int: ...
    def variant(self, layer: str, user_token: str) -> str | None: ...
    def variants(self, user_token: str) -> dict[str, str | None]: ...

# ---- candidate index (rust/core/src/ann) ----

_IdsArg = Union[int, Sequence[int], npt.NDArray[np.integer]]
_Matrix = Union[npt.NDArray[np.floating], Sequence[Sequence[float]]]

@final
class HnswIndex:
    """HNSW candidate index (ip / cosine / l2); safe to share between threads."""

    def __new__(
        cls,
        dim: int,
        metric: str = "ip",
        m: int = 16,
        ef_construction: int = 200,
        capacity: int = 1024,
        seed: int = 0,
        deterministic: bool = False,
        quantize: bool | Literal["auto", "fp16", "sq8", "sq4", "off"] | None = None,
    ) -> HnswIndex: ...
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def m(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def deterministic(self) -> bool: ...
    @property
    def quantized(self) -> bool: ...
    @property
    def codes(self) -> Literal["fp16", "sq8", "sq4"] | None: ...
    @property
    def quantize(self) -> Literal["auto", "fp16", "sq8", "sq4", "off"]: ...
    @property
    def simd(self) -> str: ...
    @property
    def rebuilding(self) -> bool: ...
    @property
    def rebuild_error(self) -> str | None: ...
    def stats(self) -> dict[str, int]: ...
    def add(self, ids: _IdsArg, vectors: _Matrix, threads: int | None = None) -> None: ...
    def search(
        self,
        queries: _Matrix,
        k: int,
        ef: int | None = None,
        threads: int | None = None,
        exclude: _IdsArg | Sequence[_IdsArg | None] | None = None,
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]: ...
    def remove(self, ids: _IdsArg) -> int: ...
    def recall_probe(
        self,
        sample: int | _Matrix | None = None,
        k: int = 10,
        ef: int | None = None,
        threads: int | None = None,
    ) -> float: ...
    def rebuild(self, wait: bool = True, threads: int | None = None) -> None: ...
    def consolidate(self) -> int: ...
    def get_vector(self, id: int) -> npt.NDArray[np.float32]: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @staticmethod
    def load(path: str | os.PathLike[str]) -> HnswIndex: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...

# (end of section)

# ---- ranker (rust/core/src/rank) ----

_F32Matrix = Union[npt.NDArray[np.floating], npt.NDArray[np.integer], Sequence[Sequence[float]]]
_F32Vector = Union[npt.NDArray[np.floating], npt.NDArray[np.integer], Sequence[float]]

@final
class MlpRanker:
    def __new__(
        cls,
        weights: Sequence[_F32Matrix],
        biases: Sequence[_F32Vector],
        activation: str = "relu",
        outputs: Sequence[str] | None = None,
        version: str = "v0",
        *,
        task_names: Sequence[str] | None = None,
        cross_layers: Sequence[tuple[_F32Matrix, _F32Vector]] | None = None,
        input_schema: Sequence[tuple[str, int]] | None = None,
        task_weights: _F32Vector | None = None,
        kernel: str | None = None,
    ) -> MlpRanker: ...
    def predict(self, features: _F32Matrix) -> npt.NDArray[np.float32]: ...
    def predict_request(
        self, user_features: _F32Vector, item_features: _F32Matrix
    ) -> npt.NDArray[np.float32]: ...
    def value(
        self, preds: _F32Matrix, weights: _F32Vector | None = None
    ) -> npt.NDArray[np.float32]: ...
    @property
    def task_weights(self) -> npt.NDArray[np.float32]: ...
    @task_weights.setter
    def task_weights(self, weights: _F32Vector) -> None: ...
    @property
    def version(self) -> str: ...
    @property
    def task_names(self) -> list[str]: ...
    @property
    def outputs(self) -> list[str]: ...
    @property
    def activation(self) -> str: ...
    @property
    def input_dim(self) -> int: ...
    @property
    def n_tasks(self) -> int: ...
    @property
    def input_schema(self) -> list[tuple[str, int]]: ...
    @property
    def kernel(self) -> str: ...
    @property
    def flops_per_row(self) -> int: ...
    def weights(self) -> list[npt.NDArray[np.float32]]: ...
    def biases(self) -> list[npt.NDArray[np.float32]]: ...
    def cross_layers(self) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]: ...
    def with_kernel(self, kernel: str) -> MlpRanker: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @staticmethod
    def load(path: str | os.PathLike[str], kernel: str | None = None) -> MlpRanker: ...
    @staticmethod
    def kernel_info(measure_peak: bool = False) -> dict[str, Any]: ...

@final
class RankerScores:
    @property
    def live_version(self) -> str: ...
    @property
    def live(self) -> npt.NDArray[np.float32]: ...
    @property
    def shadows(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def generation(self) -> int: ...

@final
class RankerSet:
    def __new__(cls, live: MlpRanker) -> RankerSet: ...
    def add_shadow(self, ranker: MlpRanker) -> None: ...
    def remove_shadow(self, version: str) -> MlpRanker: ...
    def promote(self, version: str) -> None: ...
    def rollback(self) -> str: ...
    def score(self, features: _F32Matrix) -> RankerScores: ...
    def score_request(
        self, user_features: _F32Vector, item_features: _F32Matrix
    ) -> RankerScores: ...
    @property
    def live(self) -> MlpRanker: ...
    @property
    def live_version(self) -> str: ...
    @property
    def shadows(self) -> list[MlpRanker]: ...
    @property
    def shadow_versions(self) -> list[str]: ...
    @property
    def history(self) -> list[str]: ...
    @property
    def generation(self) -> int: ...

def assemble_features(
    user: _F32Vector,
    item_table: _F32Matrix,
    rows: _IntArg,
    dots: Sequence[tuple[int, int, int]] | None = None,
    include_user: bool = False,
) -> npt.NDArray[np.float32]: ...

# (end of section)

# ---- re-ranker (rust/core/src/rerank) ----

_F32Arg = Union[Sequence[float], npt.NDArray[np.floating], npt.NDArray[np.integer]]
_IdArg = Union[Sequence[int], npt.NDArray[np.integer]]
_MatrixArg = Union[Sequence[Sequence[float]], npt.NDArray[np.floating]]
_PolicyArg = Union[Mapping[str, object], RerankPolicy]

@final
class RerankPolicy:
    def __new__(
        cls, policy: Mapping[str, object] | None = None, /, **keys: object
    ) -> RerankPolicy: ...
    @staticmethod
    def from_toml(text: str, table: str | None = None) -> RerankPolicy: ...
    @staticmethod
    def load(path: str | os.PathLike[str], table: str | None = None) -> RerankPolicy: ...
    def to_dict(self) -> dict[str, object]: ...

@final
class RerankResult:
    @property
    def indices(self) -> npt.NDArray[np.int64]: ...
    @property
    def relaxed(self) -> dict[str, int]: ...
    @property
    def shortfall(self) -> int: ...
    @property
    def diversity_fallback(self) -> int | None: ...
    def __len__(self) -> int: ...

@final
class Reranker:
    def __new__(cls, policy: _PolicyArg) -> Reranker: ...
    @property
    def policy(self) -> RerankPolicy: ...
    def set_policy(self, policy: _PolicyArg) -> None: ...
    def rerank(
        self,
        scores: _F32Arg,
        topics: _IdArg,
        creators: _IdArg,
        k: int,
        embeddings: _MatrixArg | None = None,
        categories: _IdArg | None = None,
        is_fresh: _BoolArg | None = None,
    ) -> npt.NDArray[np.int64]: ...
    def rerank_detailed(
        self,
        scores: _F32Arg,
        topics: _IdArg,
        creators: _IdArg,
        k: int,
        embeddings: _MatrixArg | None = None,
        categories: _IdArg | None = None,
        is_fresh: _BoolArg | None = None,
    ) -> RerankResult: ...

def dpp_greedy(
    scores: _F32Arg, embeddings: _MatrixArg, k: int, alpha: float = 1.0, eps: float = 1e-10
) -> npt.NDArray[np.int64]: ...
def mmr_greedy(
    scores: _F32Arg, embeddings: _MatrixArg, k: int, mmr_lambda: float = 0.5
) -> npt.NDArray[np.int64]: ...

# (end of section)

# ---- event log (rust/core/src/eventlog) ----

_PathArg = Union[str, os.PathLike[str]]
_FloatArg = Union[float, Sequence[float], npt.NDArray[np.floating]]
_TsArg = Union[int, Sequence[int], npt.NDArray[np.integer], None]

@final
class EventLog:
    """Non-blocking counterfactual event log: zstd Parquet under ``root``, Hive-partitioned by
    dt/hour (schema: docs/eventlog_schema.md). Every ``log_*`` takes column arrays (a scalar is
    broadcast), returns the rows accepted and never waits for the writer. ``ts`` is microseconds
    since the Unix epoch (default: now)."""

    def __new__(
        cls,
        root: _PathArg,
        *,
        sample_pct: float = 100.0,
        queue_capacity: int = 1000000,
        rotate_rows: int = 500000,
        rotate_bytes: int = 134217728,
        rotate_seconds: float = 60.0,
        wal_path: _PathArg | None = None,
        writer_id: str = "w0",
        tasks: Sequence[str] | None = None,
        feature_names: Sequence[str] | None = None,
        zstd_level: int = 1,
        wal_sync: bool = False,
        _debug_write_delay_ms: int = 0,
    ) -> EventLog: ...
    @property
    def root(self) -> pathlib.Path: ...
    @property
    def wal_path(self) -> pathlib.Path: ...
    @property
    def sample_pct(self) -> float: ...
    @property
    def queue_capacity(self) -> int: ...
    @property
    def writer_id(self) -> str: ...
    @property
    def tasks(self) -> list[str]: ...
    @property
    def closed(self) -> bool: ...
    def log_impressions(
        self,
        impression_ids: Sequence[str],
        request_ids: _StrArg,
        user_tokens: _StrArg,
        item_ids: _IntArg,
        positions: _IntArg,
        sources: _StrArg,
        propensities: _FloatArg,
        model_versions: _StrArg,
        topics: _IntArg,
        creator_ids: _IntArg,
        experiments: _StrArg | None = None,
        ts: _TsArg = None,
    ) -> int: ...
    def log_engagements(
        self,
        impression_ids: Sequence[str],
        user_tokens: _StrArg,
        watched_seconds: _FloatArg | None = None,
        completed: _BoolArg | None = None,
        liked: _BoolArg | None = None,
        shared: _BoolArg | None = None,
        followed: _BoolArg | None = None,
        ts: _TsArg = None,
    ) -> int: ...
    def log_exploration(
        self,
        impression_ids: Sequence[str],
        user_tokens: _StrArg,
        item_ids: _IntArg,
        positions: _IntArg,
        topics: _IntArg,
        propensities: _FloatArg,
        policy: _StrArg | None = None,
        ts: _TsArg = None,
    ) -> int: ...
    def log_ranker_scores(
        self,
        impression_ids: Sequence[str],
        model_versions: _StrArg,
        value_scores: _FloatArg,
        predictions: npt.ArrayLike,
        is_shadow: _BoolArg | None = None,
        exploration: _BoolArg | None = None,
        request_ids: _StrArg | None = None,
        ts: _TsArg = None,
    ) -> int: ...
    def log_request(
        self,
        request_id: str,
        user_token: str,
        candidate_item_ids: _IntArg,
        candidate_scores: _FloatArg,
        served_item_ids: _IntArg,
        ts: int | None = None,
        shadow_versions: Sequence[str] | None = None,
        shadow_candidate_scores: _MatrixArg | None = None,
    ) -> int: ...
    def log_served_features(
        self,
        request_ids: _StrArg,
        item_ids: _IntArg,
        features: npt.ArrayLike,
        feature_set_version: _StrArg | None = None,
        ts: _TsArg = None,
    ) -> int: ...
    def log(self, table: str, **columns: Any) -> int: ...
    def flush(self, timeout: float | None = None) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def __enter__(self) -> EventLog: ...
    def __exit__(self, *_exc: object) -> bool: ...

@final
class UserTokenizer:
    """``hex(HMAC-SHA256(key, user_id)[:16])`` under one key (at least 16 bytes)."""

    def __new__(cls, key: bytes) -> UserTokenizer: ...
    def token(self, user_id: str) -> str: ...
    def tokens(self, user_ids: Sequence[str]) -> list[str]: ...

def user_token(key: bytes, user_id: str) -> str: ...
def _close_all_event_logs() -> None: ...

# (end of section)

# ---- pipeline (rust/core/src/serve) ----

@final
class FeedResponse:
    @property
    def request_id(self) -> str: ...
    @property
    def user_token(self) -> str: ...
    @property
    def model_version(self) -> str: ...
    @property
    def task_names(self) -> list[str]: ...
    @property
    def item_ids(self) -> npt.NDArray[np.uint64]: ...
    @property
    def positions(self) -> npt.NDArray[np.int64]: ...
    @property
    def sources(self) -> list[str]: ...
    @property
    def propensities(self) -> npt.NDArray[np.float64]: ...
    @property
    def impression_ids(self) -> list[str]: ...
    @property
    def topics(self) -> npt.NDArray[np.int64]: ...
    @property
    def creators(self) -> npt.NDArray[np.uint64]: ...
    @property
    def values(self) -> npt.NDArray[np.float32]: ...
    @property
    def predictions(self) -> npt.NDArray[np.float32]: ...
    @property
    def shadow_predictions(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def relaxed(self) -> dict[str, int]: ...
    @property
    def timings(self) -> dict[str, float]: ...
    @property
    def n_candidates(self) -> int: ...
    @property
    def n_fresh_candidates(self) -> int: ...
    @property
    def cold_start(self) -> bool: ...
    def __len__(self) -> int: ...
    def to_dict(self) -> dict[str, Any]: ...

@final
class FeedPipeline:
    def __new__(
        cls,
        index: HnswIndex,
        ranker: MlpRanker | RankerSet,
        reranker: Reranker,
        split: TrafficSplit,
        event_log: EventLog | None = None,
        config: Mapping[str, Any] | None = None,
        user_token_key: bytes | None = None,
        history_len: int = 50,
        seen_len: int = 500,
        impression_capacity: int = 1_000_000,
        tier_cadence_s: tuple[float, float, float] = ...,
        redis_url: str | None = None,
        redis_namespace: str = "default",
        redis_timeout_ms: int = 25,
        redis_retry_after_ms: int = 1000,
    ) -> FeedPipeline: ...
    def feed(
        self, user_id: str, request_id: str, n: int = 20, now: float | None = None
    ) -> FeedResponse: ...
    def upload(
        self,
        item_id: int,
        embedding: npt.ArrayLike,
        topic: int,
        creator: int,
        category: int = 0,
        ts: float | None = None,
    ) -> None: ...
    def load_items(
        self,
        ids: npt.ArrayLike,
        embeddings: npt.ArrayLike,
        topics: npt.ArrayLike,
        creators: npt.ArrayLike,
        categories: npt.ArrayLike | None = None,
        upload_ts: npt.ArrayLike | None = None,
        index: bool = True,
    ) -> None: ...
    def remove(self, ids: npt.ArrayLike, now: float | None = None) -> int: ...
    def engage(
        self,
        impression_id: str,
        watched_seconds: float = 0.0,
        completed: bool = False,
        liked: bool = False,
        shared: bool = False,
        followed: bool = False,
        now: float | None = None,
    ) -> None: ...
    def set_user_embeddings(self, user_ids: Sequence[str], embeddings: npt.ArrayLike) -> None: ...
    def load_batch(
        self,
        version: str,
        as_of: float,
        user_ids: Sequence[str] | None = None,
        user_embeddings: npt.ArrayLike | None = None,
        creator_ids: npt.ArrayLike | None = None,
        creator_authority: npt.ArrayLike | None = None,
    ) -> None: ...
    def set_creator_authority(
        self, creator_ids: npt.ArrayLike, authority: npt.ArrayLike
    ) -> None: ...
    @property
    def batch_info(self) -> _BatchInfo: ...
    def freshness(self, now: float | None = None) -> dict[str, _TierFreshness]: ...
    @property
    def feature_set_version(self) -> str: ...
    @property
    def feature_names(self) -> list[str]: ...
    @property
    def config(self) -> dict[str, Any]: ...
    def update_config(self, changes: Mapping[str, Any]) -> None: ...
    def set_retrieval(
        self,
        version: str,
        index: HnswIndex,
        user_tower: MlpRanker | None = None,
        item_tower: MlpRanker | None = None,
    ) -> None: ...
    def sync_catalog(
        self, max_entries: int = 10000, snapshot_dir: str | os.PathLike[str] | None = None
    ) -> _SyncReport: ...
    def save_snapshot(self, dir: str | os.PathLike[str], keep: int = 3) -> _SnapshotWritten: ...
    def load_snapshot(self, dir: str | os.PathLike[str]) -> _SnapshotLoaded: ...
    @staticmethod
    def latest_snapshot(dir: str | os.PathLike[str]) -> _SnapshotManifest | None: ...
    def catalog_digest(self) -> tuple[int, int]: ...
    @property
    def retrieval_version(self) -> str: ...
    @property
    def model_versions(self) -> _ModelVersions: ...
    def set_route(self, layer: str, variant: str, version: str | None = None) -> None: ...
    @property
    def routes(self) -> list[tuple[str, str, str]]: ...
    def add_shadow(self, ranker: MlpRanker) -> None: ...
    def remove_shadow(self, version: str) -> None: ...
    def promote(self, version: str) -> None: ...
    def rollback(self) -> str: ...
    def user_token(self, user_id: str) -> str: ...
    def first_candidate_times(self, ids: npt.ArrayLike) -> list[float | None]: ...
    def stats(self) -> _PipelineStats: ...
    def close(self) -> None: ...

# ---- feature store (rust/py/src/features.rs)

def feature_registry() -> list[dict[str, Any]]: ...
def feature_columns(dim: int) -> list[tuple[str, str, str, bool]]: ...
def feature_set_version(dim: int) -> str: ...
def replay_features(
    paths: Sequence[str],
    user_token_key: bytes,
    item_ids: npt.ArrayLike,
    item_embeddings: npt.ArrayLike,
    topics: npt.ArrayLike,
    creators: npt.ArrayLike,
    categories: npt.ArrayLike | None = None,
    upload_ts: npt.ArrayLike | None = None,
    user_ids: Sequence[str] | None = None,
    user_embeddings: npt.ArrayLike | None = None,
    creator_ids: npt.ArrayLike | None = None,
    creator_authority: npt.ArrayLike | None = None,
    history_len: int = 50,
    counter_windows: tuple[float, float] = ...,
    request_ids: Sequence[str] | None = None,
    batches: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]: ...
