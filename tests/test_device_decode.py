"""data.decode_on=device: workers read files, the training device decodes JPEG batches and augments them.

On the CPU the same code runs with torchvision's CPU decoder (libjpeg-turbo, as PIL), so these tests
check routing, pixels, crop parameters and resume; tests/test_resident.py checks nvjpeg on a GPU.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_rep.data import build_dataset, load_rgb
from ssl_rep.data.decode import ImageDecodeError
from ssl_rep.data.device_decode import JPEG, PIXELS, decode_batch, encode_for_device, read_for_device
from ssl_rep.train import ConfigError, load_config, train
from ssl_rep.train.data import build_train_dataset
from ssl_rep.train.loaders import build_loader
from ssl_rep.data.batched import gaussian_blur

from runs import straight_and_resumed
from test_data import write_mixed_folder


def smooth_image(rng, h, w) -> Image.Image:
    """Low-frequency colour fields: resampling differences between PIL and tensors stay small."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    channels = [np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform(0.5, 2) * yy) + rng.uniform(0, 6))
                for _ in range(3)]
    return Image.fromarray((127.5 * (1 + np.stack(channels, -1))).astype(np.uint8))


def write_jpeg_folder(root, n_per_class=6, size=(80, 60)):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            smooth_image(rng, size[1], size[0]).save(root / c / f"{i}.jpg", quality=95)
    return root


def test_only_plain_rgb_jpegs_go_to_the_device_and_every_file_decodes_like_load_rgb(tmp_path):
    write_mixed_folder(tmp_path / "pile")
    rotated = Image.new("RGB", (20, 10), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "pile" / "rotated.jpg", exif=exif.tobytes())
    smooth_image(np.random.default_rng(1), 30, 40).save(tmp_path / "pile" / "photo.jpg")
    Image.new("L", (9, 7), 77).save(tmp_path / "pile" / "gray.jpg")
    ds = build_dataset(tmp_path / "pile")
    paths = [p for p, _ in ds.samples]
    items = [read_for_device(p) for p in paths]
    kinds = {p.split("/")[-1]: k for p, (k, _) in zip(paths, items)}
    assert {n for n, k in kinds.items() if k == JPEG} == {"good.jpg", "photo.jpg"}
    assert kinds["cmyk.jpg"] == kinds["rotated.jpg"] == kinds["gray.jpg"] == kinds["alpha.PNG"] == PIXELS
    decoded = decode_batch([k for k, _ in items], [p for _, p in items], paths, torch.device("cpu"))
    for path, image in zip(paths, decoded):
        expected = torch.from_numpy(np.asarray(load_rgb(path)).copy()).permute(2, 0, 1)
        assert image.dtype == torch.uint8 and torch.equal(image, expected), path
    assert decoded[paths.index(next(p for p in paths if p.endswith("rotated.jpg")))].shape == (3, 20, 10)
    with pytest.raises(ImageDecodeError, match="notes.png"):
        read_for_device(str(tmp_path / "pile" / "notes.png"))


def test_a_corrupt_jpeg_in_a_batch_is_none_and_the_others_still_decode(tmp_path, caplog):
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(good, "JPEG")
    data = good.getvalue()
    cut = data[:len(data) * 3 // 4]
    kinds, payloads = zip(*(encode_for_device(d, n) for d, n in ((data, "ok.jpg"), (cut, "cut.jpg"))))
    assert kinds == (JPEG, JPEG)   # the header is fine; the damage is in the entropy-coded data
    out = decode_batch(list(kinds), list(payloads), ["ok.jpg", "cut.jpg"], torch.device("cpu"))
    assert out[1] is None and "cut.jpg" in caplog.text
    assert torch.equal(out[0], torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1))


def test_batched_blur_matches_torchvision_gaussian_blur():
    from torchvision.transforms.v2 import functional as TF
    x = torch.rand(3, 3, 20, 24)
    gen = torch.Generator().manual_seed(0)
    out = gaussian_blur(x, 7, gen, p=1.0, sigma=(1.3, 1.3))
    for i in range(3):
        assert torch.allclose(out[i], TF.gaussian_blur(x[i], [7, 7], [1.3, 1.3]), atol=1e-5)
    assert torch.equal(gaussian_blur(x, 7, gen, p=0.0), x)


def first_batch(folder, decode_on: str, transform: str, seed: int = 0):
    cfg = load_config("simclr_digits" if transform == "simclr" else "ae_digits",
                      [f"data.dataset={folder}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
                       f"data.transform={transform}", f"data.decode_on={decode_on}", f"seed={seed}",
                       "trainer.device=cpu"])
    dataset, size, _, name = build_train_dataset(cfg)
    loader, sampler = build_loader(dataset, cfg, torch.device("cpu"), cfg.seed, transform_name=name, size=size)
    sampler.set_epoch(1, 1)
    return next(iter(loader))


