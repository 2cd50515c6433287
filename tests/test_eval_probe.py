import math
import pickle

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

import ssl_rep
from ssl_rep.data import build_dataset, build_transform
from ssl_rep.encoders import CheckpointError
from ssl_rep.encoders.io import encoder_payload
from ssl_rep.eval import LinearProbe, extract_features


@pytest.fixture(scope="module")
def digits_pixels():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    X, y = load_digits(return_X_y=True)
    return train_test_split(X.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_probe_matches_sklearn_logistic_regression(digits_pixels, C):
    X, Xt, y, yt = digits_pixels
    ours = LinearProbe(C=C, device="cpu").fit(X, y)
    scaler = StandardScaler().fit(X)
    ref = LogisticRegression(C=C, max_iter=5000, tol=1e-8).fit(scaler.transform(X), y)
    assert abs(ours.score(Xt, yt) - ref.score(scaler.transform(Xt), yt)) <= 0.01
    # same objective, so (nearly) the same probabilities
    np.testing.assert_allclose(ours.predict_proba(Xt), ref.predict_proba(scaler.transform(Xt)), atol=0.03)


def test_probe_chooses_C_on_held_out_split_and_reports_top5(digits_pixels):
    X, Xt, y, yt = digits_pixels
    probe = LinearProbe(device="cpu").fit(X, y)
    assert sorted(probe.val_scores_) == pytest.approx(list(np.logspace(-4, 2, 7)))
    assert probe.C_ in probe.val_scores_ and probe.val_scores_[probe.C_] == max(probe.val_scores_.values())
    assert probe.coef_.shape == (10, 64) and probe.intercept_.shape == (10,)
    top1, top5 = probe.score(Xt, yt), probe.top_k_accuracy(Xt, yt, 5)
    assert 0.9 < top1 <= top5 <= 1.0
    from sklearn.metrics import top_k_accuracy_score
    assert top5 == pytest.approx(top_k_accuracy_score(yt, probe.decision_function(Xt), k=5))


def test_probe_minibatch_path_agrees_with_lbfgs(digits_pixels, monkeypatch):
    X, Xt, y, yt = digits_pixels
    full = LinearProbe(C=0.1, device="cpu").fit(X, y).score(Xt, yt)
    monkeypatch.setattr("ssl_rep.eval.probe.FULL_BATCH_MAX_BYTES", 0)
    streamed = LinearProbe(C=0.1, device="cpu", epochs=60, batch_size=128).fit(X, y).score(Xt, yt)
    assert abs(full - streamed) <= 0.02


def test_streamed_c_search_reads_the_split_in_chunks_and_never_copies_it(digits_pixels, monkeypatch, tmp_path):
    """C=None on features too large for the full-batch solver: the train / validation split of a memory-mapped
    store is read chunk by chunk (RowSubset), never materialised as ``X[train_rows]``, and the chosen probe still
    scores like the in-memory L-BFGS one."""
    import ssl_rep.eval.probe as probe_mod
    X, Xt, y, yt = digits_pixels
    stored = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=X.shape)
    stored[:] = X
    reads = []
    original = probe_mod.RowSubset.__getitem__
    monkeypatch.setattr(probe_mod.RowSubset, "__getitem__", lambda self, key: reads.append(original(self, key)) or
                        reads[-1])
    full = LinearProbe(Cs=(0.01, 0.1, 1.0), device="cpu").fit(X, y)
    monkeypatch.setattr(probe_mod, "FULL_BATCH_MAX_BYTES", 0)
    monkeypatch.setattr(probe_mod, "CHUNK_BYTES", 64 * 4 * X.shape[1])   # the solver's chunks: one batch, 128 rows
    streamed = LinearProbe(Cs=(0.01, 0.1, 1.0), device="cpu", epochs=40, batch_size=128).fit(stored, y)
    n_train = int(round(len(X) * 0.8))
    assert reads and max(len(r) for r in reads) < n_train // 2   # 128-row chunks, the ~250 validation rows at once
    assert streamed.val_scores_.keys() == full.val_scores_.keys()
    assert abs(streamed.score(Xt, yt) - full.score(Xt, yt)) <= 0.03


