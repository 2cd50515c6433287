import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from ssl_rep.eval import ClusteringTooLargeError, KNNClassifier, cluster, clustering_scores, preprocess
from ssl_rep.eval.cluster import kmeans, knee_eps, whiten_features


def brute_force_acc(y_true, y_pred):
    """Best accuracy over every injective map of clusters to classes (unmapped clusters are errors)."""
    clusters, classes = np.unique(y_pred), np.unique(y_true)
    best = 0
    for perm in itertools.permutations(classes, min(len(clusters), len(classes))):
        for chosen in itertools.combinations(clusters, len(perm)):
            mapping = dict(zip(chosen, perm))
            hits = sum(mapping.get(p) == t for p, t in zip(y_pred, y_true))
            best = max(best, hits)
    return best / len(y_true)


def naive_purity(y_true, y_pred):
    return sum(np.bincount(y_true[y_pred == c]).max() for c in np.unique(y_pred)) / len(y_true)


@pytest.mark.parametrize("n_classes,n_clusters", [(3, 3), (4, 3), (3, 5)])
def test_scores_match_sklearn_and_brute_force(n_classes, n_clusters):
    rng = np.random.default_rng(n_classes * 10 + n_clusters)
    for _ in range(5):
        y_true = rng.integers(0, n_classes, 14)
        y_pred = rng.integers(0, n_clusters, 14)
        s = clustering_scores(y_true, y_pred)
        assert s["acc"] == pytest.approx(brute_force_acc(y_true, y_pred))
        assert s["nmi"] == pytest.approx(normalized_mutual_info_score(y_true, y_pred))
        assert s["ari"] == pytest.approx(adjusted_rand_score(y_true, y_pred))
        assert s["purity"] == pytest.approx(naive_purity(y_true, y_pred))
        assert s["n_clusters"] == len(np.unique(y_pred)) and s["noise_fraction"] == 0


def test_noise_points_count_as_errors_and_relabelling_is_invariant():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    assert clustering_scores(y_true, np.array([5, 5, 9, 9, 7, 7]))["acc"] == 1.0
    s = clustering_scores(y_true, np.array([5, 5, 9, 9, -1, -1]))
    assert s["acc"] == pytest.approx(4 / 6) and s["noise_fraction"] == pytest.approx(2 / 6)
    assert s["n_clusters"] == 2 and s["purity"] == pytest.approx(4 / 6)


def test_silhouette_is_reported_with_features():
    X, y = make_blobs(200, centers=3, random_state=0)
    s = clustering_scores(y, y, X)
    from sklearn.metrics import silhouette_score
    assert s["silhouette"] == pytest.approx(silhouette_score(X, y))


def test_an_unlabeled_clustering_is_scored_by_its_silhouette(tmp_path):
    """Without labels the silhouette is the score left, and the report picks its best method by it; before,
    unlabeled clusterings had no score at all and the report marked a method at random."""
    from sklearn.metrics import silhouette_score
    from ssl_rep.eval import cluster_features
    from ssl_rep.eval.report import write_report

    X, _ = make_blobs(300, centers=3, cluster_std=0.5, random_state=0)
    results, labels = cluster_features(X, None, ["agglomerative", "kmeans"], n_clusters=3)
    for method in ("agglomerative", "kmeans"):
        assert results[method]["scores"]["silhouette"] == pytest.approx(silhouette_score(X, labels[method]))
    worse, bad = cluster_features(X, None, ["kmeans"], n_clusters=8)   # 8 clusters of 3 blobs, listed first
    results = {"kmeans": worse["kmeans"], "agglomerative": results["agglomerative"]}
    assert results["kmeans"]["scores"]["silhouette"] < results["agglomerative"]["scores"]["silhouette"]
    write_report(tmp_path / "report.html", results, X, None, {"kmeans": bad["kmeans"],
                                                              "agglomerative": labels["agglomerative"]})
    assert "<tr class='best'><td>agglomerative</td>" in (tmp_path / "report.html").read_text()
    assert set(clustering_scores(None, labels["kmeans"])) == {"n_clusters", "noise_fraction"}


def test_cluster_refuses_zero_or_negative_counts():
    X, _ = make_blobs(50, centers=2, random_state=0)
    for kwargs, name in (({"n_clusters": 0}, "n_clusters=0"), ({"max_samples": -1}, "max_samples=-1")):
        with pytest.raises(ValueError, match=f"kmeans: {name}; give at least 1"):
            cluster(X, "kmeans", **kwargs)


BLOBS = dict(n_samples=400, centers=4, n_features=5, cluster_std=0.4, center_box=(-10, 10), random_state=3)


@pytest.mark.parametrize("method,kwargs", [("kmeans", {"n_clusters": 4}), ("meanshift", {}), ("dbscan", {}),
                                           ("gmm", {"n_clusters": 4}), ("agglomerative", {"n_clusters": 4}),
                                           ("agglomerative", {"n_clusters": 4, "connectivity": 10, "linkage": "average"})])
