# Hand-written stubs for the fyp_core._core extension. Checked against the extension by
# `python -m mypy.stubtest fyp_core._core` in .ci/run: keep every export here.

import os
from collections.abc import Mapping, Sequence
from typing import Union, final

import numpy as np
import numpy.typing as npt

__version__: str

_StrArg = Union[str, Sequence[str], npt.NDArray[np.str_], npt.NDArray[np.object_]]
_IntArg = Union[int, Sequence[int], npt.NDArray[np.integer]]

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

# (end of section)

# ---- ranker (rust/core/src/rank) ----

# (end of section)

# ---- re-ranker (rust/core/src/rerank) ----

_F32Arg = Union[Sequence[float], npt.NDArray[np.floating], npt.NDArray[np.integer]]
_IdArg = Union[Sequence[int], npt.NDArray[np.integer]]
_BoolArg = Union[Sequence[bool], npt.NDArray[np.bool_], npt.NDArray[np.integer]]
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

# (end of section)

# ---- pipeline (rust/core/src/serve) ----

# (end of section)
