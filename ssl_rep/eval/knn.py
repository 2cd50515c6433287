"""k-nearest-neighbour classification of frozen features with faiss (Wu et al. 2018's weighted vote)."""
from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from .checks import check_features, check_labels

log = logging.getLogger("ssl_rep.eval")


def unit_rows(X) -> np.ndarray:
    """Each row of ``X`` L2-normalised (float32, contiguous; an all-zero row stays zero)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


INDEXES = ("flat", "sq8", "ivf")


class TorchFlatIP:
    """Exact inner-product search in torch, with the part of faiss's index interface the kNN uses (``add``,
    ``search``, ``ntotal``, ``is_trained``): for GPUs torch sees and faiss's wheel has no kernels for. The
    vectors live on ``device`` as float32; a search compares ``batch`` queries with all of them at once."""

    is_trained = True

    def __init__(self, dim: int, device="cuda"):
        import torch
        self.dim, self.device = dim, torch.device(device)
        self.vectors = None   # made on the first add, so building an index touches no device

    @property
    def ntotal(self) -> int:
        return 0 if self.vectors is None else len(self.vectors)

    def train(self, X) -> None:   # exact search: nothing to learn
        pass

    def add(self, X) -> None:
        import torch
        new = torch.as_tensor(np.asarray(X, np.float32), device=self.device)
        self.vectors = new if self.vectors is None else torch.cat([self.vectors, new])

    def search(self, X, k: int, budget_bytes: float = 1e9) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored vectors of each query, most similar first: the stored vectors are
        compared in chunks so that one similarity block stays within ``budget_bytes``."""
        import torch
        with torch.no_grad():
            q = torch.as_tensor(np.asarray(X, np.float32), device=self.device)
            step = max(k, int(budget_bytes // (4 * max(len(q), 1))))
            best_sims = torch.full((len(q), 0), -torch.inf, device=self.device)
            best_idx = torch.zeros((len(q), 0), dtype=torch.long, device=self.device)
            for start in range(0, self.ntotal, step):
                sims, idx = (q @ self.vectors[start:start + step].T).topk(min(k, len(self.vectors[start:start + step])), 1)
                best_sims, pick = torch.cat([best_sims, sims], 1).topk(min(k, best_sims.shape[1] + sims.shape[1]), 1)
                best_idx = torch.cat([best_idx, idx + start], 1).gather(1, pick)
        return best_sims.cpu().numpy(), best_idx.cpu().numpy()


def make_index(dim: int, use_gpu: bool | None = None, kind: str = "flat", nlist: int = 1024, nprobe: int = 32):
    """An inner-product index: ``flat`` exact float32; ``sq8`` (faiss ScalarQuantizer, 8 bits per
    dimension: 4x less memory); ``ivf`` (inverted lists over ``nlist`` k-means cells, ``nprobe`` of
    them searched: sub-linear search for many millions of vectors). ``sq8`` and ``ivf`` are trained
    on the first rows added. On the GPUs when faiss sees any (split between them when there are several); a
    ``flat`` index on a GPU only torch sees is a :class:`TorchFlatIP` there."""
    import faiss
    import torch

    if kind == "flat" and use_gpu is not False and faiss.get_num_gpus() == 0 and torch.cuda.is_available():
        return TorchFlatIP(dim, "cuda")

    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "sq8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(nprobe, nlist)
    else:
        raise ValueError(f"kNN index {kind!r} is not one of {', '.join(INDEXES)}")
    if use_gpu is not False and faiss.get_num_gpus() > 0:
        # Several GPUs: the vectors are split between them (each holds 1/n), not copied to each.
        options = faiss.GpuMultipleClonerOptions()
        options.shard = faiss.get_num_gpus() > 1
        index = faiss.index_cpu_to_all_gpus(index, co=options)
    return index


class KNNClassifier(ClassifierMixin, BaseEstimator):
    """Cosine kNN: L2-normalised features, exact faiss inner-product search, and each of the ``k``
    neighbours votes for its class with weight ``exp(similarity / temperature)``.

    Fitted: ``classes_``, ``index_`` (faiss), ``labels_`` (class index per training row).
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, use_gpu: bool | None = None,
                 batch_size: int = 8192, index: str = "flat", nlist: int | None = None, nprobe: int = 32):
        self.k, self.temperature, self.use_gpu, self.batch_size = k, temperature, use_gpu, batch_size
        self.index, self.nlist, self.nprobe = index, nlist, nprobe

    def fit(self, X, y):
        X = check_features(X, "features")
        y = check_labels(y, len(X))
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.k > len(X):
            log.warning("kNN: k=%d is more than the %d training points; each query votes over all of them",
                        self.k, len(X))
        self.classes_, self.labels_ = np.unique(y, return_inverse=True)
        # ivf: about 4 sqrt(n) cells, at least 39 training points each (faiss's own floor)
        nlist = self.nlist or int(np.clip(4 * np.sqrt(len(X)), 1, max(1, min(len(X), 65536) // 39)))
        self.index_ = make_index(X.shape[1], self.use_gpu, self.index, nlist, self.nprobe)
        for start in range(0, len(X), 65536):
            chunk = unit_rows(X[start:start + 65536])
            if not self.index_.is_trained:   # sq8: value ranges from the first chunk (up to 65,536 rows)
                self.index_.train(chunk)
            self.index_.add(chunk)
        self.n_features_in_ = X.shape[1]
        return self

    def kneighbors(self, X, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and indices of the ``k`` nearest training rows, most similar first."""
        X = check_features(X, "features")
        k = min(k or self.k, self.index_.ntotal)
        sims, idx = zip(*(self.index_.search(unit_rows(X[s:s + self.batch_size]), k)
                          for s in range(0, len(X), self.batch_size)))
        return np.concatenate(sims), np.concatenate(idx)

    def predict_proba(self, X) -> np.ndarray:
        sims, idx = self.kneighbors(X)
        weights = np.exp((sims - 1.0) / self.temperature)   # shifted by the max possible similarity: no overflow
        votes = np.zeros((len(sims), len(self.classes_)))
        np.add.at(votes, (np.repeat(np.arange(len(sims)), sims.shape[1]), self.labels_[idx].ravel()), weights.ravel())
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]

    def score(self, X, y) -> float:
        return float((self.predict(X) == np.asarray(y)).mean())
