"""The evaluation API under ``ssl-probe`` and ``ssl-cluster``: plain objects in (features, or an encoder and
datasets), plain dicts out. The command lines parse arguments and call these; so do the demo and the
scripts under eval/."""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable

import numpy as np
from tqdm.auto import tqdm

from ..data.base import label_map, renumber
from .cluster import METHODS as CLUSTER_METHODS
from .cluster import UMAP_NEIGHBORS, cluster, preprocess
from .features import extract_features
from .knn import KNNClassifier
from .metrics import clustering_scores
from .probe import LinearProbe

log = logging.getLogger("ssl_rep.eval")
# Density-based methods look for dense regions, which high-dimensional features do not have: they run on a
# PCA projection unless ``pca`` says otherwise.
DENSITY_METHODS = ("meanshift", "dbscan")
DENSITY_PCA = 10
# methods that start from a seeding and keep the best of ``n_init`` starts
RESTARTED = ("kmeans", "gmm")


def probe_features(X, y, Xt, yt, C: float | None = None, knn_k: Iterable[int] = (20, 200), device=None,
                   seed: int = 0) -> dict:
    """Linear probe (top-1, top-5, the C it chose) and kNN accuracy for each ``k``: fit on ``(X, y)``, scored
    on ``(Xt, yt)``."""
    if y is None or yt is None:
        raise ValueError(f"a probe needs labelled train and test features; the {'train' if y is None else 'test'} "
                         f"split has no labels")
    probe = LinearProbe(C=C, device=device, random_state=seed).fit(X, y)
    return {"n_train": len(X), "n_test": len(Xt), "feature_dim": int(np.shape(X)[1]),
            "top1": probe.score(Xt, yt), "top5": probe.top_k_accuracy(Xt, yt, 5), "C": probe.C_,
            "val_scores": probe.val_scores_,
            "knn": {str(k): KNNClassifier(k=k).fit(X, y).score(Xt, yt) for k in knn_k}}


DEFAULT_CLUSTERS = 10   # without labels and without n_clusters


