"""Reliability figures of the event log under faults: rows acknowledged vs present after each
fault class, over many rounds (issue #13). The goal in every class: zero acknowledged rows lost
(except those the log counted as `not_durable`, which a crash may lose and a flush may not) and
zero duplicates.
    python benches/compare_eventlog_faults.py [--quick] [--rounds N] [--no-cargo]

Real faults, through the Python API:
- kill9: a logging subprocess (plain or spilling, random) is killed with SIGKILL at a random
  point; a restart replays the write-ahead file; every acknowledged row must be present once.
- enospc_tmpfs: a log on a 4 MB tmpfs; the disk fills at a random point (real short writes),
  rows keep coming, a kill -9 copy is taken after space returns, then the log must flush all.
  Needs `mount -t tmpfs` (root); otherwise skipped with a loud message.
- efbig_rlimit: RLIMIT_FSIZE in a subprocess (SIGXFSZ ignored) caps the write-ahead file at a
  random size, then is lifted; kill -9; restart; count.
- read_only_dir: a writer subprocess (as root: without CAP_DAC_OVERRIDE, so file modes bind)
  finds its log and write-ahead directories made read-only (chmod a-w) at a random point; flush
  must raise; the directories become writable again; kill -9 copy; flush; count.
Injected faults (`cargo test -p fyp-core --lib fault_figures -- --ignored`, the fault-injection
layer of rust/core/src/eventlog/fsio.rs): ENOSPC mid-frame, EIO, fsync failure, rename failure,
segment create failure, read-only file system; each round also takes a kill -9 copy.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from fyp_core import EventLog, user_token

TOK = user_token(b"k" * 32, "bench")
REPO = Path(__file__).resolve().parent.parent
COLS = (
    "class",
    "mechanism",
    "rounds",
    "acknowledged",
    "not_durable",
    "crash_lost",
    "crash_duplicates",
    "flush_lost",
    "flush_duplicates",
    "false_flush_ok",
)


def present(root: str) -> Counter:
    out: Counter = Counter()
    for f in glob.glob(os.path.join(root, "exploration_events", "*", "*", "*.parquet")):
        out.update(pq.read_table(f, columns=["impression_id"]).column(0).to_pylist())
    return out


def recover(root: str) -> Counter:
    with EventLog(root):
        pass
    return present(root)


def tally(t: dict, acked: list, mem: set, got: Counter, kind: str) -> None:
    """`acked`: acknowledged ids; `mem`: those counted not durable (a crash may lose them)."""
    must = [k for k in acked if kind == "flush" or k not in mem]
    t[f"{kind}_lost"] += sum(1 for k in must if k not in got)
    t[f"{kind}_duplicates"] += sum(1 for c in got.values() if c > 1)


CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    from fyp_core import EventLog, user_token
    root, start, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    tok = user_token(b"k" * 32, "bench")
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death at the size limit
    if mode == "rlimit":
        kw = dict(rotate_seconds=3600.0)
    else:
        kw = dict(rotate_rows=150, rotate_seconds=0.05)
        if arg % 2:
            kw.update(queue_capacity=16, _debug_write_delay_ms=2)   # spilling
    log = EventLog(root, **kw)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]

    def rows(lo, hi):
        for i in range(lo, hi):
            before = log.stats()["not_durable"]
            log.log_exploration([f"imp-{i}"], tok, i, 0, 0, 0.05)
            print(json.dumps([f"imp-{i}", log.stats()["not_durable"] > before]), flush=True)

    if mode == "run":           # log until killed
        i = start
        while True:
            rows(i, i + 1)
            i += 1
    elif mode == "rlimit":      # the write-ahead file hits the size limit, then it is lifted
        rows(start, start + 50)
        resource.setrlimit(resource.RLIMIT_FSIZE, (arg, hard))
        rows(start + 50, start + 800)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        rows(start + 800, start + 1100)
        print("READY", flush=True)
        signal.pause()
    else:                       # commands on stdin: "rows LO HI" | "flush"
        for line in sys.stdin:
            cmd = line.split()
            if cmd[0] == "rows":
                rows(int(cmd[1]), int(cmd[2]))
                continue
            try:
                log.flush(timeout=10)
                print(json.dumps(["flushed", True]), flush=True)
            except OSError:
                print(json.dumps(["flushed", False]), flush=True)
    """
)