def test_c_search_scores_the_validation_split_in_chunks_even_when_it_fits(digits_pixels, monkeypatch):
    """The held-out rows are only scored: read chunk by chunk even when the training part goes to the in-memory
    L-BFGS solver (an ImageNet store's 20% split would otherwise be a 1 GB copy beside the memmap)."""
    import ssl_rep.eval.probe as probe_mod
    X, _, y, _ = digits_pixels
    reads = []
    original = probe_mod.RowSubset.__getitem__
    monkeypatch.setattr(probe_mod.RowSubset, "__getitem__", lambda self, key: reads.append(original(self, key)) or
                        reads[-1])
    probe = LinearProbe(Cs=(0.1, 1.0), device="cpu").fit(X, y)
    n_val = math.ceil(len(X) * probe.val_fraction)   # train_test_split's rounding
    assert reads, "the validation split was copied instead of read through RowSubset"
    assert sum(len(r) for r in reads) == 2 * n_val   # every validation row read once per C, nothing else


def test_row_subset_reads_the_rows_it_names():
    from ssl_rep.eval.probe import RowSubset
    X = np.arange(40, dtype=np.float32).reshape(10, 4)
    rows = np.array([1, 4, 5, 9])
    sub = RowSubset(X, rows)
    assert len(sub) == 4 and sub.shape == (4, 4) and sub.nbytes == 64
    np.testing.assert_array_equal(sub[1:3], X[[4, 5]])


def _objective(X, y, coef, intercept, C):
    """scikit-learn's objective divided by C * n, in float64 (the reference both solvers minimise)."""
    from scipy.special import logsumexp
    logits = X.astype(np.float64) @ coef.astype(np.float64).T + intercept
    ce = np.mean(logsumexp(logits, axis=1) - logits[np.arange(len(X)), y])
    return ce + np.sum(coef.astype(np.float64) ** 2) / (2 * C * len(X))


def exact_reference(X, y, C):
    """scikit-learn's optimum of the same objective, by Newton's method with Cholesky solves: a dozen
    iterations whatever the conditioning, for few features (its L-BFGS at tol=1e-10 needed 13,894
    iterations, 490 s on an AVX2 machine, on the 48 ill-conditioned features below)."""
    ref = LogisticRegression(C=C, solver="newton-cholesky", max_iter=200, tol=1e-10).fit(X.astype(np.float64), y)
    assert ref.n_iter_.max() < 200, "the reference did not converge"
    return ref


@pytest.fixture(scope="module")
def correlated_features(digits_pixels):
    """Digits pixels mixed into 48 strongly correlated columns (condition number ~1e5), as SSL features are."""
    X, Xt, y, yt = digits_pixels
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(64, 48)) * np.logspace(0, -2.5, 48) + rng.normal(size=(64, 1))
    return (X @ mix).astype(np.float32), y


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the reference's tol=1e-10 is strict
@pytest.mark.parametrize("normalize", ["standard", None])
def test_preconditioned_lbfgs_reaches_sklearns_optimum_on_ill_conditioned_features(correlated_features, normalize):
    X, y = correlated_features
    C = 1.0
    ours = LinearProbe(C=C, device="cpu", normalize=normalize).fit(X, y)
    Xs = (X - ours.mean_) / ours.scale_ if normalize == "standard" else X.astype(np.float64)
    ref = exact_reference(Xs, y, C)
    ours_obj = _objective(Xs, y, ours.coef_, ours.intercept_, C)
    ref_obj = _objective(Xs, y, ref.coef_, ref.intercept_, C)
    assert ours_obj <= ref_obj * (1 + 1e-4), (ours_obj, ref_obj)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("C", [1.0, 10.0])
def test_default_probe_converges_on_nearly_separable_pixels(C):
    """The digits-suite's raw-pixel row: standardised pixels of ssl_rep's digits train split are nearly separable,
    and pixels that are almost always 0 give near-null covariance directions. Without the eigenvalue floor the
    preconditioned L-BFGS stalled there (objective 20% above the optimum at C=10, top-5 accuracy below 1)."""
    train = build_dataset("digits", split="train")
    X = np.asarray(train.images)[..., 0].reshape(len(train), -1).astype(np.float32) / 255
    y = np.asarray(train.labels)
    ours = LinearProbe(C=C, device="cpu").fit(X, y)
    Xs = (X - ours.mean_) / ours.scale_
    ref = LogisticRegression(C=C, max_iter=20000, tol=1e-10).fit(Xs, y)   # 1,024 pixels: L-BFGS is the quick one
    ours_obj = _objective(Xs, y, ours.coef_, ours.intercept_, C)
    assert ours_obj <= _objective(Xs, y, ref.coef_, ref.intercept_, C) * (1 + 1e-3), ours_obj


