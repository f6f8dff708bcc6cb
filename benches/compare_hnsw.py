"""Side-by-side HNSW comparison: fyp_core.HnswIndex vs hnswlib, glass, FAISS IndexHNSWFlat, USearch.

Same data, same parameters (M=16, ef_construction=200, inner product on L2-normalised vectors),
one process. Data (`--data`): `synthetic` (the default) is a deterministic anisotropic Gaussian
mixture with clusters of very different sizes (Zipf weights), L2-normalised, held-out queries
from the same mixture; `glove50` (400k GloVe word vectors, 50-d) and `minilm` (all-MiniLM-L6-v2
sentence embeddings of docstring sentences, 384-d) are real embedding sets, see hnsw_data.py
for their sources and how to install them. Exact ground truth by numpy brute force.

    python benches/compare_hnsw.py --quick      # CI: 20k x 64 synthetic, seconds
    python benches/compare_hnsw.py              # RESULTS.md: 400k x 96 (builds 5 indexes)
    python benches/compare_hnsw.py --interleaved --libs fyp_core_f32,fyp_core_fp16,hnswlib
    python benches/compare_hnsw.py --data glove50 --interleaved

Our variants: `fyp_core` (the default, `quantize="auto"`: 8-bit or fp16 traversal codes chosen
from the data), `fyp_core_fp16`, `fyp_core_sq8` (8-bit codes), `fyp_core_sq4` (4-bit codes,
for high-dimensional embeddings) and `fyp_core_f32`
(`quantize="off"`: traversal on the float32 rows). glass variants: `glass` (8-bit codes,
float32 re-rank), `glass_sq4` (glass's README rule of thumb: 4-bit search codes) and
`glass_fp32` (no quantisation); see the `Glass` class.

`--interleaved` builds every contender first, then times the query batches round-robin (each
ef: one batch per library in turn, `--rounds` times) and reports medians, so machine load hits
every library alike; ratios are against hnswlib measured in the same rounds. The concurrent
insert test then runs for each library in turn.

Reports: build time (all cores, wall clock), single-thread recall@10 vs QPS for ef 16..512
(QPS from the calling thread's CPU time, median of repetitions), K=1000 latency
and recall@1000, insert p50/p99 while another thread searches `--reader-qps` times a second
(wall clock, and the insert thread's CPU time: the work without the waits for a core or the
GIL; and that search p99), errors during concurrent use, memory per vector (RSS growth during
the build).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time

import numpy as np

M, EF_CONSTRUCTION = 16, 200


def make_data(n: int, nq: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` items and `nq` held-out queries from one anisotropic Gaussian mixture, L2-normalised."""
    rng = np.random.default_rng(seed)
    n_clusters = max(8, min(1000, n // 400))
    w = 1.0 / np.arange(1, n_clusters + 1) ** 1.1  # cluster sizes differ by ~1000x
    w /= w.sum()
    centers = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    # Anisotropy: a decaying spectrum, randomly rotated per cluster group, with per-cluster
    # jitter of the scale, so some clusters are tight and elongated and others diffuse.
    spectrum = (1.0 / np.sqrt(1.0 + np.arange(dim))).astype(np.float32)
    rots = [np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32) for _ in range(8)]
    scale = rng.lognormal(mean=-0.3, sigma=0.4, size=n_clusters).astype(np.float32)

    def draw(count: int) -> np.ndarray:
        c = rng.choice(n_clusters, size=count, p=w)
        z = rng.standard_normal((count, dim)).astype(np.float32) * spectrum
        out = np.empty((count, dim), dtype=np.float32)
        for g in range(8):
            sel = (c % 8) == g
            out[sel] = z[sel] @ rots[g]
        out = centers[c] + out * scale[c, None]
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out.astype(np.float32)

    return draw(n), draw(nq)


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k by inner product (brute force, chunked)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        sims = queries[s : s + 256] @ data.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = sum(len(np.intersect1d(f[:k], t)) for f, t in zip(found, truth))
    return hits / truth.size


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- adapters: build(data, ids, threads), search(q, k, ef, threads) -> ids, add_one(id, v) ----


class Ours:
    """Ours with the library default (`quantize=None`: "auto", 8-bit or fp16 codes)."""

    name = "fyp_core"
    quantize: bool | str | None = None
    concurrent_skip: str | None = None

    def __init__(self, dim: int) -> None:
        import fyp_core

        self.ix = fyp_core.HnswIndex(
            dim, metric="ip", m=M, ef_construction=EF_CONSTRUCTION, quantize=self.quantize
        )

    def build(self, data, ids, threads):
        self.ix.add(ids, data, threads=threads)

    def search(self, q, k, ef, threads):
        return self.ix.search(q, k, ef=ef, threads=threads)[0].astype(np.int64)

    def add_one(self, i, v):
        self.ix.add(np.array([i], dtype=np.uint64), v[None, :], threads=1)


class OursSq8(Ours):
    """Ours with the 8-bit traversal on (`quantize="sq8"`; float32 re-rank of the candidates)."""

    name = "fyp_core_sq8"
    quantize = "sq8"


class OursSq4(Ours):
    """Ours with 4-bit traversal codes (`quantize="sq4"`; float32 re-rank of the candidates)."""

    name = "fyp_core_sq4"
    quantize = "sq4"


class OursFp16(Ours):
    """Ours with half-precision traversal codes (`quantize="fp16"`; float32 re-rank)."""

    name = "fyp_core_fp16"
    quantize = "fp16"


class OursF32(Ours):
    """Ours traversing the float32 rows (`quantize="off"`, the default before fp16)."""

    name = "fyp_core_f32"
    quantize = "off"


class Hnswlib:
    name = "hnswlib"
    concurrent_skip: str | None = None

    def __init__(self, dim: int) -> None:
        import hnswlib

        self.ix = hnswlib.Index(space="ip", dim=dim)
        self.dim = dim

    def build(self, data, ids, threads):
        self.ix.init_index(max_elements=len(data) + 100_000, M=M, ef_construction=EF_CONSTRUCTION)
        self.ix.add_items(data, ids, num_threads=threads)

    def search(self, q, k, ef, threads):
        self.ix.set_ef(ef)
        return self.ix.knn_query(q, k=k, num_threads=threads)[0].astype(np.int64)

    def add_one(self, i, v):
        self.ix.add_items(v[None, :], np.array([i]), num_threads=1)


class Faiss:
    name = "faiss"
    concurrent_skip = "IndexHNSWFlat segfaults when searched during add"

    def __init__(self, dim: int) -> None:
        import faiss

        self.faiss = faiss
        self.ix = faiss.IndexHNSWFlat(dim, M, faiss.METRIC_INNER_PRODUCT)
        self.ix.hnsw.efConstruction = EF_CONSTRUCTION

    def build(self, data, ids, threads):
        self.faiss.omp_set_num_threads(threads)
        self.ix.add(data)  # ids are 0..n-1 here

    def search(self, q, k, ef, threads):
        self.faiss.omp_set_num_threads(threads)
        self.ix.hnsw.efSearch = ef
        return self.ix.search(q, k)[1].astype(np.int64)

    def add_one(self, i, v):
        self.ix.add(v[None, :])


class USearch:
    name = "usearch"
    concurrent_skip: str | None = None

    def __init__(self, dim: int) -> None:
        from usearch.index import Index

        self.ix = Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=M,
            expansion_add=EF_CONSTRUCTION,
            expansion_search=64,
        )

    def build(self, data, ids, threads):
        self.ix.add(ids.astype(np.uint64), data, threads=threads)

    def search(self, q, k, ef, threads):
        self.ix.expansion_search = ef
        m = self.ix.search(q, k, threads=threads)
        return np.asarray(m.keys).astype(np.int64).reshape(len(q), k)

    def add_one(self, i, v):
        self.ix.add(np.uint64(i), v, threads=1)