def drop_dac_caps() -> None:
    """In the child, before exec: drop the capabilities that let root ignore file modes
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, so chmod binds."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def spawn(args: list, user: bool = False, stdin: bool = False) -> subprocess.Popen:
    """stderr goes to a file, so `communicate()` reads the rest of stdout through its buffer
    (with two pipes it reads the raw descriptors and loses what iteration had buffered)."""
    err = tempfile.TemporaryFile()
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=err,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
        preexec_fn=drop_dac_caps if user and os.geteuid() == 0 else None,
    )
    ERRFILES[p.pid] = err
    return p


ERRFILES: dict = {}


def stderr_of(p: subprocess.Popen) -> str:
    f = ERRFILES.pop(p.pid)
    f.seek(0)
    return f.read().decode(errors="replace")[-2000:]


def kill9_round(tmp: str, rng: random.Random, t: dict) -> None:
    root = os.path.join(tmp, "k9")
    start, acked, mem = 0, [], set()
    for _ in range(2):  # two kill/restart cycles into the same root
        p = spawn([root, start, "run", rng.randrange(2)])
        want, n = rng.randrange(30, 400), 0
        assert p.stdout is not None
        for line in p.stdout:
            k, m = json.loads(line)
            acked.append(k)
            if m:
                mem.add(k)
            n += 1
            if n >= want:
                break
        time.sleep(rng.uniform(0, 0.02))
        os.kill(p.pid, signal.SIGKILL)
        rest, _ = p.communicate(timeout=30)
        for line in rest.splitlines():
            if not line.endswith("]"):
                continue  # the last line, cut by the kill
            k, m = json.loads(line)
            acked.append(k)
            if m:
                mem.add(k)
        start += 100_000
        recover(root)
    got = present(root)
    tally(t, acked, mem, got, "crash")
    t["acknowledged"] += len(acked)
    t["not_durable"] += len(mem)


def rlimit_round(tmp: str, rng: random.Random, t: dict) -> None:
    root = os.path.join(tmp, "rl")
    p = spawn([root, 0, "rlimit", rng.randrange(8 << 10, 64 << 10)])
    acked, mem = [], set()
    assert p.stdout is not None
    for line in p.stdout:
        if line.strip() == "READY":
            break
        k, m = json.loads(line)
        acked.append(k)
        if m:
            mem.add(k)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert len(acked) == 1100, stderr_of(p)
    tally(t, acked, mem, recover(root), "crash")
    t["acknowledged"] += len(acked)
    t["not_durable"] += len(mem)


def log_rows(log, lo: int, hi: int, acked: list, mem: set) -> None:
    for i in range(lo, hi):
        before = log.stats()["not_durable"]
        log.log_exploration([f"imp-{i}"], TOK, i, 0, 0, 0.05)
        acked.append(f"imp-{i}")
        if log.stats()["not_durable"] > before:
            mem.add(f"imp-{i}")


def _copy_if_present(src: str, dst: str) -> None:
    """copy2, skipping a file the running writer removed between the listing and the copy: a
    Parquet ``.tmp`` renamed to its final name (readers ignore ``.tmp`` files, and the WAL,
    copied first, still held those rows) or a WAL segment deleted once its rows were durable
    in a final Parquet file (copied after the WAL). Any other missing file is an error."""
    try:
        shutil.copy2(src, dst)
    except FileNotFoundError:
        if not (src.endswith(".tmp") or f"{os.sep}_wal{os.sep}" in src):
            raise


def crash_copy(root: str, dst: str) -> Counter:
    shutil.copytree(
        os.path.join(root, "_wal"), os.path.join(dst, "_wal"), copy_function=_copy_if_present
    )
    for name in os.listdir(root):
        if name != "_wal":
            shutil.copytree(
                os.path.join(root, name),
                os.path.join(dst, name),
                copy_function=_copy_if_present,
            )
    return recover(dst)


def fill(path: str) -> str:
    filler = os.path.join(path, "filler")
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    return filler


def tmpfs_round(tmp: str, rng: random.Random, t: dict) -> None:
    disk = os.path.join(tmp, "disk")
    os.makedirs(disk)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", disk], check=True)
    try:
        root = os.path.join(disk, "log")
        spill = rng.randrange(2) == 1
        log = EventLog(
            root,
            rotate_seconds=rng.choice([0.05, 3600.0]),
            queue_capacity=16 if spill else 1_000_000,
            rotate_rows=150,
        )
        acked: list = []
        mem: set = set()
        a, b = rng.randrange(0, 300), rng.randrange(50, 400)
        log_rows(log, 0, a, acked, mem)
        filler = fill(disk)
        log_rows(log, a, a + b, acked, mem)
        with contextlib.suppress(OSError):
            log.flush(timeout=5)
        os.remove(filler)
        log_rows(log, a + b, a + b + rng.randrange(1, 300), acked, mem)
        tally(t, acked, mem, crash_copy(root, os.path.join(tmp, "crash")), "crash")
        log.flush(timeout=60)
        tally(t, acked, mem, present(root), "flush")
        log.close()
        t["acknowledged"] += len(acked)
        t["not_durable"] += len(mem)
    finally:
        subprocess.run(["umount", "-l", disk], check=False)


def chmod_tree(root: str, mode: int) -> None:
    for d, _, _ in os.walk(root):
        os.chmod(d, mode)


def read_only_round(tmp: str, rng: random.Random, t: dict) -> None:
    base = os.path.join(tmp, "ro")
    os.makedirs(base)
    root = os.path.join(base, "log")
    p = spawn([root, 0, "cmd", rng.randrange(2)], user=True, stdin=True)
    acked: list = []
    mem: set = set()

    def send(cmd: str, lines: int) -> list:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        out = [json.loads(p.stdout.readline()) for _ in range(lines)]
        for k, m in out:
            if k != "flushed":
                acked.append(k)
                if m:
                    mem.add(k)
        return out

    a, b, c = rng.randrange(1, 200), rng.randrange(1, 200), rng.randrange(1, 200)
    send(f"rows 0 {a}", a)
    chmod_tree(root, 0o555)
    send(f"rows {a} {a + b}", b)
    # rows are waiting and no file can be created: a flush that returns would be a lie
    t["false_flush_ok"] += int(send("flush", 1)[0][1])
    chmod_tree(root, 0o755)
    send(f"rows {a + b} {a + b + c}", c)
    tally(t, acked, mem, crash_copy(root, os.path.join(tmp, "crash")), "crash")
    send("flush", 1)
    tally(t, acked, mem, present(root), "flush")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    t["acknowledged"] += len(acked)
    t["not_durable"] += len(mem)


def can_mount_tmpfs() -> str | None:
    d = tempfile.mkdtemp()
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True, text=True
        )
        if r.returncode != 0:
            return r.stderr.strip() or f"mount exited {r.returncode}"
        subprocess.run(["umount", d], check=False)
        return None
    except OSError as e:
        return str(e)
    finally:
        os.rmdir(d)


def run_real(name: str, fn, rounds: int, seed: int) -> dict:
    t = dict.fromkeys(COLS[2:], 0)
    for r in range(rounds):
        tmp = tempfile.mkdtemp(prefix=f"fyp-faults-{name}-")
        try:
            fn(tmp, random.Random(seed * 1000 + r), t)
            t["rounds"] += 1
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return t


def run_injected(rounds: int) -> list[dict]:
    env = dict(os.environ, FYP_FAULT_ROUNDS=str(rounds))
    # the same package and targets as CI's `cargo test -p fyp-core --lib --tests`, so its build
    # is reused
    cmd = [
        "cargo",
        "test",
        "-q",
        "-p",
        "fyp-core",
        "--lib",
        "--tests",
        "fault_figures",
        "--",
        "--ignored",
        "--nocapture",
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("FAULTS ")]
    if r.returncode != 0:
        sys.exit(f"fault_figures failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few rounds (CI, < 60 s)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per real fault class")
    ap.add_argument("--no-cargo", action="store_true", help="skip the injected classes")
    a = ap.parse_args()
    rounds = a.rounds or (3 if a.quick else 40)
    rows = []
    real = [("kill9", kill9_round, "SIGKILL of a writer subprocess, restart")]
    real.append(("efbig_rlimit", rlimit_round, "RLIMIT_FSIZE short write, lifted, SIGKILL"))
    why = can_mount_tmpfs()
    if why is None:
        real.append(("enospc_tmpfs", tmpfs_round, "4 MB tmpfs filled, freed, kill -9 copy"))
    else:
        print(f"SKIPPED LOUDLY: enospc_tmpfs needs `mount -t tmpfs` ({why})", file=sys.stderr)
    real.append(("read_only_dir", read_only_round, "chmod a-w of the log dirs, then u+w"))
    for i, (name, fn, mech) in enumerate(real):
        t0 = time.perf_counter()
        t = run_real(name, fn, rounds, seed=i + 1)
        rows.append({"class": name, "mechanism": mech, **t})
        print(f"  {name}: {t['rounds']} rounds in {time.perf_counter() - t0:.1f} s", flush=True)
    if a.no_cargo or shutil.which("cargo") is None:
        print(
            "SKIPPED LOUDLY: the injected fault classes need cargo (rust toolchain)",
            file=sys.stderr,
        )
    else:
        t0 = time.perf_counter()
        for r in run_injected(10 if a.quick else 200):
            rows.append({"mechanism": "injected (fsio.rs)", "false_flush_ok": 0, **r})
        print(f"  injected classes in {time.perf_counter() - t0:.1f} s", flush=True)
    print("\n| " + " | ".join(COLS) + " |")
    print("|" + "---|" * len(COLS))
    bad = 0
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in COLS) + " |")
        bad += sum(r[c] for c in COLS[5:]) + r.get("segments_left_after_close", 0)
    print("\nzero loss and zero duplicates in every class" if bad == 0 else f"\nFAILED: {bad}")
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
