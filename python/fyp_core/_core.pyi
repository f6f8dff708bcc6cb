# Hand-written stubs for the fyp_core._core extension. Checked against the extension by
# `python -m mypy.stubtest fyp_core._core` in .ci/run: keep every export here.

import os
from collections.abc import Mapping, Sequence
from collections.abc import Sequence
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
    def simd(self) -> str: ...
    @property
    def rebuilding(self) -> bool: ...
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
    def get_vector(self, id: int) -> npt.NDArray[np.float32]: ...
    def save(self, path: str | os.PathLike[str]) -> None: ...
    @staticmethod
    def load(path: str | os.PathLike[str]) -> HnswIndex: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...

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