def test_every_method_recovers_separated_blobs(method, kwargs):
    X, y = make_blobs(**BLOBS)
    labels = cluster(X, method, **kwargs)
    assert labels.shape == (400,) and labels.dtype == np.int64
    assert adjusted_rand_score(y, labels) > 0.95


def test_kmeans_plusplus_seeding_matches_sklearn_inertia():
    from sklearn.cluster import KMeans
    X, _ = make_blobs(n_samples=5000, centers=30, n_features=16, cluster_std=1.0, random_state=0)
    X = X.astype(np.float32)
    labels, ours = kmeans(X, 30, n_init=3, n_iter=50, seed=0)
    # the inertia belongs to the labels returned: at least that of their clusters' means (which minimise it),
    # and close to it (Lloyd's centres are those means, up to the last move)
    at_means = float(((X - np.stack([X[labels == c].mean(0) for c in range(30)])[labels]) ** 2).sum())
    assert at_means * (1 - 1e-4) <= ours <= at_means * 1.01
    theirs = KMeans(30, n_init=3, max_iter=50, random_state=0).fit(X).inertia_
    assert ours <= theirs * 1.01


def test_gmm_restarts_keep_the_most_likely_of_n_init_fits():
    """cluster(..., "gmm", n_init=N) is scikit-learn's GMM with N initialisations (the most likely kept): its labels
    are that fit's, it is at least as likely as the first start alone, and on touching blobs it is not always it."""
    from sklearn.mixture import GaussianMixture
    X, _ = make_blobs(n_samples=1200, centers=12, n_features=3, cluster_std=1.5, random_state=1)
    X = X.astype(np.float32)
    moved = 0
    for seed in range(4):
        fits = {n: GaussianMixture(12, covariance_type="full", reg_covar=1e-4, n_init=n, random_state=seed).fit(X)
                for n in (1, 5)}
        labels = cluster(X, "gmm", n_clusters=12, seed=seed, n_init=5)
        np.testing.assert_array_equal(labels, fits[5].predict(X))
        np.testing.assert_array_equal(cluster(X, "gmm", n_clusters=12, seed=seed), fits[1].predict(X))
        assert fits[5].lower_bound_ >= fits[1].lower_bound_
        moved += not np.array_equal(labels, fits[1].predict(X))
    assert moved > 0


def test_subsampling_assigns_every_point():
    X, y = make_blobs(**BLOBS)
    labels = cluster(X, "agglomerative", n_clusters=4, max_samples=100)
    assert adjusted_rand_score(y, labels) > 0.95


def test_guard_refuses_oversized_quadratic_run_with_the_estimate():
    X = np.zeros((60_000, 8), np.float32)
    with pytest.raises(ClusteringTooLargeError) as err:
        cluster(X, "agglomerative", n_clusters=10)
    msg = str(err.value)
    assert "GB" in msg and "28.8" in msg and "max_samples" in msg and "connectivity" in msg and "kmeans" in msg


def test_dbscan_falls_back_to_the_median_k_distance_where_the_knee_joins_every_class():
    from sklearn.datasets import load_digits
    from sklearn.metrics import normalized_mutual_info_score
    from ssl_rep.eval import preprocess
    digits = load_digits()
    Z = preprocess(digits.data.astype(np.float32) / 16, pca=10)   # classes touch: the knee finds one cluster
    knee_only = cluster(Z, "dbscan", eps=knee_eps(Z, 10))
    assert len(set(knee_only.tolist()) - {-1}) < 2
    labels = cluster(Z, "dbscan")
    assert np.array_equal(labels, cluster(Z, "dbscan", eps_quantile=0.5))
    assert len(set(labels.tolist()) - {-1}) >= 5 and normalized_mutual_info_score(digits.target, labels) > 0.5
    X, _ = make_blobs(**BLOBS)   # separated blobs keep the knee (the median would leave ~14% as noise)
    assert np.array_equal(cluster(X, "dbscan"), cluster(X, "dbscan", eps=knee_eps(X, 10)))


def test_knee_eps_lies_between_within_and_between_cluster_distances():
    X, _ = make_blobs(**BLOBS)
    eps = knee_eps(X, 10)
    assert 0.2 < eps < 5


@pytest.mark.parametrize("bad,match", [
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN/inf"),
    (np.ones(5), "2-D"),
])
def test_bad_features_give_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        cluster(bad, "kmeans", n_clusters=2)


def test_more_clusters_than_points_and_unknown_method():
    with pytest.raises(ValueError, match="more than the 3 points"):
        cluster(np.random.rand(3, 2), "kmeans", n_clusters=5)
    with pytest.raises(ValueError, match="kmeans, meanshift, dbscan, gmm, agglomerative"):
        cluster(np.random.rand(3, 2), "spectral")


