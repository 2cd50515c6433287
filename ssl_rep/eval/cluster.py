"""Clustering of frozen features: k-means (torch k-means++ seeding, faiss or torch Lloyd), mean-shift, DBSCAN, GMM, agglomerative (scikit-learn).

``cluster(features, method, **params) -> labels`` (``(N,)`` int64, noise = -1). Before an O(n^2)
method runs, its memory is estimated and a run above ``max_memory_gb`` is refused with the estimate
and the ways out (``max_samples``, a connectivity graph, k-means).
"""
from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from .checks import check_features
from .kmeans import kmeans
from .knn import unit_rows

log = logging.getLogger(__name__)
METHODS = ("kmeans", "meanshift", "dbscan", "gmm", "agglomerative")
UMAP_NEIGHBORS = 15   # UMAP's own default


class ClusteringTooLargeError(MemoryError):
    """An O(n^2) clustering that would not fit; the message holds the estimate and the options."""


def umap_embed(X, n_components: int, seed: int = 0, **options) -> np.ndarray:
    """UMAP (umap-learn) seeded with ``random_state=seed``: reproducible, hence single-threaded.

    Its numba kernels run on at most torch's threads, and torch keeps its thread count afterwards: numba's OpenMP
    layer shares torch's libgomp and would otherwise leave it at numba's count (every core), so a process held to
    fewer threads (pytest-xdist workers, ``torch.set_num_threads``) would run every later torch op oversubscribed."""
    try:
        import numba
        import umap as umap_lib
    except ImportError as exc:
        raise ImportError("UMAP needs the umap-learn package: pip install umap-learn") from exc
    threads = torch.get_num_threads()
    try:
        numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
        with warnings.catch_warnings():   # "n_jobs value 1 overridden to 1 by setting random_state": intended
            warnings.filterwarnings("ignore", message=".*n_jobs value.*", category=UserWarning)
            return umap_lib.UMAP(n_components=n_components, random_state=seed, **options).fit_transform(X)
    finally:
        torch.set_num_threads(threads)


def preprocess(X, l2_normalize: bool = False, pca: int | None = None, umap: int | None = None, seed: int = 0,
               umap_neighbors: int = UMAP_NEIGHBORS, whiten: int | None = None):
    """Optional L2 normalisation, PCA to ``pca`` dimensions or whitening to ``whiten`` (:func:`whiten_features`),
    then UMAP to ``umap`` dimensions.

    UMAP runs with ``min_dist=0`` (packed clusters: the setting UMAP's docs and N2D use for clustering
    rather than for plotting); what it does for k-means on SSL features is measured in eval/RESULTS.md
    ("k-means with UMAP")."""
    X = np.asarray(X, dtype=np.float32)
    if pca and whiten:
        raise ValueError(f"pca={pca} and whiten={whiten} both project the features; give one of them")
    if l2_normalize:
        X = unit_rows(X)
    if pca and pca < X.shape[1]:
        from sklearn.decomposition import PCA
        X = PCA(n_components=pca, random_state=seed).fit_transform(X).astype(np.float32)
    if whiten:
        X = whiten_features(X, whiten, seed=seed)
    if umap:
        if umap > X.shape[1]:   # as many is fine: N2D maps a 10-value code to 10 dimensions
            raise ValueError(f"umap={umap} must be at most the features' {X.shape[1]} dimensions")
        if len(X) <= umap_neighbors:
            raise ValueError(f"umap needs more points than umap_neighbors={umap_neighbors}, got {len(X)}")
        X = umap_embed(X, umap, seed, n_neighbors=umap_neighbors, min_dist=0.0).astype(np.float32)
    return X


