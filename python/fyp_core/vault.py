"""The privacy vault: the only place where a user token maps back to a user id (DESIGN.md §4).

Logs hold ``user_token = HMAC-SHA256(token_key, user_id)`` only. The vault is a separate SQLite
file, created with mode 0600, whose rows hold each user id encrypted under the vault's own key
(distinct from the token key), so neither the vault file alone nor the token key alone reveals
an id. It serves deletion requests (``forget``) and debugging (``lookup``); nothing on the
request path reads it.

Encryption uses only the standard library: a PRF-based stream cipher (HMAC-SHA256 in counter
mode over a random 16-byte nonce) with an encrypt-then-MAC tag (HMAC-SHA256 over token, nonce and
ciphertext), each under a key derived from the vault key. ``secure_delete`` is on, so a forgotten
row is overwritten in the file, not just unlinked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from fyp_core._core import UserTokenizer

__all__ = ["Vault", "VaultKeyError"]

_MIN_KEY = 16
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS ids (
    token TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ct BLOB NOT NULL,
    tag BLOB NOT NULL,
    created_at REAL NOT NULL
);
"""


class VaultKeyError(ValueError):
    """The vault key (or token key) does not match the one the vault was created with."""


def _prf(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _keystream(key: bytes, nonce: bytes, n: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += _prf(key, nonce + counter.to_bytes(8, "big"))
        counter += 1
    return bytes(out[:n])


class Vault:
    """Token -> user id store for deletion requests and debugging.

    ``Vault(path, vault_key, token_key)``: both keys are bytes of at least 16 bytes and must
    differ. The file is created with mode 0600 (and tightened to 0600 if it exists). Opening an
    existing vault with another vault key or token key raises :class:`VaultKeyError`. Safe to
    share between threads.
    """

    def __init__(
        self, path: Union[str, os.PathLike[str]], vault_key: bytes, token_key: bytes
    ) -> None:
        for name, k in (("vault_key", vault_key), ("token_key", token_key)):
            if not isinstance(k, (bytes, bytearray)):
                raise TypeError(f"{name} must be bytes, got {type(k).__name__}")
            if len(k) < _MIN_KEY:
                raise ValueError(f"{name} must be at least {_MIN_KEY} bytes, got {len(k)}")
        if hmac.compare_digest(bytes(vault_key), bytes(token_key)):
            raise ValueError("vault_key must differ from token_key (the vault has its own key)")
        self.path = os.fspath(path)
        self._tokenizer = UserTokenizer(bytes(token_key))
        self._enc = _prf(bytes(vault_key), b"fyp-vault/enc")
        self._mac = _prf(bytes(vault_key), b"fyp-vault/mac")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute("PRAGMA journal_mode = DELETE")
        self._db.executescript(_SCHEMA)
        self._check_keys(bytes(token_key))

    def _check_keys(self, token_key: bytes) -> None:
        check = _prf(self._mac, b"fyp-vault/check")
        # fingerprint of the token key under the vault key: a wrong token key is caught too
        fp = _prf(self._mac, b"fyp-vault/token-key\x1f" + token_key)
        with self._lock:
            rows = dict(self._db.execute("SELECT k, v FROM meta").fetchall())
            if not rows:
                self._db.execute("BEGIN")
                self._db.execute("INSERT INTO meta VALUES ('check', ?)", (check,))
                self._db.execute("INSERT INTO meta VALUES ('token_key', ?)", (fp,))
                self._db.execute("COMMIT")
                return
        if not hmac.compare_digest(rows.get("check", b""), check):
            raise VaultKeyError(f"vault_key does not match the key of vault {self.path}")
        if not hmac.compare_digest(rows.get("token_key", b""), fp):
            raise VaultKeyError(f"token_key does not match the one vault {self.path} was made with")

    # ---- crypto ----
    def _seal(self, token: str, user_id: str) -> tuple[bytes, bytes, bytes]:
        nonce = os.urandom(16)
        pt = user_id.encode("utf-8")
        ct = bytes(a ^ b for a, b in zip(pt, _keystream(self._enc, nonce, len(pt))))
        tag = _prf(self._mac, token.encode() + b"\x1f" + nonce + ct)
        return nonce, ct, tag

    def _open(self, token: str, nonce: bytes, ct: bytes, tag: bytes) -> str:
        want = _prf(self._mac, token.encode() + b"\x1f" + nonce + ct)
        if not hmac.compare_digest(want, tag):
            raise VaultKeyError(f"vault row for token {token} fails its integrity check")
        pt = bytes(a ^ b for a, b in zip(ct, _keystream(self._enc, nonce, len(ct))))
        return pt.decode("utf-8")

    # ---- API ----
    def token_of(self, user_id: str) -> str:
        """The user token of ``user_id`` (what the logs hold); does not touch the store."""
        return self._tokenizer.token(user_id)

    def add(self, user_id: str) -> str:
        """Records ``user_id`` and returns its token (idempotent)."""
        return self.add_many([user_id])[0]

    def add_many(self, user_ids: Sequence[str]) -> list[str]:
        """Records many user ids in one transaction; returns their tokens in order."""
        ids = list(user_ids)
        for i, u in enumerate(ids):
            if not isinstance(u, str) or not u:
                raise TypeError(f"user_ids[{i}] must be a non-empty str")
        tokens = self._tokenizer.tokens(ids)
        now = time.time()
        rows = [(t, *self._seal(t, u), now) for t, u in zip(tokens, ids)]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO ids VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        return tokens

    def lookup(self, token: str) -> Optional[str]:
        """The user id behind ``token``, or None when the vault does not hold it."""
        with self._lock:
            row = self._db.execute(
                "SELECT nonce, ct, tag FROM ids WHERE token = ?", (token,)
            ).fetchone()
        return None if row is None else self._open(token, *row)

    def forget(self, user_id: str) -> str:
        """Deletion request: removes the user's row (overwritten on disk) and returns the token,
        so the caller can purge that token's rows from the logs."""
        token = self.token_of(user_id)
        self.forget_tokens([token])
        return token

    def forget_tokens(self, tokens: Iterable[str]) -> int:
        """Removes the rows of ``tokens``; returns how many existed."""
        with self._lock:
            self._db.execute("BEGIN")
            n = 0
            for t in tokens:
                n += self._db.execute("DELETE FROM ids WHERE token = ?", (t,)).rowcount
            self._db.execute("COMMIT")
        return n

    def __contains__(self, token: object) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM ids WHERE token = ?", (token,)).fetchone()
                is not None
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM ids").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Vault:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Vault({self.path!r})"
