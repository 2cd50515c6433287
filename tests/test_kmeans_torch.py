"""The torch paths for GPUs faiss cannot use (k-means++ seeding, Lloyd, exact kNN), checked on the CPU against
scikit-learn and faiss; and the default k-means against scikit-learn's default."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans, kmeans_plusplus as sk_kmeans_plusplus
from sklearn.datasets import make_blobs

import ssl_rep.eval.kmeans as km
from ssl_rep.eval import KNNClassifier
from ssl_rep.eval.knn import TorchFlatIP, make_index


def potential(X, centers):
    return float(((X[:, None, :] - centers[None]) ** 2).sum(-1).min(1).sum())


@pytest.fixture(scope="module")
def blobs():
    X, _ = make_blobs(n_samples=4000, centers=40, n_features=12, cluster_std=2.0, random_state=0)
    return X.astype(np.float32)


def test_kmeans_plusplus_matches_sklearns_seeding_quality(blobs):
    """Greedy k-means++ in torch: distinct points of the data, with the seeding potential of scikit-learn's
    own greedy k-means++ (mean over seeds within 5%), and far below uniform random picks."""
    X = torch.from_numpy(blobs)
    ours, theirs, uniform = [], [], []
    for seed in range(6):
        centers = km.kmeans_plusplus(X, 40, seed=seed).numpy()
        assert len(np.unique(centers, axis=0)) == 40
        assert all((blobs == c).all(1).any() for c in centers)
        ours.append(potential(blobs, centers))
        theirs.append(potential(blobs, sk_kmeans_plusplus(blobs, 40, random_state=seed)[0]))
        uniform.append(potential(blobs, blobs[np.random.default_rng(seed).choice(len(blobs), 40, replace=False)]))
    assert abs(np.mean(ours) / np.mean(theirs) - 1) < 0.05, (np.mean(ours), np.mean(theirs))
    assert np.mean(ours) < 0.7 * np.mean(uniform)


def test_torch_lloyd_matches_faiss_at_equal_seeding_and_iterations(blobs):
    centers = km.kmeans_plusplus(torch.from_numpy(blobs), 40, seed=3)
    for iterations in (1, 4, 20):
        labels_t, inertia_t, centers_t, _ = km.lloyd_torch(torch.from_numpy(blobs), centers, iterations, tol=0,
                                                           rows=1000)   # several row chunks
        labels_f, inertia_f, _, _ = km.lloyd_faiss(blobs, centers.numpy(), iterations, tol=0)
        assert abs(inertia_t / inertia_f - 1) < 0.01, (iterations, inertia_t, inertia_f)
        # the inertia returned is that of the labels returned, to the final centres
        direct = float(((blobs - centers_t.numpy()[labels_t.numpy()]) ** 2).sum())
        assert inertia_t == pytest.approx(direct, rel=1e-4)
        assert (labels_t.numpy() == labels_f).mean() > 0.99


def test_lloyd_stops_when_the_inertia_stops_falling(blobs):
    centers = km.kmeans_plusplus(torch.from_numpy(blobs), 40, seed=1)
    _, stopped, _, converged = km.lloyd_torch(torch.from_numpy(blobs), centers, 200)
    _, full, _, never = km.lloyd_torch(torch.from_numpy(blobs), centers, 200, tol=0)
    assert converged and not never
    assert stopped <= full * (1 + 1e-3)
    _, f_stopped, _, f_converged = km.lloyd_faiss(blobs, centers.numpy(), 200)
    assert f_converged and f_stopped <= full * 1.01


def test_default_kmeans_at_least_matches_sklearns_default_inertia():
    """The default (3 seedings screened after a first block, the best run to convergence) against
    ``sklearn.cluster.KMeans`` with its defaults, over several seeds: lower or equal inertia on average."""
    X, _ = make_blobs(n_samples=6000, centers=30, n_features=16, cluster_std=3.0, random_state=2)
    X = X.astype(np.float32)
    ours = np.mean([km.kmeans(X, 30, seed=s)[1] for s in range(4)])
    theirs = np.mean([KMeans(30, random_state=s).fit(X).inertia_ for s in range(4)])
    assert ours <= theirs * 1.001, (ours, theirs)


def test_restarts_are_screened_on_the_sample_and_the_best_runs_on_every_point(monkeypatch):
    """With more points than the seeding sample, each restart's first block of Lloyd iterations runs on its sample
    only, the best restart then on every point; the inertia still matches scikit-learn's default over seeds."""
    X, _ = make_blobs(n_samples=6000, centers=30, n_features=16, cluster_std=3.0, random_state=2)
    X = X.astype(np.float32)
    seen, lloyd = [], km.lloyd_faiss
    monkeypatch.setattr(km, "lloyd_faiss", lambda points, *a, **kw: seen.append(len(points)) or lloyd(points, *a, **kw))
    labels, _ = km.kmeans(X, 30, init_samples=1500)
    assert seen == [1500, 1500, 1500, 6000] and labels.shape == (6000,)
    seen.clear()
    km.kmeans(X, 30, init_samples=1500, init="random")
    assert seen == [1500, 1500, 1500, 6000]
    seen.clear()
    km.kmeans(X, 30, init_samples=1500, n_iter=5)   # no iteration left after screening: the best is only assigned
    assert seen == [1500, 1500, 1500, 6000]
    ours = np.mean([km.kmeans(X, 30, seed=s, init_samples=1500)[1] for s in range(4)])
    theirs = np.mean([KMeans(30, random_state=s).fit(X).inertia_ for s in range(4)])
    assert ours <= theirs * 1.001, (ours, theirs)


