import numpy as np
import pytest
import torch
from PIL import Image

from ssl_rep.data import DATASET_STATS, MultiView, build_dataset, build_transform


def ramp_image(w, h):
    """Pixel (x, y) has red = x and green = y (mod 256), so a crop reveals where it was taken."""
    xs, ys = np.meshgrid(np.arange(w), np.arange(h))
    arr = np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr)


def test_cifar_train_is_a_translation_with_zero_padding_and_flip():
    torch.manual_seed(0)
    img = Image.fromarray(np.full((32, 32, 3), 200, np.uint8))
    t = build_transform("cifar_train", stats=None)
    saw_padding = False
    for _ in range(50):
        x = t(img)
        assert x.shape == (3, 32, 32)
        inside = torch.isclose(x, torch.tensor(200 / 255))
        zero = x == 0
        assert (inside | zero).all()  # only original pixels or zero padding
        # the padding forms at most 4 full rows and 4 full columns, and nothing else is zero
        zero_rows, zero_cols = zero.all(dim=(0, 2)), zero.all(dim=(0, 1))
        assert zero_rows.sum() <= 4 and zero_cols.sum() <= 4
        assert torch.equal(zero[0], zero_rows[:, None] | zero_cols[None, :])
        saw_padding |= bool(zero.any())
    assert saw_padding


def test_cifar_train_flips_sometimes():
    torch.manual_seed(0)
    img = ramp_image(32, 32)
    t = build_transform("cifar_train", stats=None, padding=0)
    flips = [bool(t(img)[0, 0, 0] > t(img)[0, 0, -1]) for _ in range(40)]
    assert 5 < sum(flips) < 35


def test_imagenet_train_scale_jitter_range_and_crop():
    from torchvision.transforms import v2 as T
    torch.manual_seed(0)
    img = ramp_image(400, 300)
    t = build_transform("imagenet_train", stats=None)
    assert t(img).shape == (3, 224, 224)
    jitter = t.transforms[0]
    assert isinstance(jitter, T.RandomShortestSize)
    sides = {min(jitter(img).size) for _ in range(200)}
    assert min(sides) >= 256 and max(sides) <= 480 and len(sides) > 50


def test_eval_is_resize_256_then_true_center_crop():
    img = ramp_image(512, 256)  # already 256 on the short side, so the resize is the identity
    x = build_transform("eval", stats=None, size=224)(img)
    assert x.shape == (3, 224, 224)
    left, top = (512 - 224) // 2, (256 - 224) // 2
    assert x[0, 0, 0] * 255 == pytest.approx(left % 256, abs=0.5)
    assert x[1, 0, 0] * 255 == pytest.approx(top, abs=0.5)
    assert x[1, -1, 0] * 255 == pytest.approx(top + 223, abs=0.5)
    small = build_transform("eval", stats=None, resize=None)(ramp_image(32, 32))
    assert small.shape == (3, 32, 32)


def test_ten_crop_corners_center_and_flips():
    img = ramp_image(256, 256)
    x = build_transform("ten_crop", stats=None, size=224)(img)
    assert x.shape == (10, 3, 224, 224)
    # the last five are the five crops of the mirrored image: tl' = flip(tr), tr' = flip(tl), ...
    for flipped, original in zip(range(5, 10), (1, 0, 3, 2, 4)):
        assert torch.equal(x[flipped], x[original].flip(-1))
    assert x[0, 0, 0, 0] == 0 and x[0, 1, 0, 0] == 0  # top-left corner
    assert x[1, 0, 0, 0] * 255 == pytest.approx(32)  # top-right starts at x = 256 - 224
    assert x[4, 0, 0, 0] * 255 == pytest.approx(16)  # center


def test_normalisation_uses_dataset_statistics():
    img = Image.fromarray(np.full((8, 8, 3), 255, np.uint8))
    x = build_transform("eval", stats="cifar10", resize=None)(img)
    mean, std = DATASET_STATS["cifar10"]
    assert torch.allclose(x[:, 0, 0], (1 - torch.tensor(mean)) / torch.tensor(std))
    with pytest.raises(ValueError, match="known: digits"):
        build_transform("eval", stats="mnist")
    with pytest.raises(ValueError, match="valid: cifar_train"):
        build_transform("autoaugment")


def test_every_spelling_build_dataset_reads_gets_that_datasets_statistics(tmp_path, monkeypatch):
    """The spellings build_dataset accepts (case, _ for -, cifar-10, stl-10, fashionmnist) normalise with that
    dataset's statistics, not ImageNet's; a folder gets ImageNet's and is recorded by its absolute path."""
    from ssl_rep.data import dataset_id, stats_for

    for spelling, name in (("CIFAR-10", "cifar10"), ("cifar_100", "cifar100"), ("stl-10", "stl10"),
                           ("FashionMNIST", "fashion-mnist"), ("fashion_mnist", "fashion-mnist"), ("Digits", "digits")):
        assert stats_for(spelling) == name and dataset_id(spelling) == name, spelling
    (tmp_path / "imgs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert stats_for("imgs") == "imagenet" and dataset_id("imgs") == str(tmp_path.resolve() / "imgs")
    assert dataset_id("no/such/folder") == "no/such/folder"


def test_digits_statistics_match_the_data():
    images = build_dataset("digits").images / 255.0
    mean, std = DATASET_STATS["digits"]
    assert images.mean() == pytest.approx(mean[0], abs=1e-3)
    assert images.std() == pytest.approx(std[0], abs=1e-3)


def test_multiview_gives_independent_augmentations():
    torch.manual_seed(0)
    ds = build_dataset("digits", transform=MultiView(build_transform("simclr", stats="digits", size=32), 2))
    views, label = ds[0]
    assert len(views) == 2 and views[0].shape == (3, 32, 32)
    assert not torch.allclose(views[0], views[1])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    (v0, v1), y = next(iter(loader))
    assert v0.shape == v1.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_separable_blur_equals_torchvisions_gaussian_blur():
    """Same sigma draw, kernel, reflect padding and rounding as torchvision's 2-D blur, for every input type the
    SimCLR recipe may hand it (non-square kernel, so x and y are not swapped)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T
    from torchvision.transforms.v2 import functional as TF

    from ssl_rep.data.transforms import SeparableGaussianBlur
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((40, 37, 3)) * 255).astype(np.uint8))
    as_uint8 = TF.pil_to_tensor(img)
    for inpt in (img, as_uint8, tv_tensors.Image(as_uint8), as_uint8.float() / 255):
        torch.manual_seed(3)
        ref = T.GaussianBlur((9, 5), sigma=(0.5, 2.0))(inpt)
        torch.manual_seed(3)
        ours = SeparableGaussianBlur((9, 5), sigma=(0.5, 2.0))(inpt)
        assert type(ours) is type(ref)
        if isinstance(ref, Image.Image):
            ref, ours = TF.pil_to_tensor(ref), TF.pil_to_tensor(ours)
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours.float(), ref.float(), atol=1e-5 if ref.is_floating_point() else 1, rtol=0)
        assert not torch.equal(TF.to_dtype(ours, torch.float32, scale=True),
                               TF.to_dtype(as_uint8, torch.float32, scale=True))   # it did blur
    simclr = build_transform("simclr", size=224)
    assert any(isinstance(t, SeparableGaussianBlur) for op in simclr.transforms for t in getattr(op, "transforms", []))
