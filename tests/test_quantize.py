"""Int8 encoders and feature stores: exact zero, no -128 weights, features that track the float ones."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import ssl_rep
from ssl_rep.data import build_transform
from ssl_rep.eval import KNNClassifier, LinearProbe, cluster, extract_features
from ssl_rep.quantize import (QuantizedFeatures, affine_qparams, dequantize_values, load_features, quantize_encoder,
                              quantize_features, quantize_values, save_features)


# its module-scoped fixture is costly: under pytest-xdist, every test here runs on one worker, which builds it once
pytestmark = pytest.mark.xdist_group("quantize")


@pytest.fixture(scope="module")
def digits():
    t = build_transform("eval", stats="digits", resize=None)
    return ssl_rep.build_dataset("digits", transform=t), ssl_rep.build_dataset("digits", split="test", transform=t)


@pytest.fixture(scope="module")
def trained_encoder(digits):
    """A ResNet-20 whose BatchNorm statistics come from digits (a forward pass in train mode), so the
    folded conv weights and activation ranges are those of real data, not of an untouched init."""
    train, _ = digits
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20")
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None   # cumulative average over the passes below
    x = torch.stack([train[i][0] for i in range(512)])
    with torch.no_grad():
        for j in range(0, 512, 128):
            enc(x[j:j + 128])
    return enc.eval()


def test_zero_is_exact_and_codes_round_trip():
    lo, hi = np.array([-1.0, 0.3, -5.0, 0.0]), np.array([2.0, 7.0, -0.5, 0.0])   # incl. all-positive/negative/zero
    scale, zp = affine_qparams(lo, hi)
    zeros = np.zeros((1, 4), np.float32)
    assert np.array_equal(dequantize_values(quantize_values(zeros, scale, zp), scale, zp), zeros)
    X = np.random.default_rng(0).uniform(lo, hi, size=(1000, 4)).astype(np.float32)
    err = np.abs(dequantize_values(quantize_values(X, scale, zp), scale, zp) - X)
    assert (err <= scale / 2 + 1e-6).all()   # within half a step everywhere in range


def test_quantized_encoder_weights_avoid_minus_128_and_activations_keep_zero(trained_encoder, digits):
    train, _ = digits
    calib = torch.stack([train[i][0] for i in range(256)])
    q = quantize_encoder(trained_encoder, calib)
    codes = q.weight_codes()
    assert len(codes) == 19   # every conv of ResNet-20, its BatchNorm folded in
    assert min(int(c.min()) for c in codes.values()) >= -127 and max(int(c.max()) for c in codes.values()) <= 127
    for name, module in q.model.named_modules():   # every activation's zero-point is an integer in range
        if hasattr(module, "zero_point") and not callable(module.zero_point):
            zp = float(module.zero_point)
            assert zp == int(zp) and 0 <= zp <= 255
    assert q.num_features == trained_encoder.num_features and q.encoder_name == "resnet20"


ENGINES = [e for e in ("x86", "fbgemm", "onednn", "qnnpack") if e in torch.backends.quantized.supported_engines]


@pytest.mark.parametrize("engine", ENGINES)
def test_quantized_features_correlate_with_float_on_digits(trained_encoder, digits, engine, monkeypatch):
    """Under every engine, with the range chosen for this CPU (the default), int8 tracks float."""
    train, test = digits
    monkeypatch.setattr(torch.backends.quantized, "engine", engine)   # the default backend follows it
    q = quantize_encoder(trained_encoder, train, num_calibration=512)
    assert q.backend == engine and q.reduce_range == ssl_rep.quantize.needs_reduce_range(engine)
    f, _ = extract_features(trained_encoder, test, device="cpu", progress=False)
    g, _ = extract_features(q, test, device="cuda" if torch.cuda.is_available() else "cpu", progress=False)
    assert g.shape == f.shape
    assert np.corrcoef(f.ravel(), g.ravel())[0, 1] > 0.99
    assert torch.backends.quantized.engine == engine   # quantizing and running leave the setting as it was
    with pytest.raises(RuntimeError, match="CPU"):
        q(torch.zeros(1, 3, 32, 32, device="meta"))


def test_seven_bit_activations_track_float_on_any_cpu(trained_encoder, digits):
    """The path CPUs without VNNI take by default (x86 kernels, 7-bit activations), forced, so a VNNI
    machine exercises it too (there the test above runs the full 8-bit range)."""
    train, test = digits
    x = torch.stack([test[i][0] for i in range(256)])
    q = quantize_encoder(trained_encoder, train, num_calibration=512, backend=ENGINES[0], reduce_range=True)
    assert q.reduce_range is True and "7-bit" in repr(q)
    with torch.no_grad():
        f, g = trained_encoder(x).numpy(), q(x).numpy()
    assert np.corrcoef(f.ravel(), g.ravel())[0, 1] > 0.99


def test_activation_range_follows_the_cpu(monkeypatch):
    """Without VNNI, fbgemm/oneDNN sum u8 x s8 pairs in int16: 8-bit activations saturate, so the
    default drops to 7 bits; with VNNI (int32 sums) and on qnnpack the full range is kept."""
    from ssl_rep import quantize
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: False)
    assert quantize.needs_reduce_range("x86") and quantize.needs_reduce_range("fbgemm")
    assert quantize.needs_reduce_range("onednn") and not quantize.needs_reduce_range("qnnpack")
    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    assert not any(quantize.needs_reduce_range(e) for e in ("x86", "fbgemm", "onednn", "qnnpack"))
    for cap, vnni in (("AVX2", False), ("avx512_core", False), ("AVX512_CORE_VNNI", True), ("AVX2_VNNI", True),
                      ("AVX512_CORE_AMX", True), ("ALL", True)):   # oneDNN capped below VNNI runs the int16 path
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        assert quantize.needs_reduce_range("onednn") == quantize.needs_reduce_range("x86") == (not vnni), cap
        assert not quantize.needs_reduce_range("fbgemm")


AVX2_ONEDNN_SCRIPT = """
import sys, numpy as np, torch, ssl_rep
from ssl_rep.quantize import quantize_encoder
enc = ssl_rep.create_encoder("resnet20")
enc.load_state_dict(torch.load(sys.argv[1], weights_only=True))
enc.eval()
calib, x = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    f = enc(x).numpy()
    for reduce_range in (None, False):
        q = quantize_encoder(enc, calib, num_calibration=512, backend="onednn", reduce_range=reduce_range)
        print(q.reduce_range, np.corrcoef(f.ravel(), q(x).numpy().ravel())[0, 1])