def test_lloyd_runs_in_torch_where_only_torch_sees_a_gpu(monkeypatch):
    import faiss
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert km.lloyd_device(None) == "torch-cuda" and km.lloyd_device(False) == "faiss-cpu"
    assert isinstance(make_index(8), TorchFlatIP) and not isinstance(make_index(8, use_gpu=False), TorchFlatIP)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert km.lloyd_device(None) == "faiss-gpu"


@pytest.mark.parametrize("budget", [1e9, 4 * 7 * 50])   # one block; blocks of 50 stored vectors
def test_torch_flat_index_finds_faiss_neighbours(budget):
    import faiss
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(500, 24)).astype(np.float32), rng.normal(size=(7, 24)).astype(np.float32)
    ref = faiss.IndexFlatIP(24)
    ref.add(base)
    ours = TorchFlatIP(24, "cpu")
    ours.add(base[:200])
    ours.add(base[200:])
    assert ours.ntotal == 500
    sims_f, idx_f = ref.search(queries, 10)
    sims_t, idx_t = ours.search(queries, 10, budget_bytes=budget)
    assert np.array_equal(idx_t, idx_f)
    np.testing.assert_allclose(sims_t, sims_f, rtol=1e-5)


def test_knn_classifier_reads_the_same_through_the_torch_index(monkeypatch):
    import ssl_rep.eval.knn as knn
    rng = np.random.default_rng(1)
    X, y, Q = rng.normal(size=(300, 16)), rng.integers(0, 4, 300), rng.normal(size=(40, 16))
    expected = KNNClassifier(k=5).fit(X, y).predict(Q)
    monkeypatch.setattr(knn, "make_index", lambda dim, *a, **k: TorchFlatIP(dim, "cpu"))
    assert np.array_equal(KNNClassifier(k=5).fit(X, y).predict(Q), expected)


@pytest.mark.gpu
def test_kmeans_on_the_gpu_matches_faiss_on_the_host():
    X, _ = make_blobs(n_samples=100_000, centers=100, n_features=512, cluster_std=4.0, random_state=0)
    X = X.astype(np.float32)
    centers = km.kmeans_plusplus(torch.from_numpy(X[:20_000]).cuda(), 100, seed=0)
    _, gpu, _, _ = km.lloyd_torch(torch.from_numpy(X).cuda(), centers, 20, tol=0)
    _, host, _, _ = km.lloyd_faiss(X, centers.cpu().numpy(), 20, tol=0)
    assert abs(gpu / host - 1) < 0.01
