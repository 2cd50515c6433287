"""The GPU-resident data path's augmentations (they run on any device; the CPU checks them here)."""
import warnings

import numpy as np
import pytest
import torch

import ssl_rep
from ssl_rep.train.sampling import EpochSampler
from ssl_rep.data.batched import colour_jitter, crop_flip, resized_crop_flip
from ssl_rep.train.loaders import ResidentLoader


def test_crop_flip_is_a_zero_padded_translation_or_its_mirror():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8) + 1
    out = crop_flip(x.repeat(20, 1, 1, 1), 2, gen)
    padded = torch.nn.functional.pad(x.repeat(20, 1, 1, 1), (2, 2, 2, 2))
    for i in range(len(out)):
        candidates = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in candidates)
    small = crop_flip(x.repeat(20, 1, 1, 1), 2, gen, size=5)   # RandomCrop(5, padding=2): data.image_size below native
    assert small.shape == (40, 3, 5, 5)
    seen = set()
    for i in range(len(small)):
        found = [(dy, dx) for dy in range(8) for dx in range(8) for c in [padded[i, :, dy:dy + 5, dx:dx + 5]]
                 if torch.equal(small[i], c) or torch.equal(small[i], c.flip(-1))]
        assert found, i
        seen.update(found)
    assert len(seen) > 10   # offsets spread over the padded image, not one corner
    with pytest.raises(ValueError, match="a 13x13 crop does not fit 8x8 images padded by 2"):
        crop_flip(x, 2, gen, size=13)


def test_resized_crop_keeps_geometry_monotone_and_flips_some():
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(40, 3, 32, 32).contiguous()
    out = resized_crop_flip(ramp, 16, gen, min_scale=0.5)
    assert out.shape == (40, 3, 16, 16)
    rows = out[:, 0, 8]
    steps = rows[:, 1:] - rows[:, :-1]
    increasing, decreasing = (steps >= -1e-6).all(1), (steps <= 1e-6).all(1)
    assert (increasing | decreasing).all() and increasing.any() and decreasing.any()
    spans = rows.max(1).values - rows.min(1).values
    assert spans.min() > 0.5 * np.sqrt(0.5) * 15 / 16  # a crop covers >= sqrt(min_scale * 3/4) of the width
    constant = torch.full((4, 3, 32, 32), 0.3)
    assert torch.allclose(resized_crop_flip(constant, 16, gen), torch.full((4, 3, 16, 16), 0.3))


def test_colour_jitter_keeps_range_and_grayscale_makes_equal_channels():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = colour_jitter(x, gen, p=1.0, p_gray=0.0)
    assert out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    gray = colour_jitter(x, gen, p=0.0, p_gray=1.0)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    same = colour_jitter(x, gen, p=0.0, p_gray=0.0)
    assert torch.equal(same, x)


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_batched_jitter_is_torchvisions_colour_jitter_with_per_image_factors(order):
    from torchvision.transforms.v2 import functional as TF
    from ssl_rep.data.batched import jitter
    torch.manual_seed(0)
    x = torch.rand(6, 3, 9, 11)
    b, c, s = (torch.empty(6).uniform_(0.2, 1.8) for _ in range(3))
    h = torch.empty(6).uniform_(-0.2, 0.2)
    out = jitter(x, b, c, s, h, order)
    ops = [lambda img, i: TF.adjust_brightness(img, b[i].item()), lambda img, i: TF.adjust_contrast(img, c[i].item()),
           lambda img, i: TF.adjust_saturation(img, s[i].item()), lambda img, i: TF.adjust_hue(img, h[i].item())]
    for i in range(6):
        expected = x[i]
        for op in order:
            expected = ops[op](expected, i)
        assert torch.allclose(out[i], expected, atol=1e-5), (i, (out[i] - expected).abs().max())


def test_batched_hue_matches_torchvision_on_gray_saturated_and_tied_pixels():
    from torchvision.transforms.v2 import functional as TF
    from ssl_rep.data.batched import _shift_hue
    pixels = [[0.5, 0.5, 0.5], [0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1],
              [1, 0, 1], [0.7, 0.7, 0.2], [0.2, 0.7, 0.7], [0.7, 0.2, 0.7], [0.3, 0.2, 0.2], [0.2, 0.3, 0.2]]
    x = torch.tensor(pixels).T.reshape(1, 3, 2, 7).expand(5, 3, 2, 7).contiguous()
    hue = torch.tensor([0.0, 0.2, -0.2, 0.5, -0.5])
    out = _shift_hue(x, hue)
    for i in range(5):
        assert torch.allclose(out[i], TF.adjust_hue(x[i], hue[i].item()), atol=1e-5), i