"""


@pytest.mark.skipif("onednn" not in ENGINES, reason="this PyTorch build has no onednn engine")
def test_oneDNN_without_vnni_saturates_8_bits_and_the_default_range_avoids_it(trained_encoder, digits, tmp_path):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes oneDNN run the kernels of a CPU without VNNI (int16 pair sums) on any x86
    CPU, so this runs the AVX2-only path on a VNNI machine too: the default picks 7 bits and tracks float, while
    the full 8-bit range (the default before the fix) saturates and tracks it less well."""
    train, test = digits
    torch.save(trained_encoder.state_dict(), tmp_path / "enc.pt")
    torch.save((torch.stack([train[i][0] for i in range(512)]), torch.stack([test[i][0] for i in range(256)])),
               tmp_path / "images.pt")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", AVX2_ONEDNN_SCRIPT, str(tmp_path / "enc.pt"), str(tmp_path / "images.pt")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (default_range, default_corr), (full_range, full_corr) = [
        (line.split()[0] == "True", float(line.split()[1])) for line in out.stdout.split("\n") if line.strip()]
    assert default_range and not full_range
    assert default_corr > 0.99 and full_corr < default_corr, (default_corr, full_corr)


def test_quantization_aware_finetuning_runs_and_stays_close(trained_encoder, digits):
    """The fine-tuning learns: the int8 encoder after 3 passes at the default rate is closer (MSE) to the float
    features than the same fake-quantized model with the rate at 0, on the images it trained on and on others."""
    train, test = digits
    x = torch.stack([test[i][0] for i in range(128)])
    cal = torch.stack([train[i][0] for i in range(128)])
    q = quantize_encoder(trained_encoder, train, num_calibration=128, qat_epochs=3)
    frozen = quantize_encoder(trained_encoder, train, num_calibration=128, qat_epochs=3, qat_lr=0.0)
    assert q.reduce_range == ssl_rep.quantize.needs_reduce_range(q.backend)
    with torch.no_grad():
        f, g = trained_encoder(x), q(x)
        mse = {name: [float(((model(images) - trained_encoder(images)) ** 2).mean()) for images in (cal, x)]
               for name, model in (("qat", q), ("frozen", frozen))}
    assert mse["qat"][0] < 0.95 * mse["frozen"][0] and mse["qat"][1] < mse["frozen"][1], mse   # ~16% lower here
    assert np.corrcoef(f.numpy().ravel(), g.numpy().ravel())[0, 1] > 0.99
    assert min(int(c.min()) for c in q.weight_codes().values()) >= -127