def test_whitening_equals_a_naive_eigendecomposition_and_finds_clusters_a_loud_feature_hides():
    """Four clusters at the corners of a square, each axis spread over ten correlated features, beside one
    independent feature 50x louder: k-means on the raw features splits along the loud one; standardised and
    whitened to two dimensions, the correlated groups' directions lead and k-means finds the clusters."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 150)
    corners = np.array([[-3, -3], [-3, 3], [3, -3], [3, 3]], dtype=float)[y]
    signal = np.repeat(corners, 10, axis=1) + rng.normal(0, 0.5, (600, 20))   # each axis shared by ten features
    X = np.hstack([signal, rng.uniform(-50, 50, (600, 1)), rng.normal(0, 0.3, (600, 20))]).astype(np.float32)
    Z = whiten_features(X, 2)
    assert Z.shape == (600, 2) and Z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1, rtol=1e-5)
    S = (X - X.mean(0)) / X.std(0)   # the naive reference: top eigenvectors of the correlation matrix, unit variance
    values, vectors = np.linalg.eigh(np.cov(S, rowvar=False))
    top = np.argsort(values)[::-1][:2]
    W = S @ vectors[:, top] / np.sqrt(values[top])
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    np.testing.assert_allclose(Z @ Z.T, W @ W.T, atol=2e-3)   # equal up to each component's sign (float32)
    raw = clustering_scores(y, cluster(X, "kmeans", n_clusters=4))["acc"]
    whitened = clustering_scores(y, cluster(Z, "kmeans", n_clusters=4))["acc"]
    assert raw < 0.7 and whitened > 0.97, (raw, whitened)
    assert np.array_equal(preprocess(X, whiten=2), Z)
    with pytest.raises(ValueError, match="whiten=42 must be between 1 and min\\(points, features\\) = 41"):
        whiten_features(X, 42)
    with pytest.raises(ValueError, match="pca=5 and whiten=2 both project the features; give one of them"):
        preprocess(X, pca=5, whiten=2)


@pytest.mark.xdist_group("umap")   # under pytest-xdist: numba compiles UMAP once, on one worker
def test_umap_before_kmeans_separates_digits_better_and_is_reproducible():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    plain = clustering_scores(y, cluster(preprocess(X), "kmeans", n_clusters=10))["acc"]   # ~0.79
    Z = preprocess(X, umap=10, seed=0)
    assert Z.shape == (len(X), 10) and Z.dtype == np.float32
    assert np.array_equal(Z, preprocess(X, umap=10, seed=0))
    umapped = clustering_scores(y, cluster(Z, "kmeans", n_clusters=10))["acc"]             # ~0.88
    assert umapped > plain + 0.05, (plain, umapped)
    with pytest.raises(ValueError, match="umap=65 must be at most the features' 64 dimensions"):
        preprocess(X, umap=65)
    assert preprocess(X[:300, 20:26], umap=6).shape == (300, 6)   # N2D: a code mapped to as many dimensions
    with pytest.raises(ValueError, match="more points than umap_neighbors=15, got 10"):
        preprocess(X[:10], umap=2)


UMAP_THREADS_SCRIPT = """
import numpy as np, torch
from ssl_rep.eval.cluster import umap_embed
torch.set_num_threads(1)
torch.get_num_threads()
umap_embed(np.random.default_rng(0).normal(size=(500, 20)).astype(np.float32), 2)
print(torch.get_num_threads())
"""


def test_umap_leaves_torch_at_its_thread_count():
    """numba's OpenMP layer shares torch's libgomp, and its first parallel launch in a process left torch on
    numba's count (every core): a pytest-xdist worker held to one thread then ran every later torch op
    oversubscribed, 5-60x slower. A fresh process, since only the first launch shows it."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}   # more numba threads than torch's
    out = subprocess.run([sys.executable, "-c", UMAP_THREADS_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1"], out.stdout


def test_constant_features_do_not_crash():
    labels = cluster(np.ones((50, 4), np.float32), "kmeans", n_clusters=2)
    assert labels.shape == (50,)


# ------------------------------------------------------------------ kNN
def brute_knn(X, y, Q, k, T):
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    preds = []
    for q in Qn:
        sims = Xn @ q
        nearest = np.argsort(-sims)[:k]
        votes = {}
        for j in nearest:
            votes[y[j]] = votes.get(y[j], 0) + np.exp(sims[j] / T)
        preds.append(max(votes, key=votes.get))
    return np.array(preds)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_equals_brute_force(k):
    rng = np.random.default_rng(k)
    X = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 5, 300) * 3  # non-contiguous labels
    Q = rng.normal(size=(50, 16)).astype(np.float32)
    knn = KNNClassifier(k=k, temperature=0.1).fit(X, y)
    assert np.array_equal(knn.predict(Q), brute_knn(X, y, Q, k, 0.1))
    sims, idx = knn.kneighbors(Q[:3])
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q[:3] / np.linalg.norm(Q[:3], axis=1, keepdims=True)
    assert np.array_equal(idx, np.argsort(-(Qn @ Xn.T), axis=1)[:, :k])
    np.testing.assert_allclose(knn.predict_proba(Q).sum(1), 1, rtol=1e-6)


def test_knn_needs_labels():
    with pytest.raises(ValueError, match="labelled split"):
        KNNClassifier().fit(np.ones((4, 2)), None)
