"""fyp_core: the serving hot path and data backbone of a For You feed.

Heavy work is compiled Rust (``fyp_core._core``); this package re-exports it and adds the parts
that are really Python: configuration, pipeline glue, analytics, the CLI and the HTTP host.
"""

from fyp_core._core import (
    CorruptFileError,
    EventLog,
    FeedPipeline,
    FeedResponse,
    HnswIndex,
    MlpRanker,
    RankerScores,
    RankerSet,
    Reranker,
    RerankPolicy,
    RerankResult,
    TrafficSplit,
    UserTokenizer,
    __version__,
    assemble_features,
    dpp_greedy,
    mmr_greedy,
    user_token,
)
from fyp_core.parity import ParityReport, ParityThresholds, parity_report

__all__ = [
    "CorruptFileError",
    "RerankPolicy",
    "RerankResult",
    "Reranker",
    "HnswIndex",
    "EventLog",
    "FeedPipeline",
    "FeedResponse",
    "MlpRanker",
    "RankerScores",
    "RankerSet",
    "TrafficSplit",
    "UserTokenizer",
    "__version__",
    "dpp_greedy",
    "mmr_greedy",
    "user_token",
    "assemble_features",
    "ParityReport",
    "ParityThresholds",
    "parity_report",
]
