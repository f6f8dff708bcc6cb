"""Side-by-side HNSW comparison: fyp_core.HnswIndex vs hnswlib, FAISS IndexHNSWFlat, USearch.

Same data, same parameters (M=16, ef_construction=200, inner product on L2-normalised vectors),
one process. Data: a deterministic anisotropic Gaussian mixture with clusters of very different
sizes (Zipf weights), L2-normalised; held-out queries from the same mixture; exact ground truth
by numpy brute force.

    python benches/compare_hnsw.py --quick      # CI: 20k x 64, seconds
    python benches/compare_hnsw.py              # RESULTS.md: 400k x 96 (builds 4 indexes)
    python benches/compare_hnsw.py --interleaved --libs fyp_core_f32,fyp_core_fp16,hnswlib

Our variants: `fyp_core` (the default, fp16 traversal codes), `fyp_core_fp16`, `fyp_core_sq8`
(8-bit codes) and `fyp_core_f32` (`quantize="off"`: traversal on the float32 rows).

`--interleaved` builds every contender first, then times the query batches round-robin (each
ef: one batch per library in turn, `--rounds` times) and reports medians, so machine load hits
every library alike; ratios are against hnswlib measured in the same rounds.

Reports: build time (all cores, wall clock), single-thread recall@10 vs QPS for ef 16..512
(QPS from the calling thread's CPU time, median of repetitions), K=1000 latency
and recall@1000, insert p50/p99 while another thread searches (and that search p99), errors
during concurrent use, memory per vector (RSS growth during the build).
"""

from __future__ import annotations

import argparse
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
    """Ours with the library default (`quantize=None`: fp16 traversal codes)."""

    name = "fyp_core"
    quantize: bool | str | None = None

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


def median_time(fn, reps: int) -> float:
    """Median CPU time of the calling thread. Single-threaded searches run on the calling thread
    in every library here, and on a shared machine CPU time is far steadier than wall time."""
    ts = []
    for _ in range(reps):
        t = time.thread_time()
        fn()
        ts.append(time.thread_time() - t)
    return float(np.median(ts))