@contextlib.contextmanager
def quiet_stdout():
    """Silence a C library's printf progress lines (file descriptor 1) for the duration."""
    import ctypes

    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


class Glass:
    """glass (PyPI `pyglass-portable`, the AVX2 build of zilliztech's pyglass; import `glass`).

    Graph: glass's HNSW builder on 8-bit uniform scalar codes (`SQ8U`, which glass's README
    recommends for indexing), R=32 with L=200: glass passes R/2 to its hnswlib-derived builder,
    so this is M=16 (up to 32 links at level 0, as hnswlib) and ef_construction=200. Search:
    the level-0 graph traversed on SQ8U codes, then the best 1.5k re-ranked on float32
    (`refine_quant`); prefetch depths tuned by `Searcher.optimize()` on one thread, counted in
    the build time, as glass's ann-benchmarks wrapper does. The README's rule of thumb searches
    on 4-bit codes (`SQ4U`) instead, and its example config re-ranks on FP16: that is
    `glass_sq4`. The re-rank only sees 1.5k candidates, so what the first pass misorders stays
    lost: the 4-bit pass capped recall@10 at 0.91 on GloVe (50k rows, ef 256), the 8-bit one
    did not (0.998); on the clustered synthetic set both cap (8-bit: 0.59 at 200k x 96).
    `glass_fp32`: graph and search on float32, no re-rank (the same distances as hnswlib).
    No insert after the build: the concurrent test is skipped. Ids are row positions.
    """

    name = "glass"
    build_quant, search_quant, refine_quant = "SQ8U", "SQ8U", "FP32"
    concurrent_skip = "glass builds a static graph: no insert after the build"

    def __init__(self, dim: int) -> None:
        import glass

        self.glass = glass
        self.searcher = None

    def build(self, data, ids, threads):
        g = self.glass
        with quiet_stdout():
            g.set_num_threads(threads)
            graph = g.Index("HNSW", "IP", self.build_quant, R=2 * M, L=EF_CONSTRUCTION).build(data)
            g.set_num_threads(1)
            self.searcher = g.Searcher(graph, data, "IP", self.search_quant, self.refine_quant)
            self.searcher.optimize(1)

    def search(self, q, k, ef, threads):
        self.searcher.set_ef(ef)
        return self.searcher.batch_search(q, k, num_threads=threads)[0].astype(np.int64)

    def add_one(self, i, v):
        raise NotImplementedError(self.concurrent_skip)


