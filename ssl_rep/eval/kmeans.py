"""k-means: greedy k-means++ seeding in torch, then Lloyd's iterations until the inertia stops falling.

Lloyd runs in faiss on CPUs and on the GPUs faiss has kernels for; where torch sees a GPU that faiss cannot use
(the community faiss wheels have no Hopper kernels), it runs in torch on that GPU, in row chunks that fit its
memory. The seeding is scikit-learn's algorithm (Arthur & Vassilvitskii 2007 with ``2 + ln k`` local trials per
centre, as ``sklearn.cluster.kmeans_plusplus``) as float32 matrix products on the same device.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

# Lloyd stops when one iteration lowers the inertia by less than this fraction of it
TOL = 1e-4
# faiss runs Lloyd in blocks of this many iterations between convergence checks
FAISS_BLOCK = 5


def _read_only(X: np.ndarray) -> torch.Tensor:
    """``X`` as a tensor without a copy; the points are only read, so a read-only array (cached features, a memmap)
    is fine, and torch's warning about writing to one does not apply."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


def _rows(n: int, k: int, budget_bytes: float) -> int:
    """Rows per chunk so that a chunk's ``(rows, k)`` distance matrix (and its temporaries) fit ``budget_bytes``."""
    return int(max(1024, min(n, budget_bytes // (4 * 4 * max(k, 1)))))


def kmeans_plusplus(X: torch.Tensor, n_clusters: int, seed: int = 0, n_local_trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ centres ``(n_clusters, D)`` of ``X`` ``(N, D)`` (float32, on ``X``'s device).

    Each new centre is the best of ``n_local_trials`` candidates drawn with probability proportional to the
    squared distance to the nearest centre so far: the one that lowers the total most."""
    n = len(X)
    trials = n_local_trials or 2 + int(math.log(n_clusters))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    sq = (X * X).sum(1)

    def sq_dist(rows: torch.Tensor) -> torch.Tensor:
        # (N, len(rows)) squared distances of every point to X[rows]; X @ X[rows].T, the tall-times-thin product,
        # reads X once (the thin-times-wide X[rows] @ X.T was 3x slower on the CPU)
        return torch.addmm(sq[None, rows], X, X[rows].T, alpha=-2).add_(sq[:, None]).clamp_(min=0)

    first = torch.randint(n, (1,), generator=gen).to(X.device)
    chosen = [first]
    closest = sq_dist(first)[:, 0]
    for _ in range(1, n_clusters):
        cumulative = closest.double().cumsum(0)
        draws = torch.rand(trials, generator=gen, dtype=torch.float64).to(X.device) * cumulative[-1]
        candidates = torch.searchsorted(cumulative, draws).clamp_(max=n - 1)
        with_each = torch.minimum(closest[:, None], sq_dist(candidates))
        best = with_each.double().sum(0).argmin()
        closest = with_each[:, best].contiguous()
        chosen.append(candidates[best:best + 1])
    return X[torch.cat(chosen)].clone()


def _assign(X: torch.Tensor, centers: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every row and its squared distance, ``rows`` rows at a time."""
    c_sq = (centers * centers).sum(1)
    labels = torch.empty(len(X), dtype=torch.long, device=X.device)
    dist = torch.empty(len(X), dtype=torch.float64, device=X.device)
    for start in range(0, len(X), rows):
        x = X[start:start + rows]
        d = torch.addmm(c_sq[None, :], x, centers.T, alpha=-2)   # |c|^2 - 2 x.c: the argmin of |x - c|^2
        best, idx = d.min(1)
        labels[start:start + rows] = idx
        dist[start:start + rows] = (best + (x * x).sum(1)).clamp_(min=0)
    return labels, dist


def lloyd_torch(X: torch.Tensor, centers: torch.Tensor, n_iter: int, tol: float = TOL,
                rows: int | None = None) -> tuple[torch.Tensor, float, torch.Tensor, bool]:
    """Lloyd's iterations in torch from ``centers``: at most ``n_iter``, stopping once an iteration lowers the
    inertia by less than ``tol`` of it (``tol=0``: all of them). A centre that loses every point stays where it
    was. Returns ``(labels, inertia, centers, converged)``; labels and inertia are those of the final centres."""
    rows = rows or _rows(len(X), len(centers), 256e6)
    centers, previous, converged = centers.clone(), math.inf, False
    k = len(centers)
    for _ in range(n_iter):
        labels, dist = _assign(X, centers, rows)
        inertia = float(dist.sum())
        if previous - inertia < tol * inertia:   # no real progress: the centres are (nearly) the means already
            converged = True
            break
        previous = inertia
        sums = torch.zeros_like(centers).index_add_(0, labels, X)
        counts = torch.bincount(labels, minlength=k).to(X.dtype)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    labels, dist = _assign(X, centers, rows)
    return labels, float(dist.sum()), centers, converged


def lloyd_faiss(X: np.ndarray, centers: np.ndarray, n_iter: int, tol: float = TOL,
                gpu: bool = False) -> tuple[np.ndarray, float, np.ndarray, bool]:
    """:func:`lloyd_torch` in faiss (its BLAS on CPUs, or its GPU index), checked for convergence every
    ``FAISS_BLOCK`` iterations. Returns ``(labels, inertia, centers, converged)``."""
    import faiss

    n, d = X.shape
    k, done, converged = len(centers), 0, False
    while done < n_iter and not converged:
        block = min(FAISS_BLOCK, n_iter - done)
        km = faiss.Kmeans(d, k, niter=block, gpu=gpu, verbose=False, max_points_per_centroid=n // k + 1,
                          min_points_per_centroid=1, seed=0)
        km.train(X, init_centroids=np.ascontiguousarray(centers, dtype=np.float32))
        centers, done = km.centroids, done + block
        objective = km.obj   # the inertia before each iteration's update
        converged = len(objective) > 1 and objective[-2] - objective[-1] < tol * objective[-1]
    index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(centers, dtype=np.float32))
    dist, labels = index.search(X, 1)
    return labels.ravel().astype(np.int64), float(dist.astype(np.float64).sum()), centers, converged


def lloyd_device(use_gpu: bool | None) -> str:
    """Where Lloyd runs: ``faiss-gpu`` where faiss has a GPU, ``torch-cuda`` where only torch has one (a card
    faiss's wheel has no kernels for), else ``faiss-cpu``; ``use_gpu=False`` keeps it on the CPU."""
    import faiss

    if use_gpu is False:
        return "faiss-cpu"
    if faiss.get_num_gpus() > 0:
        return "faiss-gpu"
    return "torch-cuda" if torch.cuda.is_available() else "faiss-cpu"


def seed_sample_size(n: int, n_clusters: int, init_samples: int | None) -> int:
    """How many points each restart is seeded from and screened on: ``init_samples``, by default
    ``max(10_000, 20 * n_clusters)`` (seeding reads every point once per centre, so it costs as much as
    ``n_clusters`` Lloyd iterations on its sample), never more than ``n``."""
    return min(n, init_samples or max(10_000, 20 * n_clusters))


def kmeans(X, n_clusters: int, n_init: int = 3, n_iter: int = 100, seed: int = 0, init: str = "k-means++",
           use_gpu: bool | None = None, init_samples: int | None = None, tol: float = TOL) -> tuple[np.ndarray, float]:
    """k-means of ``X`` ``(N, D)``, ``n_init`` restarts screened cheaply: each restart is seeded (k-means++ on a
    sample of :func:`seed_sample_size` points; ``init="random"``: distinct random points) and run for a first
    block of Lloyd iterations on that sample; the restart with the lowest inertia there then runs on all points,
    up to ``n_iter`` iterations in all, until an iteration lowers the inertia by less than ``tol`` of itself.
    Where the sample is every point, screening is on every point.

    Returns ``(labels, inertia)``: int64 ``(N,)`` and the sum of squared distances to the centres."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n, _ = X.shape
    if n_clusters > n:
        raise ValueError(f"kmeans: n_clusters={n_clusters} is more than the {n} points")
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans init must be 'k-means++' or 'random', got {init!r}")
    where = lloyd_device(use_gpu)
    device = torch.device("cuda" if where != "faiss-cpu" else "cpu")
    data = _read_only(X).to(device) if where == "torch-cuda" else None

    def lloyd(points: np.ndarray, on_device: torch.Tensor | None, centers: torch.Tensor, iterations: int):
        if where == "torch-cuda":
            labels, inertia, centers, converged = lloyd_torch(on_device, centers, iterations, tol)
            return labels.cpu().numpy(), inertia, centers, converged
        labels, inertia, centers, converged = lloyd_faiss(points, centers.cpu().numpy(), iterations, tol,
                                                          gpu=where == "faiss-gpu")
        return labels, inertia, torch.from_numpy(centers).to(device), converged

    rng = np.random.default_rng(seed)
    m = seed_sample_size(n, n_clusters, init_samples)
    screen = min(FAISS_BLOCK, n_iter)
    best = None   # (labels, inertia, centers, converged) of the best restart after its first block
    # the sample is every point: one tensor of them for every restart (on a GPU, one upload), no copy on the CPU
    whole = (data if data is not None else _read_only(X).to(device)) if m >= n else None
    for restart in range(n_init):
        # screening on the sample, not on every point: on 60,000 x 50 with k = 10 it was 3/4 of the time
        if m < n:
            pick = np.sort(rng.choice(n, m, replace=False))
            points = X[pick]
            sample = torch.from_numpy(points).to(device) if data is None else data[torch.from_numpy(pick).to(device)]
        else:
            points, sample = X, whole
        if init == "k-means++":
            centers = kmeans_plusplus(sample, n_clusters, seed=seed + restart)
        else:
            centers = sample[torch.from_numpy(rng.choice(m, n_clusters, replace=False)).to(device)].clone()
        run = lloyd(points, sample, centers, screen)
        if best is None or run[1] < best[1]:
            best = run
    labels, inertia, centers, converged = best
    if m < n or (not converged and n_iter > screen):   # the best restart runs on, on every point
        labels, inertia, _, _ = lloyd(X, data, centers, n_iter - screen)
    return labels, inertia