def concurrent_inserts(lib, data, start: int, count: int, queries, seconds_cap: float) -> dict:
    """Thread A inserts items start..start+count one at a time while thread B searches (k=10,
    ef=64) in a loop; returns latency percentiles and the number of errors either raised."""
    ins, srch, errors = [], [], []
    stop = threading.Event()

    def reader():
        i = 0
        while not stop.is_set():
            q = queries[i % len(queries)][None, :]
            t = time.perf_counter()
            try:
                r = lib.search(q, 10, 64, 1)
                if (r < 0).any() and len(r) == 0:
                    errors.append("empty")
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
        t = time.perf_counter()
        try:
            lib.add_one(i, data[i])
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        ins.append(time.perf_counter() - t)
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
        "search_p50_ms": ms(srch, 50),
        "search_p99_ms": ms(srch, 99),
        "searches": len(srch),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small set for CI (20k x 64)")
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--nq", type=int, default=None)
    ap.add_argument("--libs", default="fyp_core,hnswlib,faiss,usearch")
    ap.add_argument("--json", default=None, help="write all figures to this file")
    ap.add_argument("--interleaved", action="store_true", help="round-robin timing, medians")
    ap.add_argument("--rounds", type=int, default=None, help="rounds for --interleaved")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # A fixed mmap threshold makes glibc return each big index allocation to the OS when it is
    # freed, so the RSS growth of one library's build is not hidden by the previous one's pages.
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and argv is None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    a = parse_args(argv)
    n = a.n or (20_000 if a.quick else 400_000)
    dim = a.dim or (64 if a.quick else 96)
    nq = a.nq or (200 if a.quick else 1000)
    reps = 1 if a.quick else 3
    efs = [16, 32, 64, 128] if a.quick else [16, 24, 32, 48, 64, 96, 128, 256, 512]
    k_big = 100 if a.quick else 1000
    efs_big = [100, 200] if a.quick else [1000, 1250, 1500, 2000]
    threads_all = os.cpu_count() or 1
    n_tail = min(2000, n // 10)  # held back for the concurrent-insert test

    t0 = time.perf_counter()
    data, queries = make_data(n, nq, dim)
    nq_big = min(nq, 100 if a.quick else 200)
    base = n - n_tail  # the indexes hold data[:base]; the tail is inserted concurrently later
    truth10 = ground_truth(data[:base], queries, 10)
    qb = queries[:nq_big]
    truth_big = ground_truth(data[:base], qb, k_big)
    took = time.perf_counter() - t0
    print(f"# data {n} x {dim}, {nq} queries, generated + ground truth in {took:.1f}s")
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# machine: {cpu}, {threads_all} cores; python {sys.version.split()[0]}")

    if a.interleaved:
        return interleaved(a, data, queries, base, truth10, qb, truth_big, k_big, efs, efs_big)
    adapters = ADAPTERS
    results: dict = {"n": n, "dim": dim, "nq": nq, "machine": cpu, "cores": threads_all, "libs": {}}
    ids = np.arange(n, dtype=np.int64)
    for name in a.libs.split(","):
        try:
            lib = adapters[name](dim)
        except ImportError as e:
            print(f"## {name}: not installed ({e}); skipped")
            continue
        r: dict = {}
        rss0 = rss_bytes()
        t = time.perf_counter()
        lib.build(data[:base], ids[:base], threads_all)
        r["build_s"] = time.perf_counter() - t
        r["bytes_per_vector"] = (rss_bytes() - rss0) / base
        r["curve"] = []
        for ef in efs:
            tm = median_time(lambda ef=ef, lib=lib: lib.search(queries, 10, ef, 1), reps)
            found = lib.search(queries, 10, ef, 1)
            r["curve"].append({"ef": ef, "recall": recall(found, truth10), "qps": nq / tm})
        r["k_big"] = []
        for ef in efs_big:
            tm = median_time(lambda ef=ef, lib=lib, qb=qb: lib.search(qb, k_big, ef, 1), reps)
            found = lib.search(qb, k_big, ef, 1)
            r["k_big"].append(
                {"ef": ef, "recall": recall(found, truth_big), "ms_per_query": tm / nq_big * 1e3}
            )
        if name == "faiss":
            r["concurrent"] = {"skipped": "IndexHNSWFlat segfaults when searched during add"}
        else:
            cap = 10 if a.quick else 30
            r["concurrent"] = concurrent_inserts(lib, data, base, n_tail, queries, cap)
        results["libs"][name] = r
        print_lib(name, r, k_big)
        del lib
    print_summary(results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


ADAPTERS = {
    "fyp_core": Ours,
    "fyp_core_sq8": OursSq8,
    "fyp_core_fp16": OursFp16,
    "fyp_core_f32": OursF32,
    "hnswlib": Hnswlib,
    "faiss": Faiss,
    "usearch": USearch,
}


def interleaved(a, data, queries, base, truth10, qb, truth_big, k_big, efs, efs_big) -> int:
    """Build every library, then time query batches round-robin; report medians and ratios."""
    threads_all = os.cpu_count() or 1
    rounds = a.rounds or (3 if a.quick else 7)
    libs: dict = {}
    ids = np.arange(len(data), dtype=np.int64)
    for name in a.libs.split(","):
        try:
            lib = ADAPTERS[name](data.shape[1])
        except ImportError as e:
            print(f"## {name}: not installed ({e}); skipped")
            continue
        t = time.perf_counter()
        lib.build(data[:base], ids[:base], threads_all)
        libs[name] = (lib, time.perf_counter() - t)
        print(f"# built {name} in {libs[name][1]:.1f}s")
    res: dict = {name: {"build_s": b, "curve": [], "k_big": []} for name, (_, b) in libs.items()}

    def rr(q, k, ef):
        times: dict = {name: [] for name in libs}
        for _ in range(rounds):
            for name, (lib, _) in libs.items():
                t = time.thread_time()
                lib.search(q, k, ef, 1)
                times[name].append(time.thread_time() - t)
        return {name: float(np.median(ts)) for name, ts in times.items()}

    for ef in efs:
        med = rr(queries, 10, ef)
        for name, (lib, _) in libs.items():
            rc = recall(lib.search(queries, 10, ef, 1), truth10)
            res[name]["curve"].append({"ef": ef, "recall": rc, "qps": len(queries) / med[name]})
    for ef in efs_big:
        med = rr(qb, k_big, ef)
        for name, (lib, _) in libs.items():
            rc = recall(lib.search(qb, k_big, ef, 1), truth_big)
            ms = med[name] / len(qb) * 1e3
            res[name]["k_big"].append({"ef": ef, "recall": rc, "ms_per_query": ms})
    print_interleaved(res, k_big, rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


def print_interleaved(res: dict, k_big: int, rounds: int) -> None:
    print(f"\n## interleaved, medians of {rounds} round-robin rounds, 1 query thread")
    print("| library | build s | QPS@0.90 | QPS@0.95 | QPS@0.99 | vs hnswlib @0.95 |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = qps_at(res["hnswlib"]["curve"], 0.95) if "hnswlib" in res else None
    for name, r in res.items():
        qs = [qps_at(r["curve"], t) for t in (0.90, 0.95, 0.99)]
        cells = [f"{q:.0f}" if q else "-" for q in qs]
        ratio = f"{qs[1] / ref:.2f}x" if (qs[1] and ref) else "-"
        print(f"| {name} | {r['build_s']:.1f} | {' | '.join(cells)} | {ratio} |")
    for name, r in res.items():
        pts = ", ".join(f"ef {p['ef']}: {p['recall']:.3f} @ {p['qps']:.0f}" for p in r["curve"])
        big = ", ".join(
            f"ef {p['ef']}: r{k_big} {p['recall']:.3f} in {p['ms_per_query']:.2f} ms"
            for p in r["k_big"]
        )
        print(f"- {name}: {pts}\n  K={k_big}: {big}")


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