def test_warm_started_C_search_scores_like_independent_fits(digits_pixels):
    """The search warm-starts each C from the last solution (mapped into the preconditioned variables):
    each validation score must be what a cold fit at that C gives."""
    X, _, y, _ = digits_pixels
    Cs = (0.001, 0.1, 10.0)
    probe = LinearProbe(Cs=Cs, device="cpu", normalize=None).fit(X, y)
    from sklearn.model_selection import train_test_split
    tr, va = train_test_split(np.arange(len(X)), test_size=0.2, random_state=0, stratify=y)
    tr, va = np.sort(tr), np.sort(va)
    for C in Cs:
        cold = LinearProbe(C=C, device="cpu", normalize=None).fit(X[tr], y[tr]).score(X[va], y[va])
        assert abs(probe.val_scores_[C] - cold) <= 1 / len(va) + 1e-9, (C, probe.val_scores_[C], cold)


def test_probe_input_errors():
    X = np.random.rand(20, 3).astype(np.float32)
    with pytest.raises(ValueError, match="only one class"):
        LinearProbe().fit(X, np.zeros(20, int))
    with pytest.raises(ValueError, match="labelled split"):
        LinearProbe().fit(X, None)
    with pytest.raises(ValueError, match="no label"):
        LinearProbe().fit(X, np.full(20, -1))
    bad = X.copy()
    bad[3, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/inf values in 1 rows"):
        LinearProbe().fit(bad, np.arange(20) % 2)
    const = np.ones((20, 3), np.float32)  # constant features: a probe at chance, not a crash
    probe = LinearProbe(C=1.0).fit(const, np.arange(20) % 2)
    assert np.isfinite(probe.coef_).all()


# ------------------------------------------------------------------ feature extraction
@pytest.fixture(scope="module")
def small_digits():
    ds = build_dataset("digits", split="test", transform=build_transform("eval", stats="digits", resize=None))
    return torch.utils.data.Subset(ds, range(40)), ds


def test_extract_features_matches_a_manual_forward(small_digits, monkeypatch):
    import ssl_rep.eval.features as features
    kept = []
    monkeypatch.setattr(features, "keep_freed_memory", lambda: kept.append(True))
    subset, _ = small_digits
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20").train()
    X, y = extract_features(enc, subset, batch_size=16, device="cpu", progress=False)
    assert kept   # on the CPU, freed batch memory is kept for the next batch
    assert X.dtype == np.float32 and X.shape == (40, 64) and y.dtype == np.int64 and y.shape == (40,)
    assert enc.training  # mode restored
    with torch.no_grad():
        ref = enc.eval()(torch.stack([subset[i][0] for i in range(40)])).numpy()
    np.testing.assert_allclose(X, ref, rtol=1e-4, atol=1e-5)


def test_batched_in_memory_path_gives_the_per_image_features(small_digits):
    from ssl_rep.eval.features import batched_source
    _, ds = small_digits
    batches = batched_source(ds, 64, torch.device("cpu"))
    assert batches is not None                                           # digits + eval at native size: batched
    x, _ = next(iter(batches))
    # the per-image path's layout (NCHW, contiguous): a channels-last batch would change the encoder's kernels
    assert x.shape == (64, 3, 32, 32) and x.is_contiguous()
    np.testing.assert_allclose(x.numpy(), torch.stack([ds[i][0] for i in range(64)]).numpy(), rtol=1e-6, atol=1e-6)
    every = torch.utils.data.Subset(ds, range(len(ds)))                  # same images through PIL, one by one
    assert batched_source(every, 64, torch.device("cpu")) is None
    enc = ssl_rep.create_encoder("resnet20")
    fast, y_fast = extract_features(enc, ds, batch_size=64, device="cpu", progress=False)
    slow, y_slow = extract_features(enc, every, batch_size=64, device="cpu", progress=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_fast, y_slow)
    resized = build_dataset("digits", split="test", transform=build_transform("eval", stats="digits", size=28,
                                                                             resize=None))
    assert batched_source(resized, 64, torch.device("cpu")) is None     # a crop: left to the per-image path


@pytest.mark.parametrize("chunks", [1, 3, 7, 100])
def test_chunked_upload_hands_out_the_same_batches(small_digits, chunks):
    """The overlapped upload (pieces of whole batches; ``UPLOAD_CHUNKS``) slices the set as the one-copy path does,
    also when neither the batch nor the piece divides the set (360 images, batch 64)."""
    from ssl_rep.eval.features import batched_source, chunked_upload
    _, ds = small_digits
    plain = list(batched_source(ds, 64, torch.device("cpu")))
    pieces = list(batched_source(ds, 64, torch.device("cpu"), upload_chunks=chunks))
    assert len(pieces) == len(plain) == 6
    for (x, y), (xp, yp) in zip(plain, pieces):
        assert torch.equal(x, xp) and torch.equal(y, yp)
    starts = [start for start, _ in chunked_upload(ds.images, 64, chunks, torch.device("cpu"))]
    assert starts == list(range(0, 360, 64))


def test_feature_cache_is_a_memmap_and_skips_the_encoder(small_digits, tmp_path):
    _, ds = small_digits
    enc = ssl_rep.create_encoder("resnet20")
    calls = []
    enc.register_forward_hook(lambda *a: calls.append(1))
    X1, y1 = extract_features(enc, ds, batch_size=128, device="cpu", cache_dir=tmp_path, progress=False)
    n_calls = len(calls)
    X2, y2 = extract_features(enc, ds, batch_size=128, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(calls) == n_calls > 0
    assert isinstance(X2, np.memmap) and np.array_equal(np.asarray(X1), np.asarray(X2)) and np.array_equal(y1, y2)
    with torch.no_grad():
        enc.conv1.weight.add_(1.0)  # new weights -> new key -> extracted again
    extract_features(enc, ds, batch_size=128, device="cpu", cache_dir=tmp_path, progress=False)
    assert len(calls) > n_calls
    assert len(list(tmp_path.iterdir())) == 2


def test_ten_crop_averages_the_crops(small_digits):
    subset, _ = small_digits
    enc = ssl_rep.create_encoder("resnet20").eval()
    X, _ = extract_features(enc, subset, batch_size=8, device="cpu", ten_crop=True, progress=False)
    from torchvision.transforms import v2 as T
    img = subset[0][0]
    crops = torch.stack(T.TenCrop(28)(img))
    with torch.no_grad():
        expected = enc(crops).mean(0).numpy()
    np.testing.assert_allclose(X[0], expected, rtol=1e-4, atol=1e-5)


def test_unlabeled_dataset_gives_no_labels(tmp_path):
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    ds = build_dataset(tmp_path)
    X, y = extract_features(ssl_rep.create_encoder("resnet20"), ds, device="cpu", progress=False)
    assert X.shape == (3, 64) and y is None


# ------------------------------------------------------------------ load_encoder
def test_load_encoder_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20", shortcut="B").eval()
    torch.save(encoder_payload(enc), tmp_path / "encoder.pt")
    loaded = ssl_rep.load_encoder(tmp_path / "encoder.pt")
    assert not loaded.training and loaded.encoder_kwargs == {"shortcut": "B"}
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), enc(x))
    # weights from another encoder: the error lists what does not fit
    other = encoder_payload(ssl_rep.create_encoder("resnet20"))
    other["kwargs"] = {"shortcut": "B"}
    torch.save(other, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="missing .*shortcut"):
        ssl_rep.load_encoder(tmp_path / "mismatch.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "encoder.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        ssl_rep.load_encoder(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ssl_rep encoder"):
        ssl_rep.load_encoder(tmp_path / "foreign.pt")
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.bias": torch.zeros(2)}, tmp_path / "tv.pth")
    with pytest.raises(CheckpointError, match=r"bare weights \(2 tensors, e.g. 'conv1.weight'\).*load_state_dict"):
        ssl_rep.load_encoder(tmp_path / "tv.pth")   # a torchvision-style state_dict
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pt"):
        ssl_rep.load_encoder(tmp_path / "text.pt")


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "ssl_rep.encoder/1", "name": "resnet20", "kwargs": {}, "state_dict": Payload()}, f)
    with pytest.raises(CheckpointError, match="evil.pt"):
        ssl_rep.load_encoder(tmp_path / "evil.pt")
    assert not marker.exists()