@pytest.mark.parametrize("per_call", [1, 4])
def test_resident_loader_order_determinism_and_resume(per_call):
    ds = ssl_rep.build_dataset("digits")
    make = lambda: ResidentLoader(ds.tensor(), torch.as_tensor(ds.labels), 100, seed=1,  # noqa: E731
                                     transform="simclr", stats="digits", size=32, n_views=2, device="cpu",
                                     batches_per_call=per_call)
    a, b = make(), make()
    a.set_epoch(3)
    batches = list(a)
    assert len(batches) == len(ds) // 100 and len(batches[0][0]) == 2 and batches[0][0][0].shape == (100, 3, 32, 32)
    order = EpochSampler(len(ds), 1, 100).order(3)
    for i in (0, 5, len(batches) - 1):
        assert torch.equal(batches[i][1], torch.as_tensor(ds.labels)[order[i * 100:(i + 1) * 100]])
    b.set_epoch(3, skip_batches=5)   # with 4 batches per call: resumes inside the second call
    resumed = list(b)
    assert len(resumed) == len(batches) - 5
    for (va, ya), (vb, yb) in zip(batches[5:], resumed):
        assert torch.equal(ya, yb) and all(torch.equal(p, q) for p, q in zip(va, vb))
    assert not torch.equal(batches[0][0][0], batches[0][0][1])  # two different views
    assert not torch.equal(batches[0][0][0], batches[1][0][0])
    views = torch.cat([v[0] for v, _ in batches])               # normalised with digits' statistics
    assert abs(views.mean().item()) < 0.5 and 0.5 < views.std().item() < 1.5


@pytest.mark.parametrize("transform", ["cifar_train", "simclr", "eval", "none"])
def test_resident_loader_batches_are_nchw_and_match_the_images(transform):
    """ArrayImageDataset.tensor() is a channels-last view; the batches must still come out NCHW (the layout the
    loop trains in: a channels-last batch would cost a conversion per step or change the encoder's kernels)."""
    ds = ssl_rep.build_dataset("digits", split="test")
    loader = ResidentLoader(ds.tensor(), torch.as_tensor(ds.labels), 16, 0, transform, None, 32,
                               n_views=2 if transform == "simclr" else 1, device="cpu")
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    for view in images if transform == "simclr" else [images]:
        assert view.shape == (16, 3, 32, 32) and view.is_contiguous()
    if transform in ("eval", "none"):   # no augmentation: the images themselves, scaled to [0, 1]
        expected = torch.from_numpy(ds.images[loader.sampler.rank_order("cpu")[0].numpy()]).permute(0, 3, 1, 2)
        torch.testing.assert_close(images, expected.float() / 255)


def test_resident_loader_per_rank_batches_are_the_one_process_batch():
    ds = ssl_rep.build_dataset("digits")
    make = lambda rank, world, b: ResidentLoader(ds.tensor(), torch.as_tensor(ds.labels), b, seed=2,  # noqa: E731
                                                    transform="none", stats=None, size=8, device="cpu",
                                                    rank=rank, world_size=world, batches_per_call=3)
    one = list(make(0, 1, 100))
    ranks = [list(make(r, 2, 50)) for r in range(2)]
    for i, (_, y) in enumerate(one):
        assert torch.equal(y, torch.cat([ranks[0][i][1], ranks[1][i][1]]))


@pytest.mark.gpu
def test_pretraining_on_cuda_with_resident_data_and_bf16(tmp_path):
    from ssl_rep.train import load_config, train
    from ssl_rep.train.metrics import read_metrics
    cfg = load_config("simclr_digits", [f"out_dir={tmp_path}", "trainer.max_steps=40", "trainer.device=cuda",
                                       "data.resident=on", "trainer.log_every=1", "trainer.epochs=100"])
    result = train(cfg, progress=False)
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert result.steps == 40 and np.isfinite(lines[-1]["loss"])
    assert np.mean([r["loss"] for r in lines[-5:]]) < np.mean([r["loss"] for r in lines[:5]])