def test_feature_store_is_4x_smaller_and_the_evaluators_read_it(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16)) * 4
    y = np.repeat(np.arange(3), 200)
    X = np.maximum(centers[y] + rng.normal(size=(600, 16)), 0).astype(np.float32)   # ReLU-like: many exact zeros
    q = quantize_features(X)
    assert isinstance(q, QuantizedFeatures) and q.codes.dtype == np.int8
    assert q.stored_bytes < X.nbytes / 3.9
    assert np.array_equal(np.asarray(q)[X == 0], X[X == 0])   # zeros stay exactly zero
    assert np.abs(np.asarray(q) - X).max() <= q.scale.max() / 2 + 1e-5
    folder = save_features(tmp_path / "store", X, "int8")
    loaded = load_features(folder)
    assert isinstance(loaded.codes, np.memmap) and np.array_equal(loaded.codes, q.codes)
    full = LinearProbe(C=1.0, device="cpu").fit(X, y).score(X, y)
    assert LinearProbe(C=1.0, device="cpu").fit(loaded, y).score(loaded, y) == pytest.approx(full, abs=0.01)
    assert KNNClassifier(k=5).fit(loaded, y).score(X, y) > 0.95
    assert KNNClassifier(k=5, index="sq8").fit(X, y).score(X, y) > 0.95
    exact = KNNClassifier(k=5).fit(X, y).kneighbors(X[:50])[1]
    probe_all = KNNClassifier(k=5, index="ivf", nlist=8, nprobe=8).fit(X, y).kneighbors(X[:50])[1]
    assert (np.sort(probe_all, 1) == np.sort(exact, 1)).mean() > 0.99   # every cell searched: the exact neighbours
    assert KNNClassifier(k=5, index="ivf").fit(X, y).score(X, y) > 0.95
    labels = cluster(loaded, "kmeans", n_clusters=3)
    assert len(np.unique(labels)) == 3
    half = load_features(save_features(tmp_path / "half", X, "fp16"))
    assert half.dtype == np.float16 and half.nbytes == X.nbytes // 2
    with pytest.raises(ValueError, match="not a feature store"):
        load_features(tmp_path)


def test_cli_probe_with_int8(tmp_path, capsys):
    from ssl_rep.cli.probe import main
    main(["--checkpoint", "random:resnet20", "--data", "digits", "--out", str(tmp_path), "--quantize", "int8",
          "--cache-dir", "none", "--device", "cpu", "--knn-k", "20", "--C", "0.1"])
    import json
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["quantize"] == "int8" and 0.5 < result["top1"] <= 1.0


def test_cli_cluster_with_int8(tmp_path):
    import json

    from ssl_rep.cli.cluster import main
    main(["--checkpoint", "random:resnet20", "--data", "digits", "--split", "test", "--out", str(tmp_path),
          "--quantize", "int8", "--cache-dir", "none", "--device", "cpu", "--methods", "kmeans"])
    result = json.loads((tmp_path / "clusters.json").read_text())
    assert result["quantize"] == "int8" and 0.1 < result["methods"]["kmeans"]["scores"]["acc"] <= 1.0
