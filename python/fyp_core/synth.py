"""A deterministic synthetic world for the demo, the benchmarks and the end-to-end tests.

Items live in a 64-d embedding space around ~50 topic centroids with a long-tailed topic size
distribution; creators have a home topic and Zipf-distributed productivity; uploads spread over
the last 30 days. Users have latent tastes (a mix of 1-3 topics); the ground-truth engagement
model (what a user would do if shown an item) depends on taste-item affinity, item quality and
the slot's position. Everything is vectorised numpy and a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

__all__ = ["DAY", "TASKS", "World", "demo_ranker_weights", "make_world"]

DAY = 86_400.0
TASKS = ("finish", "like", "share", "follow", "comment", "watch_seconds")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _zipf_probs(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return w / w.sum()


@dataclass
class World:
    """Catalogue, users and the ground truth. Arrays are row-aligned per item / per user."""

    dim: int
    now: float
    item_ids: np.ndarray  # uint64
    item_emb: np.ndarray  # float32 (n_items, dim), unit rows
    item_topic: np.ndarray  # int32
    item_creator: np.ndarray  # uint64
    item_category: np.ndarray  # int32 (0 = none, 1 = sensitive: capped by policy)
    item_upload_ts: np.ndarray  # float64 seconds
    item_quality: np.ndarray  # float32, ground truth
    item_duration: np.ndarray  # float32 seconds
    topic_centroids: np.ndarray  # float32 (n_topics, dim)
    user_ids: list[str]
    user_taste: np.ndarray  # float32 (n_users, dim), unit rows, ground truth
    user_long_term: np.ndarray  # float32: the two-tower estimate of the taste (noisy)
    user_has_long_term: np.ndarray  # bool: False for brand-new users (cold start)
    seed: int
    # growth buffers behind the item_* arrays, so uploads append in amortised O(1)
    _bufs: Optional[dict] = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def new_items(self, n: int, now: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Fresh uploads drawn from the same generative model, with ids after the catalogue's."""
        start = int(self.item_ids[-1]) + 1 if self.n_items else 1  # ids ascend
        ids = np.arange(start, start + n, dtype=np.uint64)
        topic = rng.choice(
            len(self.topic_centroids), size=n, p=_zipf_probs(len(self.topic_centroids), 1.1)
        )
        emb = _unit_rows(
            self.topic_centroids[topic]
            + 0.55 * rng.standard_normal((n, self.dim)) / np.sqrt(self.dim) * 4
        )
        creator = rng.integers(0, 50_000, size=n).astype(np.uint64)
        cat = (rng.random(n) < 0.03).astype(np.int32)
        ts = np.full(n, now)
        self._append(
            {
                "item_ids": ids,
                "item_emb": emb,
                "item_topic": topic.astype(np.int32),
                "item_creator": creator,
                "item_category": cat,
                "item_upload_ts": ts,
                "item_quality": rng.normal(0.0, 0.5, size=n).astype(np.float32),
                "item_duration": rng.uniform(8, 60, size=n).astype(np.float32),
            }
        )
        return {
            "ids": ids,
            "emb": emb,
            "topic": topic.astype(np.int32),
            "creator": creator,
            "category": cat,
            "upload_ts": ts,
        }

    def _append(self, cols: dict[str, np.ndarray]) -> None:
        n0, k = self.n_items, len(cols["item_ids"])
        if self._bufs is None or len(self._bufs["item_ids"]) < n0 + k:
            cap = n0 + k + max(n0 // 8, 1024)
            bufs = {}
            for name in cols:
                cur = getattr(self, name)
                b = np.empty((cap, *cur.shape[1:]), dtype=cur.dtype)
                b[:n0] = cur
                bufs[name] = b
            self._bufs = bufs
        for name, v in cols.items():
            self._bufs[name][n0 : n0 + k] = v
            setattr(self, name, self._bufs[name][: n0 + k])

    def engagement(
        self,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        positions: np.ndarray,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        """Samples what users do with shown items (ground truth), vectorised over impressions."""
        aff = np.einsum("ij,ij->i", self.user_taste[user_rows], self.item_emb[item_rows])
        q = self.item_quality[item_rows]
        pos_bias = 1.0 / (1.0 + 0.05 * positions)
        logit = 5.0 * aff + q - 1.5
        p_finish = pos_bias / (1.0 + np.exp(-logit))
        completed = rng.random(len(aff)) < p_finish
        frac = np.where(completed, 1.0, rng.beta(1.2, 4.0, size=len(aff)) * (0.5 + 0.5 * p_finish))
        watched = (frac * self.item_duration[item_rows]).astype(np.float32)
        liked = rng.random(len(aff)) < p_finish / (1.0 + np.exp(-(logit - 1.5)))
        shared = rng.random(len(aff)) < 0.15 * p_finish * liked
        followed = rng.random(len(aff)) < 0.05 * p_finish
        return {
            "completed": completed,
            "liked": liked,
            "shared": shared,
            "followed": followed,
            "watched_seconds": watched,
            "affinity": aff.astype(np.float32),
        }


def make_world(
    n_items: int = 1_000_000,
    n_users: int = 100_000,
    dim: int = 64,
    n_topics: int = 50,
    n_creators: int = 50_000,
    days: float = 30.0,
    now: float = 1.8e9,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
) -> World:
    """Builds the world deterministically from `seed` (about 2 s for 1M items). `progress`, if
    given, is called with the work done so far out of ``n_items + n_users`` (items as their
    embeddings are drawn, then the users)."""
    if n_items <= 0 or n_users <= 0 or dim <= 0 or n_topics <= 0 or n_creators <= 0:
        raise ValueError("n_items, n_users, dim, n_topics and n_creators must all be > 0")
    rng = np.random.default_rng(seed)
    centroids = _unit_rows(rng.standard_normal((n_topics, dim)))
    # creators: Zipf productivity, a home topic each (topics themselves long-tailed)
    topic_p = _zipf_probs(n_topics, 1.1)
    creator_home = rng.choice(n_topics, size=n_creators, p=topic_p)
    creator = rng.choice(n_creators, size=n_items, p=_zipf_probs(n_creators, 0.9))
    topic = np.where(
        rng.random(n_items) < 0.8,
        creator_home[creator],
        rng.choice(n_topics, size=n_items, p=topic_p),
    )
    emb = np.empty((n_items, dim), dtype=np.float32)
    chunk = 200_000
    for s in range(0, n_items, chunk):  # chunked to bound peak memory, not a per-item loop
        e = slice(s, min(s + chunk, n_items))
        noise = rng.standard_normal((e.stop - e.start, dim)).astype(np.float32) * (
            2.2 / np.sqrt(dim)
        )
        emb[e] = _unit_rows(centroids[topic[e]] + noise)
        if progress is not None:
            progress(e.stop)
    users_topics = rng.choice(n_topics, size=(n_users, 3), p=topic_p)
    mix = rng.dirichlet([1.0, 0.5, 0.25], size=n_users).astype(np.float32)
    taste = _unit_rows(
        np.einsum("uk,ukd->ud", mix, centroids[users_topics])
        + 0.3 * rng.standard_normal((n_users, dim)).astype(np.float32) / np.sqrt(dim)
    )
    long_term = _unit_rows(
        taste + 0.6 * rng.standard_normal((n_users, dim)).astype(np.float32) / np.sqrt(dim)
    )
    if progress is not None:
        progress(n_items + n_users)
    return World(
        dim=dim,
        now=now,
        item_ids=np.arange(1, n_items + 1, dtype=np.uint64),
        item_emb=emb,
        item_topic=topic.astype(np.int32),
        item_creator=creator.astype(np.uint64),
        item_category=(rng.random(n_items) < 0.03).astype(np.int32),
        item_upload_ts=now - rng.uniform(0, days * DAY, size=n_items),
        item_quality=rng.normal(0.0, 0.5, size=n_items).astype(np.float32),
        item_duration=rng.uniform(8, 60, size=n_items).astype(np.float32),
        topic_centroids=centroids,
        user_ids=[f"user-{i}" for i in range(n_users)],
        user_taste=taste,
        user_long_term=long_term,
        user_has_long_term=rng.random(n_users) >= 0.1,
        seed=seed,
    )


def demo_ranker_weights(
    dim: int, hidden: tuple[int, ...] = (512, 256, 128), seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Weights of a multi-task MLP over the pipeline's features (see ``serve/features.rs``) that
    ranks the synthetic world sensibly without a training run.

    The first hidden layer carries the two-tower cross (sum of the ``user ⊙ item`` block, i.e. the
    dot product) in two units, relu(+dot) and relu(-dot), and the items' smoothed completion and
    like rates in two more; the next layers pass those four units through; every other weight is
    small random noise (so the network costs what a real one costs). Output tasks follow
    ``TASKS``: sigmoids for the probabilities, softplus for watch seconds.
    """
    from fyp_core._core import feature_columns

    rng = np.random.default_rng(seed)
    names = [c[0] for c in feature_columns(dim)]
    user_w = sum(1 for n in names if n.startswith("u_"))
    d_in = len(names)
    sizes = (d_in, *hidden, len(TASKS))
    weights = [
        (rng.standard_normal((a, b)) * (0.02 / np.sqrt(a))).astype(np.float32)
        for a, b in zip(sizes[:-1], sizes[1:])
    ]
    biases = [np.zeros(b, dtype=np.float32) for b in sizes[1:]]
    cross = slice(user_w + dim, user_w + 2 * dim)
    w0 = weights[0]
    w0[:, :4] = 0.0
    w0[cross, 0] = 1.0  # relu(dot)
    w0[cross, 1] = -1.0  # relu(-dot)
    w0[names.index("i_compl_rate_l"), 2] = 1.0  # long-window completion rate (>= 0)
    w0[names.index("i_like_rate_l"), 3] = 1.0  # long-window like rate (>= 0)
    for w in weights[1:-1]:
        w[:4, :] = 0.0
        w[:, :4] = 0.0
        w[np.arange(4), np.arange(4)] = 1.0
    out = weights[-1]
    out[:4, :] = 0.0
    dot_gain = np.array([5.0, 5.0, 4.0, 3.0, 4.0, 2.0], dtype=np.float32)
    out[0, :] = dot_gain
    out[1, :] = -dot_gain
    out[2, 0] = 2.0
    out[3, 1] = 2.0
    biases[-1][:] = np.array([-1.5, -3.0, -5.0, -4.5, -4.0, 2.5], dtype=np.float32)
    outputs = ["sigmoid"] * (len(TASKS) - 1) + ["softplus"]
    return weights, biases, outputs
