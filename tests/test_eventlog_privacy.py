"""Privacy: a day of logs written for known raw user ids holds none of them in any file (raw
bytes, and every decoded Parquet value and metadata entry, since zstd would hide a literal); the
vault maps tokens back only with its own key, is 0600 and stores ids encrypted."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from fyp_core import EventLog, UserTokenizer
from fyp_core.vault import Vault, VaultKeyError

TOKEN_KEY = bytes(range(32))
VAULT_KEY = bytes(range(100, 132))
DAY0 = 1_717_200_000_000_000  # 2024-06-01T00:00:00Z in microseconds
HOUR = 3_600_000_000


def raw_ids(n=150):
    return [f"user.{i:04d}@example.com" if i % 2 else f"handle_{i:04d}_Zq" for i in range(n)]


def all_files(root):
    for d, _, fs in os.walk(root):
        for f in fs:
            yield os.path.join(d, f)


def decoded_text(path) -> str:
    """Every value and metadata entry of a Parquet file, as text."""
    pf = pq.ParquetFile(path)
    parts = [repr(pf.metadata.metadata)]
    t = pf.read()
    for col in t.columns:
        parts.append(repr(col.to_pylist()))
    return "\n".join(parts)


def leaks(root, ids) -> set[str]:
    found = set()
    needles = [(u, u.encode()) for u in ids]
    for f in all_files(root):
        data = open(f, "rb").read()
        found |= {u for u, b in needles if b in data}
        if f.endswith(".parquet"):
            text = decoded_text(f)
            found |= {u for u, _ in needles if u in text}
    return found


def write_day(log: EventLog, users: list[str], tok: UserTokenizer, rng, plant: str | None = None):
    tokens = tok.tokens(users)
    for hour in range(24):
        for r in range(15):
            u = int(rng.integers(len(users)))
            rid = f"h{hour}r{r}" if plant is None else f"h{hour}r{r}-{plant}"
            ts = DAY0 + hour * HOUR + r * 1000
            ids = [f"{rid}:{s}" for s in range(10)]
            expl = np.arange(10) % 5 == 0
            log.log_impressions(
                ids,
                rid,
                tokens[u],
                rng.integers(0, 10**6, 10),
                np.arange(10),
                np.where(expl, "exploration", "ranked").tolist(),
                np.where(expl, 0.001, 1.0),
                "m1",
                rng.integers(0, 20, 10),
                rng.integers(0, 500, 10),
                experiments='{"ranker":"b"}',
                ts=ts,
            )
            log.log_ranker_scores(
                ids, "m1", rng.random(10), rng.random((10, 5)), exploration=expl, ts=ts
            )
            log.log_ranker_scores(
                ids,
                "shadow1",
                rng.random(10),
                rng.random((10, 5)),
                is_shadow=True,
                exploration=expl,
                ts=ts,
            )
            log.log_exploration(
                [i for i, e in zip(ids, expl) if e],
                tokens[u],
                7,
                np.flatnonzero(expl),
                3,
                0.001,
                ts=ts,
            )
            log.log_engagements(
                ids[:3],
                tokens[u],
                watched_seconds=rng.random(3) * 30,
                completed=rng.random(3) < 0.5,
                ts=ts + 5_000_000,
            )
            log.log_request(rid, tokens[u], np.arange(100), rng.random(100), np.arange(10), ts=ts)
            log.log_served_features(rid, np.arange(10), rng.random((10, 8)), "fs1", ts=ts)


def test_a_day_of_logs_holds_no_raw_user_id(tmp_path):
    root = str(tmp_path / "logs")
    users = raw_ids()
    tok = UserTokenizer(TOKEN_KEY)
    vault = Vault(tmp_path / "vault.db", VAULT_KEY, TOKEN_KEY)
    vault.add_many(users)
    log = EventLog(root, rotate_rows=2000, feature_names=[f"f{i}" for i in range(8)])
    write_day(log, users, tok, np.random.default_rng(0))
    # mid-run: the write-ahead file (uncompressed) and any file already written hold no id
    assert leaks(root, users) == set()
    log.close()
    parts = {os.path.dirname(f) for f in all_files(os.path.join(root, "impressions"))}
    assert len(parts) == 24, "a full day of hourly partitions"
    n_files = sum(1 for _ in all_files(root))
    assert n_files >= 6 * 24
    assert leaks(root, users) == set()
    # the tokens that are there map back through the vault only
    t = pq.read_table(next(f for f in all_files(os.path.join(root, "impressions"))))
    for token in set(t.column("user_token").to_pylist()):
        assert vault.lookup(token) in users
    # and the vault file stores the ids encrypted, not as text
    vault.close()
    data = open(tmp_path / "vault.db", "rb").read()
    assert not [u for u in users if u.encode() in data]


def test_scanner_catches_a_planted_id(tmp_path):
    # negative control: an id smuggled into a caller-chosen string is found by the decoded scan,
    # even though zstd hides it from a raw byte scan of the Parquet file
    root = str(tmp_path / "logs")
    users = raw_ids(4)
    log = EventLog(root)
    write_day(log, users[:1], UserTokenizer(TOKEN_KEY), np.random.default_rng(1), plant=users[0])
    log.close()
    assert leaks(root, users) == {users[0]}


def test_raw_id_as_token_is_refused(tmp_path):
    with EventLog(tmp_path) as log:
        for bad in ["user.0001@example.com", "12345", "A" * 32, "0" * 31]:
            with pytest.raises(ValueError, match="raw user ids must never be logged"):
                log.log_engagements(["r:0"], bad)
        assert sum(log.stats()["enqueued"].values()) == 0


def test_vault_permissions_round_trip_and_forget(tmp_path):
    path = tmp_path / "v.db"
    v = Vault(path, VAULT_KEY, TOKEN_KEY)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    users = raw_ids(50)
    toks = v.add_many(users)
    assert toks == UserTokenizer(TOKEN_KEY).tokens(users)
    assert v.add(users[0]) == toks[0] and len(v) == 50  # idempotent
    assert [v.lookup(t) for t in toks] == users
    assert v.lookup("0" * 32) is None
    assert toks[3] in v
    assert v.forget(users[3]) == toks[3]
    assert v.lookup(toks[3]) is None and toks[3] not in v and len(v) == 49
    assert v.forget_tokens([toks[4], "nope"]) == 1
    v.close()
    # reopen: same keys work; another vault key or token key is refused
    with Vault(path, VAULT_KEY, TOKEN_KEY) as v2:
        assert v2.lookup(toks[0]) == users[0]
    with pytest.raises(VaultKeyError, match="vault_key"):
        Vault(path, bytes(32), TOKEN_KEY)
    with pytest.raises(VaultKeyError, match="token_key"):
        Vault(path, VAULT_KEY, bytes(range(1, 33)))
    # an existing file with loose permissions is tightened
    os.chmod(path, 0o644)
    Vault(path, VAULT_KEY, TOKEN_KEY).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_vault_bad_input_and_tamper(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        Vault(tmp_path / "a.db", TOKEN_KEY, TOKEN_KEY)
    with pytest.raises(ValueError, match="at least 16"):
        Vault(tmp_path / "a.db", b"short", TOKEN_KEY)
    with pytest.raises(TypeError):
        Vault(tmp_path / "a.db", "str key", TOKEN_KEY)  # type: ignore[arg-type]
    v = Vault(tmp_path / "b.db", VAULT_KEY, TOKEN_KEY)
    with pytest.raises(TypeError):
        v.add_many(["ok", 3])  # type: ignore[list-item]
    t = v.add("someone@example.com")
    # flip a ciphertext byte: the integrity tag catches it
    (ct,) = v._db.execute("SELECT ct FROM ids WHERE token = ?", (t,)).fetchone()
    bad = bytes([ct[0] ^ 1]) + ct[1:]
    v._db.execute("UPDATE ids SET ct = ? WHERE token = ?", (bad, t))
    with pytest.raises(VaultKeyError, match="integrity"):
        v.lookup(t)
    v.close()


def test_vault_from_threads(tmp_path):
    v = Vault(tmp_path / "t.db", VAULT_KEY, TOKEN_KEY)
    errors = []

    def work(k):
        try:
            ids = [f"t{k}-u{i}@example.com" for i in range(50)]
            toks = v.add_many(ids)
            assert [v.lookup(t) for t in toks] == ids
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    assert not errors and len(v) == 200
    v.close()