@pytest.mark.gpu
def test_cuda_features_and_probe_agree_with_cpu():
    from ssl_rep.data import build_transform
    from ssl_rep.eval import LinearProbe, extract_features
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20")
    t = build_transform("eval", stats="digits", resize=None)
    train, test = ssl_rep.build_dataset("digits", transform=t), ssl_rep.build_dataset("digits", split="test", transform=t)
    Xc, y = extract_features(enc, train, device="cpu", progress=False)
    Xg, _ = extract_features(enc, train, device="cuda", progress=False)  # bf16 autocast
    corr = np.corrcoef(Xc.ravel(), Xg.ravel())[0, 1]
    assert corr > 0.99
    Xt, yt = extract_features(enc, test, device="cpu", progress=False)
    cpu = LinearProbe(C=0.1, device="cpu").fit(Xc, y).score(Xt, yt)
    gpu = LinearProbe(C=0.1, device="cuda").fit(Xc, y).score(Xt, yt)
    assert abs(cpu - gpu) <= 0.01


@pytest.mark.gpu
def test_cuda_features_with_the_overlapped_upload_equal_the_one_copy_path(monkeypatch):
    """``UPLOAD_CHUNKS`` (side-stream copies that overlap the forward passes) must not change a single feature."""
    from ssl_rep.data import build_transform
    from ssl_rep.eval import extract_features, features
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20")
    train = ssl_rep.build_dataset("digits", transform=build_transform("eval", stats="digits", resize=None))
    one_copy, y = extract_features(enc, train, batch_size=64, device="cuda", progress=False)
    monkeypatch.setattr(features, "UPLOAD_CHUNKS", 8)
    overlapped, y2 = extract_features(enc, train, batch_size=64, device="cuda", progress=False)
    # the same kernels on the same batches; the tolerance only allows another cuDNN algorithm choice, while a copy
    # read before it landed would give other images' features
    np.testing.assert_allclose(overlapped, one_copy, rtol=1e-2, atol=1e-3)
    np.testing.assert_array_equal(y2, y)


@pytest.mark.gpu
def test_real_cuda_out_of_memory_names_the_batch_size(tmp_path):
    import gc

    from ssl_rep.train import DeviceMemoryError, load_config, train
    cfg = load_config("simclr_digits", [f"out_dir={tmp_path}", "trainer.max_steps=2", "trainer.device=cuda",
                                       "data.batch_size=1024", "data.image_size=512", "data.resident=on"])
    with pytest.raises(DeviceMemoryError, match=r"out of memory on .*GiB.*data.batch_size=1024 .*"
                                                r"Try data.batch_size=512"):
        train(cfg, progress=False)
    gc.collect()
    torch.cuda.empty_cache()
    assert torch.cuda.memory_allocated() < 1 << 30   # the failed run let go of its memory