class GlassSq4(Glass):
    """glass as its README's rule of thumb says: SQ8U graph, SQ4U search, FP16 re-rank."""

    name = "glass_sq4"
    build_quant, search_quant, refine_quant = "SQ8U", "SQ4U", "FP16"


class GlassFp32(Glass):
    """glass without quantisation: graph built and searched on float32, no re-rank."""

    name = "glass_fp32"
    build_quant, search_quant, refine_quant = "FP32", "FP32", ""


def median_time(fn, reps: int) -> float:
    """Median CPU time of the calling thread. Single-threaded searches run on the calling thread
    in every library here, and on a shared machine CPU time is far steadier than wall time."""
    ts = []
    for _ in range(reps):
        t = time.thread_time()
        fn()
        ts.append(time.thread_time() - t)
    return float(np.median(ts))


def concurrent_inserts(
    lib, data, start: int, count: int, queries, seconds_cap: float, reader_qps: float
) -> dict:
    """Thread A inserts items start..start+count one at a time while thread B searches (k=10,
    ef=64), `reader_qps` searches a second on a fixed schedule (0: back to back, so a faster
    library's reader takes more of the cores from its own inserts); returns wall-clock latency
    percentiles, the insert thread's CPU time per insert (the work itself, without the waits
    for a core or the GIL), and the number of errors either raised."""
    ins, ins_cpu, srch, errors = [], [], [], []
    stop = threading.Event()

    def reader():
        i, t0 = 0, time.perf_counter()
        while not stop.is_set():
            if reader_qps > 0:
                time.sleep(max(0.0, t0 + i / reader_qps - time.perf_counter()))
            q = queries[i % len(queries)][None, :]
            t = time.perf_counter()
            try:
                lib.search(q, 10, 64, 1)
            except Exception as e:  # noqa: BLE001 - counting peers' failures is the point
                errors.append(repr(e))
            srch.append(time.perf_counter() - t)
            i += 1

    # Python hands the GIL over every 5 ms by default; that would dominate every library's p99.
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    th = threading.Thread(target=reader)
    th.start()
    t_end = time.perf_counter() + seconds_cap
    for i in range(start, start + count):
        t, c = time.perf_counter(), time.thread_time()
        try:
            lib.add_one(i, data[i])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        ins.append(time.perf_counter() - t)
        ins_cpu.append(time.thread_time() - c)
        if time.perf_counter() > t_end:
            break
    stop.set()
    th.join()
    sys.setswitchinterval(old_interval)
    ms = lambda xs, p: float(np.percentile(np.array(xs) * 1e3, p)) if xs else float("nan")  # noqa: E731
    return {
        "inserts": len(ins),
        "insert_p50_ms": ms(ins, 50),
        "insert_p90_ms": ms(ins, 90),
        "insert_p99_ms": ms(ins, 99),
        "insert_cpu_p50_ms": ms(ins_cpu, 50),
        "insert_cpu_p99_ms": ms(ins_cpu, 99),
        "search_p50_ms": ms(srch, 50),
        "search_p99_ms": ms(srch, 99),
        "searches": len(srch),
        "reader_qps": reader_qps,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from hnsw_data import DATASETS

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small set for CI (20k x 64)")
    ap.add_argument(
        "--data",
        default="synthetic",
        choices=["synthetic", *DATASETS],
        help="synthetic clustered data (default) or a real embedding set (see hnsw_data.py)",
    )
    ap.add_argument("--n", type=int, default=None, help="data rows (real sets: a cap)")
    ap.add_argument("--dim", type=int, default=None, help="synthetic data only")
    ap.add_argument("--nq", type=int, default=None)
    ap.add_argument("--libs", default="fyp_core,hnswlib,glass,faiss,usearch")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    ap.add_argument("--interleaved", action="store_true", help="round-robin timing, medians")
    ap.add_argument(
        "--reader-qps",
        type=float,
        default=1000.0,
        help="searches/s of the reader during the insert test (0: back to back)",
    )
    ap.add_argument("--rounds", type=int, default=None, help="rounds for --interleaved")
    return ap.parse_args(argv)


def load_data(a: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """(data, held-out queries, description); raises hnsw_data.DataUnavailable."""
    nq = a.nq or (200 if a.quick else 1000)
    if a.data == "synthetic":
        n = a.n or (20_000 if a.quick else 400_000)
        data, queries = make_data(n, nq, a.dim or (64 if a.quick else 96))
        return data, queries, "synthetic clustered Gaussian mixture (make_data)"
    if a.dim:
        raise SystemExit("--dim applies to --data synthetic only")
    from hnsw_data import DATASETS

    return DATASETS[a.data](nq, a.n or (20_000 if a.quick else None))


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return cpu


def setup(a: argparse.Namespace, data: np.ndarray, queries: np.ndarray) -> dict:
    """Run parameters and ground truth shared by both modes."""
    n = len(data)
    n_tail = min(2000, n // 10)  # held back for the concurrent-insert test
    base = n - n_tail  # the indexes hold data[:base]; the tail is inserted concurrently later
    k_big = 100 if a.quick else 1000
    qb = queries[: min(len(queries), 100 if a.quick else 200)]
    return {
        "base": base,
        "n_tail": n_tail,
        "reps": 1 if a.quick else 3,
        "efs": [16, 32, 64, 128] if a.quick else [16, 24, 32, 48, 64, 96, 128, 256, 512],
        "k_big": k_big,
        "efs_big": [100, 200] if a.quick else [1000, 1250, 1500, 2000],
        "truth10": ground_truth(data[:base], queries, 10),
        "qb": qb,
        "truth_big": ground_truth(data[:base], qb, k_big),
        "cap": 10 if a.quick else 30,
        "reader_qps": a.reader_qps,
        "threads": os.cpu_count() or 1,
    }


def main(argv: list[str] | None = None) -> int:
    # A fixed mmap threshold makes glibc return each big index allocation to the OS when it is
    # freed, so the RSS growth of one library's build is not hidden by the previous one's pages.
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    a = parse_args(argv)
    from hnsw_data import DataUnavailable

    t0 = time.perf_counter()
    try:
        data, queries, desc = load_data(a)
    except DataUnavailable as e:
        print(f"## data {a.data}: {e}", file=sys.stderr)
        return 2
    c = setup(a, data, queries)
    (n, dim), nq = data.shape, len(queries)
    took = time.perf_counter() - t0
    print(f"# data {a.data}: {desc}")
    print(f"# {n} x {dim}, {nq} held-out queries, loaded + ground truth in {took:.1f}s")
    cpu = machine()
    print(f"# machine: {cpu}, {c['threads']} cores; python {sys.version.split()[0]}")

    if a.interleaved:
        return interleaved(a, data, queries, c)
    results: dict = {"data": a.data, "n": n, "dim": dim, "nq": nq, "machine": cpu, "libs": {}}
    results["cores"] = c["threads"]
    for name in a.libs.split(","):
        try:
            lib = ADAPTERS[name](dim)
        except ImportError as e:
            print(f"## {name}: not installed ({e}); skipped")
            continue
        r = measure_one(lib, data, queries, c)
        results["libs"][name] = r
        print_lib(name, r, c["k_big"])
        del lib
    print_summary(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def build_measured(lib, data: np.ndarray, c: dict) -> dict:
    """Build on data[:base] with all cores: wall time and RSS growth per vector."""
    ids = np.arange(c["base"], dtype=np.int64)
    rss0 = rss_bytes()
    t = time.perf_counter()
    lib.build(data[: c["base"]], ids, c["threads"])
    return {
        "build_s": time.perf_counter() - t,
        "bytes_per_vector": (rss_bytes() - rss0) / c["base"],
    }


def concurrent(lib, data: np.ndarray, queries: np.ndarray, c: dict) -> dict:
    if lib.concurrent_skip:
        return {"skipped": lib.concurrent_skip}
    return concurrent_inserts(lib, data, c["base"], c["n_tail"], queries, c["cap"], c["reader_qps"])


def measure_one(lib, data: np.ndarray, queries: np.ndarray, c: dict) -> dict:
    """One library alone: build, recall/QPS curve, K=big latency, concurrent inserts."""
    r = build_measured(lib, data, c)
    r["curve"], r["k_big"] = [], []
    qb, k_big = c["qb"], c["k_big"]
    for ef in c["efs"]:
        tm = median_time(lambda ef=ef: lib.search(queries, 10, ef, 1), c["reps"])
        found = lib.search(queries, 10, ef, 1)
        r["curve"].append(
            {"ef": ef, "recall": recall(found, c["truth10"]), "qps": len(queries) / tm}
        )
    for ef in c["efs_big"]:
        tm = median_time(lambda ef=ef: lib.search(qb, k_big, ef, 1), c["reps"])
        found = lib.search(qb, k_big, ef, 1)
        ms = tm / len(qb) * 1e3
        r["k_big"].append({"ef": ef, "recall": recall(found, c["truth_big"]), "ms_per_query": ms})
    r["concurrent"] = concurrent(lib, data, queries, c)
    return r


ADAPTERS = {
    "fyp_core": Ours,
    "fyp_core_sq8": OursSq8,
    "fyp_core_sq4": OursSq4,
    "fyp_core_fp16": OursFp16,
    "fyp_core_f32": OursF32,
    "hnswlib": Hnswlib,
    "glass": Glass,
    "glass_sq4": GlassSq4,
    "glass_fp32": GlassFp32,
    "faiss": Faiss,
    "usearch": USearch,
}


def interleaved(a, data: np.ndarray, queries: np.ndarray, c: dict) -> int:
    """Build every library, then time query batches round-robin; report medians and ratios.
    The concurrent-insert test runs last, one library at a time."""
    rounds = a.rounds or (3 if a.quick else 7)
    libs: dict = {}
    res: dict = {}
    for name in a.libs.split(","):
        try:
            libs[name] = ADAPTERS[name](data.shape[1])
        except ImportError as e:
            print(f"## {name}: not installed ({e}); skipped")
            continue
        res[name] = {**build_measured(libs[name], data, c), "curve": [], "k_big": []}
        codes = getattr(getattr(libs[name], "ix", None), "codes", None)
        chose = f" (traversal codes: {codes})" if codes else ""
        print(f"# built {name} in {res[name]['build_s']:.1f}s{chose}", flush=True)

    def rr(q, k, ef):
        times: dict = {name: [] for name in libs}
        for _ in range(rounds):
            for name, lib in libs.items():
                t = time.thread_time()
                lib.search(q, k, ef, 1)
                times[name].append(time.thread_time() - t)
        return {name: float(np.median(ts)) for name, ts in times.items()}

    for ef in c["efs"]:
        med = rr(queries, 10, ef)
        for name, lib in libs.items():
            rc = recall(lib.search(queries, 10, ef, 1), c["truth10"])
            res[name]["curve"].append({"ef": ef, "recall": rc, "qps": len(queries) / med[name]})
    for ef in c["efs_big"]:
        med = rr(c["qb"], c["k_big"], ef)
        for name, lib in libs.items():
            rc = recall(lib.search(c["qb"], c["k_big"], ef, 1), c["truth_big"])
            ms = med[name] / len(c["qb"]) * 1e3
            res[name]["k_big"].append({"ef": ef, "recall": rc, "ms_per_query": ms})
    for name, lib in libs.items():
        res[name]["concurrent"] = concurrent(lib, data, queries, c)
    print_interleaved(res, c["k_big"], rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"data": a.data, "n": len(data), "dim": data.shape[1], "libs": res}, f, indent=1
            )
    return 0


def print_interleaved(res: dict, k_big: int, rounds: int) -> None:
    print(f"\n## interleaved, medians of {rounds} round-robin rounds, 1 query thread")
    head = "| library | build s | B/vector | QPS@0.90 | QPS@0.95 | QPS@0.99 |"
    print(head + " vs hnswlib @0.90 / 0.95 / 0.99 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    targets = (0.90, 0.95, 0.99)
    ref = [qps_at(res["hnswlib"]["curve"], t) if "hnswlib" in res else None for t in targets]
    for name, r in res.items():
        qs = [qps_at(r["curve"], t) for t in targets]
        cells = [f"{q:.0f}" if q else "-" for q in qs]
        ratios = " / ".join(f"{q / f:.2f}x" if (q and f) else "-" for q, f in zip(qs, ref))
        print(
            f"| {name} | {r['build_s']:.1f} | {r['bytes_per_vector']:.0f} | {' | '.join(cells)}"
            f" | {ratios} |"
        )
    for name, r in res.items():
        pts = ", ".join(f"ef {p['ef']}: {p['recall']:.3f} @ {p['qps']:.0f}" for p in r["curve"])
        big = ", ".join(
            f"ef {p['ef']}: r{k_big} {p['recall']:.3f} in {p['ms_per_query']:.2f} ms"
            for p in r["k_big"]
        )
        print(f"- {name}: {pts}\n  K={k_big}: {big}")
    print(
        "\n| library | insert p50 / p90 / p99 ms (reader running) | insert CPU p50 / p99 ms "
        "| search p50 / p99 ms | errors |"
    )
    print("|---|---:|---:|---:|---|")
    for name, r in res.items():
        cr = r["concurrent"]
        if "skipped" in cr:
            print(f"| {name} | - | - | - | not run: {cr['skipped']} |")
            continue
        ins = f"{cr['insert_p50_ms']:.2f} / {cr['insert_p90_ms']:.2f} / {cr['insert_p99_ms']:.2f}"
        cpu = f"{cr['insert_cpu_p50_ms']:.2f} / {cr['insert_cpu_p99_ms']:.2f}"
        srch = f"{cr['search_p50_ms']:.2f} / {cr['search_p99_ms']:.2f}"
        print(
            f"| {name} | {ins} ({cr['inserts']}) | {cpu} | {srch} ({cr['searches']}) "
            f"| {cr['errors']} |"
        )


def print_lib(name: str, r: dict, k_big: int) -> None:
    print(f"\n## {name}: build {r['build_s']:.1f}s, {r['bytes_per_vector']:.0f} B/vector")
    print("| ef | recall@10 | QPS (1 thread) |")
    print("|---:|---:|---:|")
    for p in r["curve"]:
        print(f"| {p['ef']} | {p['recall']:.4f} | {p['qps']:.0f} |")
    print(f"| ef | recall@{k_big} | ms/query (1 thread) |")
    print("|---:|---:|---:|")
    for p in r["k_big"]:
        print(f"| {p['ef']} | {p['recall']:.4f} | {p['ms_per_query']:.2f} |")
    print(f"concurrent: {r['concurrent']}")


def qps_at(curve: list, target: float) -> float | None:
    """QPS at recall target, interpolated linearly between the two bracketing ef points."""
    pts = sorted(curve, key=lambda p: p["recall"])
    for lo, hi in zip(pts, pts[1:]):
        if lo["recall"] < target <= hi["recall"]:
            f = (target - lo["recall"]) / (hi["recall"] - lo["recall"])
            return lo["qps"] + f * (hi["qps"] - lo["qps"])
    if pts and pts[0]["recall"] >= target:
        return max(p["qps"] for p in pts)
    return None


def print_summary(res: dict) -> None:
    libs = res["libs"]
    print("\n## summary (QPS at recall@10 >= 0.95, single thread; ratio = fyp_core / peer)")
    ours = libs.get("fyp_core")
    oq = qps_at(ours["curve"], 0.95) if ours else None
    for name, r in libs.items():
        q = qps_at(r["curve"], 0.95)
        ratio = f"{oq / q:.2f}x" if (oq and q) else "-"
        qs = f"{q:.0f}" if q else "not reached"
        print(
            f"- {name}: QPS@0.95 {qs}; ours/peer {ratio}; build {r['build_s']:.1f}s; "
            f"{r['bytes_per_vector']:.0f} B/vec"
        )


if __name__ == "__main__":
    raise SystemExit(main())