def whiten_features(X, dims: int, seed: int = 0) -> np.ndarray:
    """Each feature standardised, PCA of the result to ``dims`` components scaled to unit variance (whitened), each
    row then L2-normalised: ``(N, dims)`` float32.

    The PCA-whitening that image retrieval applies to pooled descriptors (Jegou & Chum, ECCV 2012) before cosine
    distances. A pooled feature whose variance sits in a few directions (CPC's mean of patch vectors) clusters
    on those directions alone; whitened, every kept direction counts alike (eval/RESULTS.md, "k-means: which
    feature space (fashion-mnist, CPC v2, test split)"). Keep ``dims`` small: whitened, the near-constant
    directions weigh as much as the rest."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float32)
    if not 1 <= dims <= min(X.shape):
        raise ValueError(f"whiten={dims} must be between 1 and min(points, features) = {min(X.shape)}")
    Z = PCA(n_components=dims, whiten=True, random_state=seed).fit_transform(StandardScaler().fit_transform(X))
    return unit_rows(Z.astype(np.float32))


def knee_eps(X, min_samples: int) -> float:
    """DBSCAN radius at the knee of the sorted k-distance curve (k = ``min_samples``): the point
    farthest from the straight line between the curve's ends (Kneedle-style)."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(X).kneighbors(X)
    curve = np.sort(dist[:, -1])
    x = np.linspace(0, 1, len(curve))
    span = curve[-1] - curve[0]
    y = (curve - curve[0]) / span if span > 0 else np.zeros_like(curve)
    knee = int(np.argmax(x - y))  # distance below the chord of a convex increasing curve
    return float(max(curve[knee], 1e-8))