@pytest.mark.gpu
def test_sync_batchnorm_on_cuda_trains_like_batchnorm_in_one_process(tmp_path, caplog):
    """trainer.sync_batchnorm=true converts the model on CUDA; with one process its statistics are the
    batch's own, so 3 fp32 steps end at BatchNorm's weights. (Statistics over several processes need
    one GPU per process: NCCL refuses two ranks on one device.)"""
    from ssl_rep.train import load_config, train
    common = ["data.batch_size=64", "trainer.device=cuda", "trainer.precision=fp32", "trainer.deterministic=true",
              "trainer.max_steps=3", "trainer.online_probe=false", "data.resident=on"]
    for sync in ("true", "false"):
        with caplog.at_level("INFO", logger="ssl_rep.train"):
            train(load_config("simclr_digits", [*common, f"trainer.sync_batchnorm={sync}", f"out_dir={tmp_path / sync}"]),
                  progress=False)
    assert "20 BatchNorm layers synchronise over 1 process" in caplog.text   # ResNet-20 has 19, the projection head 1
    a, b = (torch.load(tmp_path / s / "encoder.pt", weights_only=True)["state_dict"] for s in ("true", "false"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


@pytest.mark.gpu
def test_cuda_loader_augments_several_batches_per_call_and_resumes_exactly():
    ds = ssl_rep.build_dataset("digits")
    make = lambda: ResidentLoader(ds.tensor(), torch.as_tensor(ds.labels), 64, seed=3,  # noqa: E731
                                     transform="simclr", stats="digits", size=32, n_views=2, device="cuda")
    a, b = make(), make()
    assert a.batches_per_call == 16
    a.set_epoch(1)
    b.set_epoch(1, skip_batches=19)
    straight, resumed = list(a), list(b)
    assert len(resumed) == len(straight) - 19
    for (va, ya), (vb, yb) in zip(straight[19:], resumed):
        assert torch.equal(ya, yb) and all(torch.equal(p, q) for p, q in zip(va, vb))


def test_gray_sets_are_stored_once_and_every_path_reads_the_same_pixels(tmp_path):
    """digits and Fashion-MNIST keep their one channel once (a read-only RGB view with channel stride 0: a third of
    the memory); the resident loader uploads that channel and repeats it on the device, feature extraction's batched
    path likewise, and a data.subset stays shared. Every path gives what a dense RGB copy of the same images gives."""
    from ssl_rep.data import build_transform
    from ssl_rep.data.base import ArrayImageDataset, shares_channels, stored_bytes
    from ssl_rep.eval.features import batched_source
    from ssl_rep.train import load_config
    from ssl_rep.train.data import build_train_dataset
    ds = ssl_rep.build_dataset("digits", split="test")
    dense = ArrayImageDataset(np.ascontiguousarray(ds.images), ds.labels, name="dense")
    assert shares_channels(ds.images) and not shares_channels(dense.images)
    assert ds.images[..., 0].flags.c_contiguous   # the one channel is all the memory there is (not a 3-channel copy)
    assert stored_bytes(ds.images) * 3 == stored_bytes(dense.images) == dense.images.nbytes
    torch.testing.assert_close(ds[7][0], dense[7][0], rtol=0, atol=0)

    make = lambda images: ResidentLoader(images, torch.as_tensor(ds.labels), 32, seed=4, transform="simclr",  # noqa: E731
                                         stats="digits", size=32, n_views=2, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # torch warns on a read-only numpy view: the channel must be copied out
        shared, copy = make(ds.tensor()), make(dense.tensor())
    assert shared.images.stride(1) == 0 and copy.images.stride(1) != 0   # one channel held, three views of it
    for loader in (shared, copy):
        loader.set_epoch(2)
    for (va, ya), (vb, yb) in zip(shared, copy):
        assert torch.equal(ya, yb) and all(torch.equal(p, q) for p, q in zip(va, vb))

    for data in (ds, dense):
        data.transform = build_transform("eval", stats="digits", size=None, resize=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, want = (torch.cat([x for x, _ in batched_source(d, 100, torch.device("cpu"))]) for d in (ds, dense))
    torch.testing.assert_close(got, want, rtol=0, atol=0)

    cfg = load_config("simclr_digits", [f"out_dir={tmp_path}", "data.subset=200"])
    assert shares_channels(build_train_dataset(cfg)[0].images)


@pytest.mark.parametrize("size", [40, 64])
def test_cifar_train_at_another_size_pads_and_crops_the_whole_image_resized(size):
    """A small set trained at another size (Fashion-MNIST at 32 px, CIFAR at 64): each image is resized whole to
    the size first, as evaluation reads it, then zero-padded by size // 8 and cropped, in the DataLoader and the
    resident paths alike. Before, 40 px kept a 32-px image at its own scale and 64 px could not crop it at all."""
    from PIL import Image

    from ssl_rep.data.batched import augment_batch
    from ssl_rep.data.transforms import mean_std
    from ssl_rep.train import load_config
    from ssl_rep.train.data import choose_transform

    mean, std = mean_std("digits")
    white = ((1 - mean) / std)[0, :, 0, 0]
    least = (size - size // 8) ** 2   # pixels of a white image that any crop keeps, padding at most size // 8
    transform = choose_transform(load_config("supervised_digits", ["data.transform=cifar_train"]), size, native=32)[0]
    torch.manual_seed(0)
    for _ in range(8):
        out = transform(Image.new("RGB", (32, 32), (255, 255, 255)))
        assert out.shape == (3, size, size) and int(((out[0] - white[0]).abs() < 1e-3).sum()) >= least
    gen = torch.Generator().manual_seed(0)
    batch = augment_batch(torch.full((8, 3, 32, 32), 255, dtype=torch.uint8), "cifar_train", size, gen, -mean / std,
                          1 / std, 1 / (255 * std))
    assert batch.shape == (8, 3, size, size)
    assert (((batch[:, 0] - white[0]).abs() < 1e-3).sum(dim=(1, 2)) >= least).all()