def cluster_features(X, y=None, methods: Iterable[str] = CLUSTER_METHODS, n_clusters: int | None = None,
                     pca: int | None = None, l2: bool = False, umap: int | None = None, seed: int = 0,
                     max_samples: int | None = None, max_memory_gb: float = 4.0,
                     umap_neighbors: int = UMAP_NEIGHBORS, repeats: int = 1,
                     whiten: int | None = None, n_init: int | None = None) -> tuple[dict, dict]:
    """Cluster ``X`` with each method and score it against ``y`` when given.

    ``n_clusters`` defaults to the number of classes (else 10); ``pca`` / ``l2`` / ``whiten`` / ``umap`` prepare
    the features first (:func:`~ssl_rep.eval.cluster.preprocess`; each distinct input once: UMAP, keeping
    ``umap_neighbors`` neighbours per point, takes a minute on 70,000 points); meanshift and DBSCAN run on a 10-d
    PCA unless ``pca``, ``whiten`` or ``umap`` is given. A method that cannot run (memory, too few points) is
    reported with its error, not raised. ``n_init``: k-means' seedings and the GMM's initialisations, the best
    kept (lowest inertia, highest likelihood); default each method's own (k-means 3, GMM 1). Returns
    ``(results, labels)`` keyed by method.

    ``repeats`` > 1 runs everything again (UMAP included) with seeds ``seed + 1``, ... : UMAP's and the methods'
    starts can move ACC by several points. The results and labels stay ``seed``'s; each scored method gains
    ``over_seeds``, every score's mean, std, min, max and per-seed values (:func:`over_seeds`)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: cluster at least once")
    if pca and whiten:
        raise ValueError(f"pca={pca} and whiten={whiten} both project the features; give one of them")
    if n_init is not None and n_init < 1:
        raise ValueError(f"n_init={n_init}: start each method at least once")
    options = dict(methods=list(methods), n_clusters=n_clusters, pca=pca, l2=l2, umap=umap, max_samples=max_samples,
                   max_memory_gb=max_memory_gb, umap_neighbors=umap_neighbors, whiten=whiten, n_init=n_init)
    if y is None and not n_clusters:
        log.info("no labels: %d clusters, the default (n_clusters, ssl-cluster --n-clusters, to choose); scored by "
                 "their silhouette", DEFAULT_CLUSTERS)
    results, labels = _cluster_once(X, y, seed=seed, **options)
    if repeats > 1:   # without labels, the seeds' silhouettes
        runs = [results] + [_cluster_once(X, y, seed=seed + i, **options)[0] for i in range(1, repeats)]
        for method, r in results.items():
            if "scores" in r:
                r["over_seeds"] = over_seeds([run[method] for run in runs], list(range(seed, seed + repeats)))
    return results, labels


def over_seeds(runs: list[dict], seeds: list[int]) -> dict:
    """One method's results under several seeds -> ``{"seeds": [...], score: {mean, std, min, max, runs}}`` for
    each score the runs share (a seed whose run failed is left out, and ``seeds`` says which ran)."""
    ok = [(s, r["scores"]) for s, r in zip(seeds, runs) if "scores" in r]
    out = {"seeds": [s for s, _ in ok]}
    for key in ("acc", "nmi", "ari", "purity", "silhouette"):
        if ok and all(key in scores for _, scores in ok):
            values = np.array([scores[key] for _, scores in ok], dtype=float)
            out[key] = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                        "max": float(values.max()), "runs": values.tolist()}
    return out


def _cluster_once(X, y, methods, n_clusters, pca, l2, umap, seed, max_samples, max_memory_gb,
                  umap_neighbors, whiten, n_init) -> tuple[dict, dict]:
    n_clusters = n_clusters or (len(np.unique(y)) if y is not None else DEFAULT_CLUSTERS)
    results, labels, prepared = {}, {}, {}   # prepared: pca -> (input, seconds it took)
    bar = tqdm(methods, desc=f"clustering (seed {seed})", unit="method", leave=False,
               disable=len(methods) < 2 or not sys.stderr.isatty())
    for method in bar:
        bar.set_postfix_str(method + (" (UMAP first)" if umap and not prepared else ""))
        use_pca = pca if pca is not None else (DENSITY_PCA if method in DENSITY_METHODS and not (umap or whiten)
                                                    else None)
        restarts = {"n_init": n_init} if n_init and method in RESTARTED else {}
        params = {"l2_normalize": l2, "pca": use_pca, "umap": umap, **({"whiten": whiten} if whiten else {}),
                  **({"umap_neighbors": umap_neighbors} if umap else {}), **restarts}
        try:
            if use_pca not in prepared:
                start = time.time()
                prepared[use_pca] = preprocess(X, l2_normalize=l2, pca=use_pca, umap=umap, seed=seed,
                                               umap_neighbors=umap_neighbors, whiten=whiten), time.time() - start
                if umap:
                    log.info("UMAP to %d dimensions%s (%.1fs)", umap, f" after PCA {use_pca}" if use_pca else "",
                             prepared[use_pca][1])
            Z, prepare_seconds = prepared[use_pca]
            start = time.time()
            pred = cluster(Z, method, n_clusters=n_clusters, seed=seed, max_samples=max_samples,
                           max_memory_gb=max_memory_gb, **restarts)
        except (MemoryError, ValueError) as exc:
            results[method] = {"params": params, "error": str(exc)}
            log.warning("%s skipped: %s", method, exc)
            continue
        scores = clustering_scores(y, pred, X, seed=seed)   # without labels: silhouette, the score left
        results[method] = {"params": {**params, "n_clusters": n_clusters}, "scores": scores,
                           "seconds": time.time() - start, "preprocess_seconds": prepare_seconds}
        labels[method] = pred
    return results, labels


def probe_encoder(encoder, train, test, batch_size: int = 256, device=None, **probe_options) -> dict:
    """:func:`probe_features` on ``encoder``'s features of the ``train`` and ``test`` datasets (``test``'s labels
    counted in ``train``'s classes where both name theirs: :func:`~ssl_rep.data.base.label_map`)."""
    mapping = label_map(getattr(test, "classes", None), getattr(train, "classes", None), getattr(test, "name", "test"))
    X, y = extract_features(encoder, train, batch_size=batch_size, device=device)
    Xt, yt = extract_features(encoder, test, batch_size=batch_size, device=device)
    yt = renumber(yt, mapping)
    return probe_features(np.asarray(X), y, np.asarray(Xt), yt, device=device, **probe_options)


def cluster_encoder(encoder, dataset, batch_size: int = 256, device=None, **cluster_options) -> tuple[dict, dict]:
    """:func:`cluster_features` on ``encoder``'s features of ``dataset`` (labels, where it has them, score it)."""
    X, y = extract_features(encoder, dataset, batch_size=batch_size, device=device)
    return cluster_features(np.asarray(X), y, **cluster_options)
