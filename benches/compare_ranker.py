"""MlpRanker vs numpy (single-thread OpenBLAS), onnxruntime (intra_op_num_threads=1) and PyTorch
(if installed), one process, same weights, one thread each.

Network 256 -> 512 -> 256 -> 128 -> 6 tasks (ReLU, sigmoid outputs); batches 200/500/1000; plus
the per-request case where 128 of the 256 inputs are user features (our `predict_request`
computes the user part of layer 0 once; peers score the concatenated matrix, concat included).
Implementations run round-robin inside each repetition so machine noise hits all alike; the
figures are medians. Prints ms, GFLOP/s (dense-equivalent: 2 * sum(in*out) per row) and the
fraction of the core's measured FMA peak.

    python benches/compare_ranker.py [--quick] [--reps R] [--batches 200,500,1000]
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # before numpy loads BLAS: single-thread peers

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

from fyp_core import MlpRanker  # noqa: E402

DIMS = [256, 512, 256, 128, 6]
USER = 128


def make_ranker(seed: int = 0) -> MlpRanker:
    rng = np.random.default_rng(seed)
    ws = [
        (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
        for a, b in zip(DIMS, DIMS[1:])
    ]
    bs = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in DIMS[1:]]
    return MlpRanker(ws, bs, "relu", ["sigmoid"] * DIMS[-1], version="bench")


def numpy_forward(ws, bs):
    def run(x: np.ndarray) -> np.ndarray:
        h = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = h @ w
            h += b
            if i + 1 < len(ws):
                np.maximum(h, 0.0, out=h)
        return 1.0 / (1.0 + np.exp(-h))

    return run


def numpy_split(ws, bs):
    """The numpy user's best per-request path: split layer 0 by hand too."""
    rest = numpy_forward(ws[1:], bs[1:])
    w_user, w_item = ws[0][:USER], ws[0][USER:]

    def run(user: np.ndarray, items: np.ndarray) -> np.ndarray:
        h = items @ w_item
        h += user @ w_user + bs[0]
        np.maximum(h, 0.0, out=h)
        return rest(h)

    return run


def ort_session(ranker: MlpRanker):
    try:
        import onnxruntime as ort

        from fyp_core.ranker_io import to_onnx
    except ImportError:
        return None
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(
        to_onnx(ranker).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    return lambda x: sess.run(None, {"features": x})[0]


def torch_forward(ranker: MlpRanker):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(1)
    layers: list = []
    for i, (w, b) in enumerate(zip(ranker.weights(), ranker.biases())):
        lin = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()] if i + 1 < len(DIMS) - 1 else [lin, torch.nn.Sigmoid()]
    seq = torch.nn.Sequential(*layers).eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return seq(torch.from_numpy(x)).numpy()

    return run


