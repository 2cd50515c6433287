import pytest
import torch
from torch import nn

import ssl_rep
from ssl_rep.encoders.cifar_resnet import PadShortcut


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name,expected_m", [("resnet20", 0.27), ("resnet32", 0.46), ("resnet44", 0.66),
                                              ("resnet56", 0.85), ("resnet110", 1.7)])
def test_cifar_resnet_parameter_counts_match_paper(name, expected_m):
    enc = ssl_rep.create_encoder(name)
    with_classifier = n_params(enc) + enc.num_features * 10 + 10
    assert round(with_classifier / 1e6, 2 if expected_m < 1 else 1) == expected_m
    assert enc.num_features == 64


def test_resnet20_exact_count_and_option_b_adds_projections():
    a = ssl_rep.create_encoder("resnet20")
    b = ssl_rep.create_encoder("resnet20", shortcut="B")
    assert n_params(a) + 650 == 269_722  # 16/32/64 filters, no conv bias, option A
    # option B: two 1x1 projections (16->32, 32->64) with their BatchNorms
    assert n_params(b) - n_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_torchvision_resnet50_body_and_fc_counts():
    enc = ssl_rep.create_encoder("resnet50")
    assert n_params(enc) == 23_508_032
    assert n_params(enc) + 2048 * 1000 + 1000 == 25_557_032
    assert enc.num_features == 2048


def test_no_conv_bias_in_cifar_resnets():
    for name in ("resnet20", "resnet56"):
        for shortcut in ("A", "B"):
            convs = [m for m in ssl_rep.create_encoder(name, shortcut=shortcut).modules() if isinstance(m, nn.Conv2d)]
            assert convs and all(c.bias is None for c in convs)


def test_option_a_shortcut_is_subsampled_identity_with_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(8)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


@pytest.mark.parametrize("name,kwargs,size,channels,spatial", [
    ("resnet20", {}, 32, 64, 8),
    ("resnet110", {"shortcut": "B"}, 32, 64, 8),
    ("resnet18", {"stem": "cifar"}, 32, 512, 4),
    ("resnet18", {}, 64, 512, 2),
    ("resnet34", {"stem": "cifar"}, 32, 512, 4),
    ("resnet50", {}, 64, 2048, 2),
    ("timm:resnet10t", {}, 64, 512, 2),
    ("timm:vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8}, 32, 192, 4),
    ("mlp", {"image_size": 28, "hidden": [64, 32]}, 28, 32, 1),
])
def test_every_encoder_has_the_same_interface(name, kwargs, size, channels, spatial):
    enc = ssl_rep.create_encoder(name, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        feats, fmap = enc(x), enc.feature_map(x)
    assert enc.num_features == channels
    assert feats.shape == (2, channels)
    assert fmap.shape == (2, channels, spatial, spatial)
    assert torch.isfinite(feats).all()
    if not name.startswith("timm:vit"):  # ViT pools by its class token, not the patch grid
        torch.testing.assert_close(feats, fmap.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5)
    assert enc.encoder_name == name and enc.encoder_kwargs == kwargs


def test_cifar_stem_downsamples_by_8_imagenet_stem_by_32():
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ssl_rep.create_encoder("resnet18", stem="cifar").eval().feature_map(x).shape[-1] == 8
        assert ssl_rep.create_encoder("resnet18", stem="imagenet").eval().feature_map(x).shape[-1] == 2


def test_in_chans_option():
    for name, kw in (("resnet20", {}), ("resnet18", {"stem": "cifar"}), ("resnet18", {}), ("timm:resnet10t", {})):
        enc = ssl_rep.create_encoder(name, in_chans=1, **kw)
        assert enc(torch.randn(2, 1, 32, 32)).shape == (2, enc.num_features)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError) as err:
        ssl_rep.create_encoder("resnet21")
    for valid in ("resnet20", "resnet110", "resnet50", "timm:<name>"):
        assert valid in str(err.value)
    with pytest.raises(ValueError, match="unknown timm model"):
        ssl_rep.create_encoder("timm:not_a_model_xyz")
    with pytest.raises(ValueError, match="shortcut"):
        ssl_rep.create_encoder("resnet20", shortcut="C")
    with pytest.raises(ValueError, match="norm"):
        ssl_rep.create_encoder("resnet20", norm="instance")


def test_list_encoders_names():
    names = ssl_rep.list_encoders()
    assert names[:5] == ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert {"resnet18", "resnet34", "resnet50", "mlp"} <= set(names) and names[-1] == "timm:<name>"


def test_mlp_encoder_is_n2ds_reads_gray_as_one_channel_and_names_a_wrong_size():
    enc = ssl_rep.create_encoder("mlp", image_size=28).eval()
    linears = [m for m in enc.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3 * 784, 500), (500, 500), (500, 2000)]
    assert isinstance(enc.net[-1], nn.ReLU) and not any(m.bias.any() for m in linears)   # Keras' zero biases
    gray = ssl_rep.create_encoder("mlp", image_size=28, gray=True).eval()
    assert gray.net[0].in_features == 784
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():   # three equal channels read as the one gray image; colour as its channel mean
        torch.testing.assert_close(gray(x.expand(-1, 3, -1, -1)), gray.net(x.flatten(1)))
        colour = torch.rand(2, 3, 28, 28)
        torch.testing.assert_close(gray(colour), gray.net(colour.mean(1).flatten(1)))
    with pytest.raises(ValueError, match="reads 3x28x28 images.*got 3x32x32"):
        enc(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="hidden"):
        ssl_rep.create_encoder("mlp", image_size=28, hidden=[500, 0])


