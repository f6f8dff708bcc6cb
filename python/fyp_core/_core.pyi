# Hand-written stubs for the fyp_core._core extension. Checked against the extension by
# `python -m mypy.stubtest fyp_core._core` in .ci/run: keep every export here.

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

# (end of section)

# ---- ranker (rust/core/src/rank) ----

# (end of section)

# ---- re-ranker (rust/core/src/rerank) ----

# (end of section)

# ---- event log (rust/core/src/eventlog) ----

# (end of section)

# ---- pipeline (rust/core/src/serve) ----

# (end of section)