def round_robin(
    fns: dict[str, Callable[[], object]], reps: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(median, best) seconds per implementation."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up (scratch buffers, ORT arenas)
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return (
        {k: statistics.median(v) for k, v in times.items()},
        {k: min(v) for k, v in times.items()},
    )


def check_batch(ranker: MlpRanker, live: dict[str, Callable], x: np.ndarray) -> None:
    """Every peer and the request form agree with `MlpRanker.predict` on batch `x`."""
    ref = ranker.predict(x)
    for k, f in live.items():
        got = np.asarray(f(x))
        assert np.abs(got - ref).max() <= 1e-4, f"{k} disagrees with MlpRanker"
    n, user, items = len(x), x[0, :USER].copy(), np.ascontiguousarray(x[:, USER:])
    np.testing.assert_allclose(
        ranker.predict_request(user, items),
        ranker.predict(np.hstack([np.broadcast_to(user, (n, USER)), items])),
        rtol=1e-5,
    )


def contenders(
    ranker: MlpRanker, live: dict[str, Callable], x: np.ndarray, avx2_too: bool
) -> dict[str, Callable[[], object]]:
    """The timed calls on batch `x`: dense (one row per candidate) and request forms (the
    user's features once, the items' per candidate; peers see the concatenation)."""
    n, user, items = len(x), x[0, :USER].copy(), np.ascontiguousarray(x[:, USER:])

    def concat(u=user, it=items, n=n):
        return np.hstack([np.broadcast_to(u, (n, USER)), it])

    fns: dict[str, Callable[[], object]] = {"fyp_core predict": lambda: ranker.predict(x)}
    fns.update({k: (lambda f=f: f(x)) for k, f in live.items()})
    split = numpy_split(ranker.weights(), ranker.biases())
    fns["fyp_core predict_request"] = lambda: ranker.predict_request(user, items)
    fns["numpy split layer 0 (request)"] = lambda: split(user, items)
    fns.update({f"{k} on concat (request)": (lambda f=f: f(concat())) for k, f in live.items()})
    if avx2_too:
        r2 = ranker.with_kernel("avx2")
        fns["fyp_core predict [avx2 kernel]"] = lambda: r2.predict(x)
    return fns


def print_batch(n: int, t: dict[str, float], best: dict[str, float], flops: int, peak: float):
    """One batch's table (ms, GFLOP/s, share of peak, ratio to ORT) and the targets line."""
    print(f"\nbatch {n}")
    print(
        f"  {'implementation':46s} {'ms':>8s} {'GFLOP/s':>8s} {'of peak':>8s} {'vs ORT':>7s}"
        f" {'best ms':>8s}"
    )
    ort_dense = t.get("onnxruntime (1 thread)")
    ort_req = t.get("onnxruntime (1 thread) on concat (request)")
    for k, v in t.items():
        g = flops * n / v / 1e9
        base = ort_req if "request" in k else ort_dense
        ratio = f"{base / v:6.2f}x" if base else "   n/a"
        print(f"  {k:46s} {v * 1e3:8.3f} {g:8.1f} {g / peak:8.0%} {ratio:>7s} {best[k] * 1e3:8.3f}")
    if ort_dense and ort_req:
        dense = ort_dense / t["fyp_core predict"]
        req = ort_req / t["fyp_core predict_request"]
        bd = best["onnxruntime (1 thread)"] / best["fyp_core predict"]
        br = best["onnxruntime (1 thread) on concat (request)"] / best["fyp_core predict_request"]
        print(
            f"  targets (medians): dense {dense:.2f}x ORT (>= 1.0x) | "
            f"shared-prefix {req:.2f}x ORT (>= 1.5x);  best-of: {bd:.2f}x | {br:.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--batches", default=None)
    a = ap.parse_args()
    reps = a.reps or (5 if a.quick else 40)
    default = "200,1000" if a.quick else "200,500,1000"
    batches = [int(b) for b in (a.batches or default).split(",")]

    ranker = make_ranker()
    ws, bs = ranker.weights(), ranker.biases()
    info = MlpRanker.kernel_info(measure_peak=True)
    peak = info["peak_gflops"].get(ranker.kernel, float("nan"))
    flops = ranker.flops_per_row
    peers: dict[str, Callable | None] = {
        "numpy (OpenBLAS, 1 thread)": numpy_forward(ws, bs),
        "onnxruntime (1 thread)": ort_session(ranker),
        "pytorch (1 thread)": torch_forward(ranker),
    }
    print(
        f"MLP {'-'.join(map(str, DIMS))}, {flops / 1e6:.3f} MFLOP/row, reps={reps} (median), "
        f"kernel={ranker.kernel}, measured FMA peak {peak:.1f} GFLOP/s/core "
        f"(all: {info['peak_gflops']})"
    )
    for name, f in peers.items():
        if f is None:
            print(
                f"  {name}: not installed, skipped"
                + (" (multi-GB download)" if "pytorch" in name else "")
            )
    live = {k: f for k, f in peers.items() if f is not None}
    avx2_too = not a.quick and "avx2" in info["available"] and ranker.kernel != "avx2"
    rng = np.random.default_rng(1)
    for n in batches:
        x = rng.standard_normal((n, DIMS[0])).astype(np.float32)
        check_batch(ranker, live, x)
        t, best = round_robin(contenders(ranker, live, x, avx2_too), reps)
        print_batch(n, t, best, flops, peak)


if __name__ == "__main__":
    main()