def test_probe_and_knn_are_scikit_learn_estimators():
    """``clone`` and ``get_params``/``set_params`` work, so they drop into sklearn's model selection."""
    from sklearn.base import clone, is_classifier
    from sklearn.model_selection import cross_val_score
    from ssl_rep.eval import KNNClassifier, LinearProbe
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    for est in (LinearProbe(C=1.0, device="cpu"), KNNClassifier(k=5)):
        twin = clone(est)
        assert is_classifier(twin) and twin.get_params() == est.get_params() and twin is not est
        assert cross_val_score(est, X, y, cv=3).mean() > 0.8
    assert clone(LinearProbe(C=1.0)).set_params(C=2.0).C == 2.0


# ------------------------------------------------------------------ what evaluation reads at a given size
def _normalised(image, stats):
    return build_transform("eval", stats=stats, size=None, resize=None)(image)


@pytest.mark.parametrize("size", [24, 48])
def test_small_images_are_read_whole_at_any_size_offline_and_online(size, tmp_path):
    """A model trained on a small in-memory set at another size (Fashion-MNIST at 32 px, CIFAR at 64) is probed on
    each image whole, resized to that size, by ssl-probe and by the online probe alike: not zoomed by a centre crop
    (ssl-probe did so), not padded (the online probe did so)."""
    from PIL import Image

    from ssl_rep.eval.inputs import eval_dataset
    from ssl_rep.train import load_config
    from ssl_rep.train.data import build_eval_dataset, choose_transform

    native = eval_dataset("digits", "test")
    assert torch.equal(eval_dataset("digits", "test", image_size=32)[0][0], native[0][0])   # digits are 32 px
    pil = Image.fromarray(np.asarray(native.images[0]))
    expected = _normalised(pil.resize((size, size), Image.BILINEAR), "digits")
    offline = eval_dataset("digits", "test", image_size=size)[0][0]
    assert offline.shape == (3, size, size) and torch.allclose(offline, expected, atol=0.05)
    assert (offline - expected).abs().mean() < 0.01    # PIL's and torchvision's bilinear round alike
    online = build_eval_dataset(load_config("simclr_digits", [f"out_dir={tmp_path}"]), size)
    assert torch.equal(online[0][0], offline)
    trained_on = choose_transform(load_config("simclr_digits", ["data.transform=eval"]), size, native=32)[0]
    assert torch.equal(trained_on(pil), offline)   # data.transform=eval trains on what the probe reads