@pytest.mark.parametrize("transform", ["imagenet_rrc", "imagenet_train", "eval"])
def test_device_path_draws_the_same_crops_and_flips_as_the_worker_path(tmp_path, transform):
    folder = write_jpeg_folder(tmp_path / "jpegs")
    (workers_x, workers_y), (device_x, device_y) = (first_batch(folder, d, transform) for d in ("workers", "device"))
    assert torch.equal(workers_y, device_y) and workers_x.shape == device_x.shape == (4, 3, 32, 32)
    # Same boxes and flips, pixels resampled by PIL vs tensors: close. Another seed draws other crops: far.
    assert (workers_x - device_x).abs().mean() < 0.05
    other, _ = first_batch(folder, "device", transform, seed=1)
    if transform != "eval":
        assert (workers_x - other).abs().mean() > 0.2


def test_simclr_views_on_the_device(tmp_path):
    folder = write_jpeg_folder(tmp_path / "jpegs")
    views, labels = first_batch(folder, "device", "simclr")
    assert len(views) == 2 and views[0].shape == views[1].shape == (4, 3, 32, 32) and labels.shape == (4,)
    assert not torch.equal(views[0], views[1])


def test_decode_on_device_pretrains_and_resumes_exactly_and_refuses_in_memory_data(tmp_path):
    folder = write_jpeg_folder(tmp_path / "jpegs")
    common = [f"data.dataset={folder}", "data.image_size=32", "data.batch_size=4", "data.num_workers=0",
              "data.decode_on=device", "trainer.device=cpu", "trainer.deterministic=true", "trainer.log_every=1",
              "trainer.checkpoint_every=2", "optim.name=adamw", "optim.lr=0.001", "trainer.online_probe=false"]
    straight, same = straight_and_resumed("simclr_digits", common, tmp_path, stop=2, total=5)
    assert straight.steps == 5 and np.isfinite(straight.final_loss) and same
    with pytest.raises(ConfigError, match="data.decode_on=device .* not 'digits'"):
        train(load_config("ae_digits", ["data.decode_on=device", f"out_dir={tmp_path / 'c'}"]), progress=False)



def test_shards_decode_on_device_draw_the_worker_paths_crops_and_resume_exactly(tmp_path):
    pytest.importorskip("webdataset")
    from ssl_rep.data.shards import write_shards
    write_shards(write_jpeg_folder(tmp_path / "jpegs"), tmp_path / "shards", max_count=4, progress=False)
    (workers_x, workers_y), (device_x, device_y) = (first_batch(tmp_path / "shards", d, "imagenet_rrc")
                                                    for d in ("workers", "device"))
    assert torch.equal(workers_y, device_y) and (workers_x - device_x).abs().mean() < 0.05
    common = [f"data.dataset={tmp_path / 'shards'}", "data.image_size=32", "data.batch_size=2", "data.num_workers=0",
              "data.decode_on=device", "trainer.device=cpu", "trainer.deterministic=true", "trainer.log_every=1",
              "trainer.checkpoint_every=2", "optim.name=adamw", "optim.lr=0.001", "trainer.online_probe=false"]
    straight, same = straight_and_resumed("ae_digits", common, tmp_path, stop=3, total=8)
    assert straight.steps == 8 and same

@pytest.mark.gpu
def test_nvjpeg_on_cuda_matches_the_cpu_decoder_and_trains(tmp_path):
    folder = write_jpeg_folder(tmp_path / "jpegs")
    write_mixed_folder(folder / "a")   # CMYK, gray, PNG, ... travel as pixels; bad files are skipped
    ds = build_dataset(folder)
    paths = [p for p, _ in ds.samples]
    items = [read_for_device(p) for p in paths]
    kinds, payloads = [k for k, _ in items], [p for _, p in items]
    on_gpu = decode_batch(kinds, payloads, paths, torch.device("cuda"))
    on_cpu = decode_batch(kinds, payloads, paths, torch.device("cpu"))
    assert sum(k == JPEG for k in kinds) >= 12
    for path, g, c in zip(paths, on_gpu, on_cpu):
        assert g.is_cuda and g.shape == c.shape
        # nvjpeg's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels (4.0 mean absolute
        # difference on an H100 for a/0.jpg): same picture (PSNR >= 30 dB), same mean colour
        diff = g.cpu().float() - c.float()
        psnr = 20 * np.log10(255 / max(diff.pow(2).mean().sqrt().item(), 1e-6))
        print(f"{path}: mean |diff| {diff.abs().mean():.2f}, PSNR {psnr:.1f} dB")
        assert psnr >= 30 and diff.mean(dim=(1, 2)).abs().max() < 2.0, path
    result = train(load_config("simclr_digits", [f"data.dataset={folder}", "data.image_size=64", "data.batch_size=8",
                                                 "data.num_workers=2", "data.decode_on=device", "trainer.device=cuda",
                                                 "trainer.max_steps=4", f"out_dir={tmp_path / 'run'}"]), progress=False)
    assert result.steps == 4 and np.isfinite(result.final_loss)
