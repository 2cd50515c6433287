"""Clustering scores against true labels: Hungarian accuracy, NMI, ARI, purity, silhouette."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.metrics.cluster import contingency_matrix


def match_clusters(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best one-to-one matching of clusters to classes: scipy's ``linear_sum_assignment`` on the
    contingency matrix of the non-noise points (label -1 is never matched). Returns ``(table, rows,
    cols)``: the ``(classes, clusters)`` count table and the matched row and column indices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_pred >= 0
    table = contingency_matrix(y_true[keep], y_pred[keep])
    rows, cols = linear_sum_assignment(table, maximize=True)
    return table, rows, cols


def hungarian_accuracy(y_true, y_pred) -> float:
    """Accuracy under :func:`match_clusters`; valid when the numbers differ (unmatched clusters count
    as errors). Noise (label -1) is never matched, so noise points count as errors."""
    if not (np.asarray(y_pred) >= 0).any():
        return 0.0
    table, rows, cols = match_clusters(y_true, y_pred)
    return float(table[rows, cols].sum() / len(y_true))


def purity(y_true, y_pred) -> float:
    """Fraction of points whose cluster's majority class is their class (noise counts as impure)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_pred >= 0
    if not keep.any():
        return 0.0
    return float(contingency_matrix(y_true[keep], y_pred[keep]).max(axis=0).sum() / len(y_true))


def clustering_scores(y_true, y_pred, features=None, silhouette_samples: int = 5000, seed: int = 0) -> dict:
    """Scores of a clustering ``y_pred`` (``(N,)`` ints, -1 for noise) against classes ``y_true``, or without
    them (``y_true=None``: an unlabeled dataset).

    Returns ``acc`` (Hungarian), ``nmi``, ``ari`` (scikit-learn; noise -1 is one more cluster there) and
    ``purity`` when there are classes; always ``n_clusters`` (noise excluded), ``noise_fraction``, and
    ``silhouette`` (on at most ``silhouette_samples`` points; the score that needs no labels) when ``features``
    are given and there are 2+ clusters.
    """
    y_pred = np.asarray(y_pred)
    if y_pred.ndim != 1:
        raise ValueError(f"y_pred {y_pred.shape} must be 1-D")
    n_clusters = len(np.unique(y_pred[y_pred >= 0]))
    scores = {}
    if y_true is not None:
        y_true = np.asarray(y_true)
        if y_true.shape != y_pred.shape:
            raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D and the same length")
        if (y_true < 0).any():
            raise ValueError("y_true: labels must be >= 0 (the split has unlabeled samples)")
        scores = {"acc": hungarian_accuracy(y_true, y_pred), "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
                  "ari": float(adjusted_rand_score(y_true, y_pred)), "purity": purity(y_true, y_pred)}
    scores |= {"n_clusters": n_clusters, "noise_fraction": float((y_pred < 0).mean())}
    if features is not None:
        keep = np.nonzero(y_pred >= 0)[0]
        if 2 <= n_clusters < len(keep):
            sample = min(silhouette_samples, len(keep))
            rng = np.random.default_rng(seed)
            pick = np.sort(rng.choice(keep, size=sample, replace=False))
            if len(np.unique(y_pred[pick])) >= 2:
                scores["silhouette"] = float(silhouette_score(np.asarray(features)[pick], y_pred[pick]))
    return scores