def kdistance_quantile(X, min_samples: int, quantile: float) -> float:
    """DBSCAN radius as a quantile of the k-distances: ``quantile=0.5`` makes about half the points core
    points (useful when classes touch and the knee sits at the noise threshold)."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=min_samples).fit(X).kneighbors(X)
    return float(max(np.quantile(dist[:, -1], quantile), 1e-8))


def estimate_memory_gb(method: str, n: int, d: int, params: dict) -> float:
    """Rough peak memory of one run, in GB (the O(n^2) parts dominate)."""
    if method == "agglomerative" and params.get("connectivity") is None:
        return n * (n - 1) / 2 * 8 * 2 / 1e9        # condensed distances + linkage work
    if method == "dbscan" and d > 15:
        return n * n * 8 / 1e9                       # brute-force neighbourhoods, worst case
    if method == "meanshift":
        return n * n * 8 / 1e9 / 4                   # radius queries over all seeds
    if method == "gmm":
        k = params.get("n_clusters", 10)
        return (n * k + k * d * d) * 8 * 4 / 1e9
    return n * d * 4 * 3 / 1e9


def _run(X, method: str, n_clusters: int | None, seed: int, params: dict) -> np.ndarray:
    from sklearn import cluster as skc
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        return kmeans(X, n_clusters or 10, seed=seed, **params)[0]
    if method == "meanshift":
        bandwidth = params.pop("bandwidth", None)
        if bandwidth is None:
            # estimate_bandwidth's own default quantile (0.3) merges neighbouring classes into one
            # mode; 0.05 (the mean distance to the nearest 5% of points) keeps them apart.
            bandwidth = skc.estimate_bandwidth(X, quantile=params.pop("quantile", 0.05), n_samples=min(len(X), 2000),
                                               random_state=seed)
        # Grid (bin) seeding only works in a few dimensions; above that, seed from a random sample of points.
        bin_seeding = params.pop("bin_seeding", X.shape[1] <= 8)
        seeds = params.pop("seeds", None)
        if seeds is None and not bin_seeding:
            rng = np.random.default_rng(seed)
            seeds = X[rng.choice(len(X), min(len(X), params.pop("n_seeds", 500)), replace=False)]
        return skc.MeanShift(bandwidth=bandwidth, bin_seeding=bin_seeding, seeds=seeds, **params).fit_predict(X)
    if method == "dbscan":
        min_samples = params.pop("min_samples", 10)
        eps, quantile = params.pop("eps", None), params.pop("eps_quantile", None)
        fit = lambda radius: skc.DBSCAN(eps=radius, min_samples=min_samples, **params).fit_predict(X)  # noqa: E731
        if eps is not None or quantile is not None:
            return fit(eps if eps is not None else kdistance_quantile(X, min_samples, quantile))
        labels = fit(knee_eps(X, min_samples))
        found = len(set(labels.tolist()) - {-1})
        if found < 2:
            # Where classes touch, the knee sits at the noise threshold and joins everything into one cluster
            # (SSL features and pixels of digits and Fashion-MNIST alike); the median k-distance, which makes about
            # half the points core points, separates them.
            median = kdistance_quantile(X, min_samples, 0.5)
            log.info("dbscan: the k-distance knee gave %d cluster(s); eps from the median k-distance instead (%.4g)",
                     found, median)
            labels = fit(median)
        return labels
    if method == "gmm":
        gmm = GaussianMixture(n_components=n_clusters or 10, covariance_type=params.pop("covariance_type", "full"),
                              random_state=seed, reg_covar=params.pop("reg_covar", 1e-4), **params)
        return gmm.fit(X).predict(X)
    if method == "agglomerative":
        connectivity = params.pop("connectivity", None)
        if isinstance(connectivity, int):
            from sklearn.neighbors import kneighbors_graph
            connectivity = kneighbors_graph(X, connectivity, include_self=False)
        return skc.AgglomerativeClustering(n_clusters=n_clusters or 10, linkage=params.pop("linkage", "ward"),
                                           connectivity=connectivity, **params).fit_predict(X)
    raise ValueError(f"unknown clustering method {method!r}; valid: {', '.join(METHODS)}")


def cluster(features, method: str = "kmeans", n_clusters: int | None = None, seed: int = 0,
            max_samples: int | None = None, max_memory_gb: float = 4.0, **params) -> np.ndarray:
    """Cluster ``features`` ``(N, D)``; returns labels ``(N,)`` (-1 = noise, DBSCAN only).

    ``n_clusters`` is used by kmeans, gmm and agglomerative (default 10); mean-shift and DBSCAN find
    their own number. ``max_samples``: fit on a random subsample of that size and give every other
    point the label of its nearest subsample point (k-means: of its nearest centroid); the features
    are then read in chunks, so a memory-mapped store of any size never becomes one float32 array. Method options pass through ``params``:
    kmeans ``n_init``, ``n_iter``, ``init``; meanshift ``bandwidth`` (default: ``estimate_bandwidth``
    with ``quantile``, 0.05); dbscan ``eps`` (default: the k-distance knee, or the median k-distance where the
    knee leaves fewer than two clusters; or ``eps_quantile`` of the k-distances), ``min_samples`` (10); gmm
    ``covariance_type``, ``n_init`` (initialisations, the most likely kept; 1); agglomerative ``linkage`` (ward,
    average, complete, single), ``connectivity`` (an int k for a kNN graph).
    """
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; valid: {', '.join(METHODS)}")
    X = check_features(features, "features", min_rows=2)   # a memmap stays on disk until rows are needed
    if n_clusters is not None and n_clusters > len(X):
        raise ValueError(f"{method}: n_clusters={n_clusters} is more than the {len(X)} points")
    for name, value in (("n_clusters", n_clusters), ("max_samples", max_samples)):
        if value is not None and value < 1:   # 0 would read as "not given"
            raise ValueError(f"{method}: {name}={value}; give at least 1 (or None for the default)")
    n = min(len(X), max_samples) if max_samples else len(X)
    needed = estimate_memory_gb(method, n, X.shape[1], {"n_clusters": n_clusters or 10, **params})
    if method in ("meanshift", "dbscan", "agglomerative") and needed > max_memory_gb:
        raise ClusteringTooLargeError(
            f"{method} on {n} points x {X.shape[1]} dims needs about {needed:.3g} GB (O(n^2)), over the "
            f"{max_memory_gb:g} GB limit. Options: max_samples=<m> (--max-samples) to cluster a subsample and "
            f"assign the rest to the nearest; connectivity=<k> for agglomerative; or kmeans, which is O(n k)")
    if n < len(X):
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(X), n, replace=False))
        sub = np.ascontiguousarray(X[pick], dtype=np.float32)
        sub_labels = np.asarray(_run(sub, method, n_clusters, seed, dict(params)), dtype=np.int64)
        import faiss

        index = faiss.IndexFlatL2(X.shape[1])
        if method == "kmeans":   # every point joins its nearest centroid, as the subsample's points did
            lookup = np.unique(sub_labels)
            index.add(np.stack([sub[sub_labels == c].mean(0) for c in lookup]))
        else:                    # every point takes the label of its nearest subsample point
            index.add(sub)
            lookup = sub_labels
        labels = np.empty(len(X), np.int64)
        for start in range(0, len(X), 65536):   # in chunks: the full set is never one float32 array
            _, nearest = index.search(np.ascontiguousarray(X[start:start + 65536], dtype=np.float32), 1)
            labels[start:start + 65536] = lookup[nearest.ravel()]
        return labels
    return np.asarray(_run(np.ascontiguousarray(X, dtype=np.float32), method, n_clusters, seed, dict(params)),
                      dtype=np.int64)
