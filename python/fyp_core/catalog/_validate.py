"""Validation and conversion of catalogue columns, shared by the in-memory and on-disk paths:
every refusal says which column, which row and what to fix."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

# rows scanned at a time when checking embeddings for NaN/Inf (bounds memory on a mmap)
_SCAN_ROWS = 65_536
_INT32_MAX = 2**31 - 1
_UINT64_MAX = 2**64 - 1


def _item_count(item_ids: Any) -> int:
    a = np.asarray(item_ids)
    if a.ndim != 1:
        raise ValueError(f"item_ids must be 1-D, got shape {a.shape}")
    return len(a)


def _as_int(a: Any, name: str, lo: int, hi: int, dtype: type) -> np.ndarray:
    """Integer column to `dtype`, accepting any integer width whose values all fit [lo, hi]."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if len(arr) == 0:
        return np.zeros(0, dtype=dtype)
    if arr.dtype == dtype:
        out = arr
    elif arr.dtype.kind in "iu":
        out = None
    else:
        raise ValueError(
            f"{name} must be integers ({np.dtype(dtype).name}), got {arr.dtype}: converting "
            f"would lose information; store it as an integer column"
        )
    lo_v, hi_v = int(arr.min()), int(arr.max())
    if lo_v < lo or hi_v > hi:
        bad = lo_v if lo_v < lo else hi_v
        raise ValueError(
            f"{name} holds {bad}, outside [{lo}, {hi}] ({np.dtype(dtype).name}); fix the values"
        )
    return out if out is not None else arr.astype(dtype)


def _as_uint64(a: Any, name: str) -> np.ndarray:
    return _as_int(a, name, 0, _UINT64_MAX, np.uint64)


def _as_int32(a: Any, name: str) -> np.ndarray:
    return _as_int(a, name, 0, _INT32_MAX, np.int32)


def _as_float64(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iuf" and arr.dtype.itemsize <= 8:
        out = arr.astype(np.float64, copy=False)
        if arr.dtype.kind in "iu" and len(arr) and np.abs(arr).max() > 2**53:
            raise ValueError(f"{name} holds integers beyond 2**53, not exact as float64 seconds")
    else:
        raise ValueError(f"{name} must be float64 seconds since epoch, got {arr.dtype}")
    if not np.all(np.isfinite(out)):
        row = int(np.flatnonzero(~np.isfinite(out))[0])
        raise ValueError(f"{name}[{row}] = {out[row]} is not finite: every value must be")
    return out


def _as_float32_exact(a: Any, name: str) -> np.ndarray:
    """float32, or a wider float whose values are exactly float32 (a lossy narrowing refused)."""
    arr = np.asarray(a)
    if arr.dtype == np.float32:
        return arr
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        out = arr.astype(np.float32)
        with np.errstate(invalid="ignore"):
            same = (out.astype(arr.dtype) == arr) | (np.isnan(arr) & np.isnan(out))
        if not np.all(same):
            raise ValueError(
                f"{name} is {arr.dtype} and narrowing it to float32 would round values; "
                f"convert explicitly with .astype(np.float32)"
            )
        return out
    raise ValueError(f"{name} must be float32, got {arr.dtype}")


def _check_finite(a: np.ndarray, name: str) -> None:
    for s in range(0, len(a), _SCAN_ROWS):
        chunk = np.asarray(a[s : s + _SCAN_ROWS])
        ok = np.isfinite(chunk)
        if not ok.all():
            r, c = np.argwhere(~ok)[0] if chunk.ndim == 2 else (np.flatnonzero(~ok)[0], None)
            at = f"row {s + int(r)}" + ("" if c is None else f", column {int(c)}")
            raise ValueError(f"{name} has a NaN or Inf at {at}: every value must be finite")


def _embeddings(a: Any, name: str, dim: Optional[int]) -> np.ndarray:
    arr = _as_float32_exact(a, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 columns: dim must be > 0")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has {arr.shape[1]} columns, the items' dim is {dim}")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    _check_finite(arr, name)
    return arr


def _unique(a: np.ndarray, name: str, where: str) -> None:
    if len(a) < 2:
        return
    s = np.sort(a, kind="stable")
    dup = np.flatnonzero(s[1:] == s[:-1])
    if len(dup):
        raise ValueError(
            f"{name} has {len(dup)} duplicate value(s){where}, e.g. {s[dup[0]]!r}: "
            f"ids must be unique"
        )


def _users_in_memory(
    user_ids: Optional[Sequence[str]], user_embeddings: Any, dim: int
) -> tuple[list[str], Optional[np.ndarray]]:
    if user_ids is None and user_embeddings is None:
        return [], None
    if user_ids is None or user_embeddings is None:
        raise ValueError("pass user_ids and user_embeddings together (or neither)")
    users = _user_list(list(user_ids), "user_ids")
    emb = _embeddings(user_embeddings, "user_embeddings", dim)
    return users, emb


def _user_list(users: list[Any], name: str) -> list[str]:
    for i, u in enumerate(users):
        if not isinstance(u, str) or not u:
            raise ValueError(f"{name}[{i}] = {u!r}: user ids must be non-empty strings")
    return users


def _creators_in_memory(
    creator_ids: Any, creator_authority: Any
) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    if creator_ids is None and creator_authority is None:
        return None, None
    if creator_ids is None or creator_authority is None:
        raise ValueError("pass creator_ids and creator_authority together (or neither)")
    cids = _as_uint64(creator_ids, "creator_ids")
    auth = _as_float32_exact(creator_authority, "creator_authority")
    if auth.ndim != 1:
        raise ValueError(f"creator_authority must be 1-D, got shape {auth.shape}")
    _check_finite(auth, "creator_authority")
    return cids, auth