@pytest.mark.parametrize("norm", ["group", "layer", "none"])
def test_batch_free_norms_keep_images_independent(norm):
    # CPC relies on this: with no BatchNorm, one image's features do not depend on its batch.
    enc = ssl_rep.create_encoder("resnet20", norm=norm).train()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(enc(x)[:1], enc(x[:1]), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in enc.modules())


def test_batchnorm_encoder_does_depend_on_batch_in_train_mode():
    enc = ssl_rep.create_encoder("resnet20").train()
    x = torch.randn(4, 3, 16, 16)
    assert not torch.allclose(enc(x)[:1], enc(x[:1]), atol=1e-4)


def test_encoder_learns_a_tiny_supervised_task():
    torch.manual_seed(0)
    enc = ssl_rep.create_encoder("resnet20")
    head = nn.Linear(enc.num_features, 2)
    x = torch.randn(16, 3, 16, 16)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    opt = torch.optim.SGD([*enc.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(head(enc(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_out_features_widens_the_representation_with_a_1x1_conv_and_rebuilds_from_encoder_pt(tmp_path):
    """``out_features``: stage 3's map -> 1x1 conv (no bias) + norm + ReLU to that many channels; what a
    CPC patch encoder gets and what ``load_encoder`` rebuilds, norm swap included."""
    from ssl_rep.encoders.io import encoder_payload
    from ssl_rep.methods import create_method
    plain = ssl_rep.create_encoder("resnet20", width=32)
    wide = ssl_rep.create_encoder("resnet20", width=32, out_features=512)
    assert wide.num_features == 512 and wide(torch.randn(2, 3, 8, 8)).shape == (2, 512)
    assert n_params(wide) - n_params(plain) == 128 * 512 + 2 * 512   # the 1x1 conv and its BatchNorm
    assert (wide(torch.randn(2, 3, 8, 8)) >= 0).all()                 # after the ReLU, as every block ends
    method = create_method("cpc", wide)
    assert method.encoder.num_features == 512 and not any(isinstance(m, nn.BatchNorm2d) for m in wide.modules())
    torch.save(encoder_payload(method.encoder), tmp_path / "encoder.pt")
    rebuilt = ssl_rep.load_encoder(tmp_path / "encoder.pt").eval()
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(rebuilt(x), method.encoder.eval()(x))
    for bad in (0, -4, 2.5, True):
        with pytest.raises(ValueError, match="out_features"):
            ssl_rep.create_encoder("resnet20", out_features=bad)