def test_image_files_are_resized_then_centre_cropped(tmp_path):
    """Decoded files: at 64 px or less the short side resized to the size, then the centre (the whole image of a
    square photo); above 64 px ImageNet's protocol, resized to size * 256 / 224 and centre-cropped."""
    from PIL import Image

    from ssl_rep.eval.inputs import eval_dataset

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    pil = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))   # 100 wide, 80 high
    pil.save(tmp_path / "a" / "x.png")
    for size, short_side in ((32, 32), (128, 146)):
        resized = pil.resize((short_side * 100 // 80, short_side), Image.BILINEAR)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        expected = _normalised(resized.crop((left, top, left + size, top + size)), "imagenet")
        got = eval_dataset(str(tmp_path), "train", image_size=size)[0][0]
        assert got.shape == (3, size, size) and (got - expected).abs().mean() < 0.02, size


@pytest.mark.parametrize("kwargs,shown", [({"C": 0}, "C=0"), ({"Cs": (0.1, -1.0)}, "Cs=-1.0")])
def test_probe_refuses_a_c_that_is_not_positive(kwargs, shown):
    """C=0 used to end in a ZeroDivisionError inside the fit, C<0 in "Input contains NaN"."""
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(ValueError, match=f"LinearProbe: {shown}; the inverse regularisation C must be > 0"):
        LinearProbe(**kwargs).fit(X, y)


def test_knn_with_k_above_the_training_points_says_so(caplog):
    from ssl_rep.eval import KNNClassifier
    X, y = np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1])
    with caplog.at_level("WARNING", logger="ssl_rep.eval"):
        knn = KNNClassifier(k=200).fit(X, y)
    assert "k=200 is more than the 4 training points" in caplog.text
    assert knn.kneighbors(X[:1])[1].shape == (1, 4)
