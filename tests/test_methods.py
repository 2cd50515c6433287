import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ssl_rep
from ssl_rep.data import MultiView, build_dataset, build_transform
from ssl_rep.methods import CPC, create_method
from ssl_rep.methods.context import create_context


@pytest.fixture(scope="module")
def digits_batch():
    ds = build_dataset("digits", transform=build_transform("eval", stats="digits", resize=None))
    x = torch.stack([ds[i][0] for i in range(32)])
    y = torch.tensor([ds[i][1] for i in range(32)])
    return x, y


@pytest.fixture(scope="module")
def digits_views():
    ds = build_dataset("digits", transform=MultiView(build_transform("simclr", stats="digits", size=32), 2))
    torch.manual_seed(0)
    items = [ds[i] for i in range(32)]
    views = [torch.stack([it[0][v] for it in items]) for v in range(2)]
    return views, torch.tensor([it[1] for it in items])


def train_steps(method, batch, steps, lr=1e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam(method.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, logs = method(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert float(logs["loss"]) == pytest.approx(loss.item())
    return losses


@pytest.mark.parametrize("name,kwargs,steps,drop", [
    ("autoencoder", {}, 25, 0.2),
    ("autoencoder", {"mode": "denoising"}, 25, 0.3),
    ("autoencoder", {"mode": "denoising", "noise": "masking"}, 25, 0.3),
    ("autoencoder", {"mode": "masked"}, 25, 0.6),   # hidden pixels from a 64-d code: harder than the rest
    ("cpc", {"context": "pixelcnn", "patch_jitter": 0, "patch_flip": 0.0}, 25, 0.9),
    ("cpc", {"context": "gru", "patch_jitter": 0, "patch_flip": 0.0}, 35, 0.9),   # 0.89 at 25 steps: too close
    ("cpc", {"context": "attention", "patch_jitter": 0, "patch_flip": 0.0}, 25, 0.95),
    ("supervised", {}, 25, 0.2),
])
def test_loss_falls_on_a_fixed_digits_batch(digits_batch, name, kwargs, steps, drop):
    torch.manual_seed(0)
    x, y = digits_batch
    batch = (x[:12], y[:12]) if name == "cpc" else (x, y)   # 12 images: 588 patches, each through the encoder
    if name == "autoencoder":   # digits are 8x8 upscaled: at 16 px the decoder's task is the same, 4x cheaper
        batch, kwargs = (F.interpolate(x, size=16, mode="bilinear", antialias=True), y), {**kwargs, "image_size": 16}
    method = create_method(name, ssl_rep.create_encoder("resnet20"), **kwargs)
    losses = train_steps(method, batch, steps)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < drop * first, losses


def test_simclr_loss_falls_and_contrast_accuracy_rises(digits_views):
    torch.manual_seed(0)
    method = create_method("simclr", ssl_rep.create_encoder("resnet20"))
    _, logs0 = method(digits_views)
    losses = train_steps(method, digits_views, 25)
    _, logs1 = method(digits_views)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert logs1["contrast_acc"] > logs0["contrast_acc"]


def test_simclr_logs_match_a_naive_count():
    """contrast_acc and pos_sim against a per-anchor loop; identical views make every positive the best match."""
    torch.manual_seed(0)
    method = create_method("simclr", ssl_rep.create_encoder("resnet20"))
    x = torch.randn(6, 3, 32, 32)
    _, same = method(([x, x], torch.zeros(6, dtype=torch.long)))
    assert same["contrast_acc"] == 1.0 and same["pos_sim"] == pytest.approx(1.0, abs=1e-5)
    views = [x, torch.randn(6, 3, 32, 32)]
    _, logs = method((views, torch.zeros(6, dtype=torch.long)))
    with torch.no_grad():
        z = torch.nn.functional.normalize(method.head(method.encoder(torch.cat(views))), dim=1)
    hits = 0
    for i in range(12):
        sims = [(float(z[i] @ z[j]), j) for j in range(12) if j != i]
        hits += max(sims)[1] == (i + 6) % 12
    assert float(logs["contrast_acc"]) == pytest.approx(hits / 12)
    assert float(logs["pos_sim"]) == pytest.approx(float((z[:6] * z[6:]).sum(1).mean()), abs=1e-5)


def test_simclr_needs_two_views(digits_batch):
    with pytest.raises(ValueError, match="MultiView"):
        create_method("simclr", ssl_rep.create_encoder("resnet20"))(digits_batch)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="unknown method .*valid: autoencoder, cpc, simclr, supervised, byol, moco"):
        create_method("byol2", ssl_rep.create_encoder("resnet20"))
    with pytest.raises(TypeError, match="create_method"):
        create_method("cpc", ssl_rep.create_encoder("resnet20"), no_such_option=1)


# ------------------------------------------------------------------ CPC
def future_of(grad: torch.Tensor, direction: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(patches after row i, patches up to row i)`` of a ``(B, gh, gw, ...)`` gradient, rows counted in
    ``direction``'s reading order (down, up, left to right, right to left)."""
    g = grad.transpose(1, 2) if direction >= 2 else grad
    g = g.flip(1) if direction % 2 else g
    return g[:, i + 1:], g[:, : i + 1]


@pytest.mark.parametrize("context", ["pixelcnn", "gru", "attention"])
def test_cpc_context_is_causal_in_every_direction(context):
    """d prediction(row i) / d patch(row u > i) is exactly zero, through encoder and context, for each of
    the four reading directions (rows of the grid turned that way); rows up to i do reach it."""
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20"), context=context, directions="all").train()
    patches = method.patchify(torch.randn(2, 3, 32, 32)).detach().requires_grad_(True)   # (2, 7, 7, 3, 8, 8)
    z = method.encode_patches(patches)
    assert z.shape[2:] == (7, 7) and len(method.contexts) == 4
    for direction in range(4):
        c = method.context_of(z, direction)
        for i in (0, 3):
            pred = method.predict(c, method.first_step, direction)[:, i]    # predictions made at row i
            (grad,) = torch.autograd.grad(pred.sum(), patches, retain_graph=True)
            future, past = future_of(grad, direction, i)
            assert torch.count_nonzero(future) == 0, (direction, i)
            assert torch.count_nonzero(past) > 0, (direction, i)


@pytest.mark.parametrize("patch_size,stride", [(8, 4), (8, 2), (6, 3), (7, 3), (64, 32), (8, 8), (5, 4)])
def test_cpc_default_targets_share_no_pixel_with_the_context(patch_size, stride):
    """Row i + k covers pixels [(i + k) s, (i + k) s + P); rows <= i end at i s + P. The default first
    offset is the smallest k with no shared pixel, computed by brute force over pixel sets here."""
    method = CPC(ssl_rep.create_encoder("resnet20"), patch_size=patch_size, stride=stride, prediction_steps=2)
    seen_until = lambda i: set(range(0, i * stride + patch_size))   # noqa: E731 - pixel rows of rows <= i
    target = lambda r: set(range(r * stride, r * stride + patch_size))   # noqa: E731
    smallest = next(k for k in range(1, 20) if all(not (seen_until(i) & target(i + k)) for i in range(10)))
    assert method.first_step == smallest and list(method.steps) == [smallest, smallest + 1]
    assert CPC(ssl_rep.create_encoder("resnet20"), first_step=1).first_step == 1   # still configurable


def test_cpc_patch_jitter_stays_in_its_cell_keeps_the_grid_and_is_off_in_eval():
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20"), patch_jitter=2, patch_flip=0.5)
    rows = torch.arange(32.0).view(1, 1, 32, 1).expand(2, 3, 32, 32)       # each pixel holds its row number
    patches = method.patchify(rows)
    jittered = method.jitter(patches)
    assert jittered.shape == patches.shape == (2, 7, 7, 3, 8, 8)
    for i in range(7):   # every value comes from its own cell's pixel rows
        cell = jittered[:, i]
        assert cell.min() >= 4 * i - 1e-4 and cell.max() <= 4 * i + 7 + 1e-4
    assert not torch.equal(jittered, patches)
    cols = torch.arange(32.0).view(1, 1, 1, 32).expand(1, 3, 32, 32)
    flipped = method.jitter(method.patchify(cols))   # some patches mirrored: columns decrease
    assert (flipped[..., 0] > flipped[..., -1]).any() and (flipped[..., 0] < flipped[..., -1]).any()
    calls = []
    method.jitter = lambda p: calls.append(1) or p
    method.eval()((rows, None))
    assert not calls   # eval: the plain grid
    method.train()((rows, None))
    assert calls == [1]


def test_cpc_grid_and_norm_replacement():
    enc = ssl_rep.create_encoder("resnet20")
    method = CPC(enc)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in method.encoder.modules())
    assert method.encoder.encoder_kwargs["encoder_kwargs"]["norm"] == "layer"
    assert method.encoder.inner is enc
    rebuilt = ssl_rep.create_encoder(method.encoder.encoder_name, **method.encoder.encoder_kwargs)
    rebuilt.load_state_dict(method.encoder.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt(x), method.encoder(x))
    torch.testing.assert_close(method.encoder(x), method.encoder.feature_map(x).mean(dim=(2, 3)))
    assert method.patchify(torch.zeros(1, 3, 32, 32)).shape == (1, 7, 7, 3, 8, 8)
    big = CPC(ssl_rep.create_encoder("resnet18"), patch_size=64, stride=32)
    assert big.patchify(torch.zeros(1, 3, 256, 256)).shape == (1, 7, 7, 3, 64, 64)
    kept = CPC(ssl_rep.create_encoder("resnet20"), patch_norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in kept.encoder.modules())


def test_cpc_encoder_reads_a_denser_grid_of_patches_at_the_training_crops_scale():
    """The saved encoder reads the grid at half the training stride, each patch as its central
    patch_size - patch_jitter px resized back (checked against torchvision's resized_crop, patch by patch);
    training still cuts the training grid; 0 turns either off; the settings survive a rebuild."""
    import torchvision.transforms.functional as TF
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20"), patch_jitter=2, prediction_steps=2)
    enc = method.encoder.eval()
    assert (enc.stride, enc.read_stride, enc.read_crop) == (4, 2, 6)
    x = torch.randn(2, 3, 28, 28)
    assert method.patchify(x).shape == (2, 6, 6, 3, 8, 8)            # training: the 6x6 grid at stride 4
    patches = enc.patchify(x, 2)
    assert patches.shape == (2, 11, 11, 3, 8, 8)
    naive = torch.stack([TF.resized_crop(patches[n, i, j], 1, 1, 6, 6, [8, 8], antialias=False)
                         for n in range(2) for i in range(11) for j in range(11)]).view(patches.shape)
    torch.testing.assert_close(enc.read_view(patches), naive)
    with torch.no_grad():
        fmap = enc.feature_map(x)
        assert fmap.shape == (2, enc.num_features, 11, 11)
        torch.testing.assert_close(fmap, enc.encode_patches(naive))
        torch.testing.assert_close(enc(x), fmap.mean(dim=(2, 3)))
        rebuilt = ssl_rep.create_encoder(enc.encoder_name, **enc.encoder_kwargs)
        rebuilt.load_state_dict(enc.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), enc(x))
        plain = create_method("cpc", ssl_rep.create_encoder("resnet20"), read_stride=0, read_crop=0).encoder.eval()
        plain.load_state_dict(enc.state_dict())
        torch.testing.assert_close(plain.feature_map(x), enc.encode_patches(enc.patchify(x)))
        assert not torch.allclose(plain(x), enc(x))
    with pytest.raises(ValueError, match="read_crop must be in"):
        create_method("cpc", ssl_rep.create_encoder("resnet20"), read_crop=9)


@pytest.mark.parametrize("directions", ["down", "both"])
def test_cpc_loss_is_equal_weight_mean_over_all_predictions(directions):
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20", norm="none"), prediction_steps=3,
                           directions=directions).eval()
    x = torch.randn(2, 3, 32, 32)
    loss, logs = method((x, None))
    z = method.encode_patches(method.patchify(x))
    per_prediction, hits = [], []
    for direction, turned in enumerate([z, z.flip(2)][: len(method.contexts)]):
        c = method.contexts[direction](turned)
        for k in (2, 3, 4):   # 8 px patches at stride 4: row i + 1 overlaps row i, so offsets start at 2
            preds = method.predictors[direction][k - 2](c[:, :, :7 - k].permute(0, 2, 3, 1)).reshape(-1, 64)
            targets = turned[:, :, k:].permute(0, 2, 3, 1).reshape(-1, 64)
            logits = preds @ targets.T
            per_prediction.append(-(logits.diag() - torch.logsumexp(logits, dim=1)))
            hits.append(logits.argmax(dim=1) == torch.arange(len(logits)))
    expected = torch.cat(per_prediction).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the logged accuracy: the fraction of predictions whose own target scores highest
    accuracy = torch.cat(hits).float().mean().item()
    assert 0 < accuracy < 1 and logs["acc"].item() == pytest.approx(accuracy)


def test_cpc_patch_colour_dropping_keeps_one_channel():
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20"), patch_aug=1.0)
    patches = torch.ones(2, 7, 7, 3, 8, 8)
    dropped = method.colour_drop(patches)
    per_patch_channels = (dropped.sum(dim=(-1, -2)) > 0).sum(dim=-1)
    assert torch.all(per_patch_channels == 1)


def test_context_rejects_unknown_kind():
    with pytest.raises(ValueError, match="pixelcnn, gru, attention"):
        create_context("lstm", 64)


# ------------------------------------------------------------------ autoencoder
def test_masked_autoencoder_loss_ignores_visible_pixels(digits_batch):
    torch.manual_seed(0)
    x, y = digits_batch
    method = create_method("autoencoder", ssl_rep.create_encoder("resnet20"), mode="masked").train()
    mask = method.patch_mask(x)
    assert method.mask_ratio == 0.75 and method.patch_size == 4   # MAE's ratio; 32 px // 14, at least 4
    assert 0.6 < mask.mean() < 0.9
    method.patch_mask = lambda _x: mask
    loss_a, _ = method((x, y))
    # the visible pixels of the input are all the model sees; corrupting hidden pixels of the
    # input changes nothing, and the target at visible pixels is not part of the loss
    x2 = x + 5.0 * mask
    with torch.no_grad():
        out = method.decoder(method.code(method.encoder.feature_map(x * (1 - mask))))
    manual = (((out - x) ** 2) * mask.expand_as(x)).sum() / mask.expand_as(x).sum()
    assert loss_a.item() == pytest.approx(manual.item(), rel=1e-5)
    loss_b, _ = method((x2 * (1 - mask) + x * mask, y))
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)


def test_autoencoder_bce_needs_unit_range_and_reconstructions_helper(digits_batch):
    x, y = digits_batch
    with pytest.raises(ValueError, match="bce"):
        create_method("autoencoder", ssl_rep.create_encoder("resnet20"), loss="bce")((x, y))
    unit = (x - x.min()) / (x.max() - x.min())
    method = create_method("autoencoder", ssl_rep.create_encoder("resnet20"), loss="bce")
    loss, logs = method((unit, y))
    assert loss.item() > 0 and logs["recon_mse"] > 0
    originals, recon = method.reconstructions(unit[:4])
    assert recon.shape == originals.shape == (4, 3, 32, 32) and 0 <= recon.min() and recon.max() <= 1
    assert method.training


@pytest.mark.parametrize("bottleneck,code_dim,decoder", [
    ("pooled", None, "conv"), ("grid", None, "conv"), ("map", None, "conv"), ("pooled", 10, "conv"),
    ("grid", 10, "conv"), ("pooled", 10, "mlp"), ("map", None, "mlp")])
def test_reconstruction_depends_only_on_the_code_the_probe_reads(bottleneck, code_dim, decoder):
    """Move the feature map in every way that keeps the code (each channel's mean over the map, or over
    each cell of the grid): the pooled and grid decoders' output does not move, with a code layer on top too,
    convolutional or fully connected; the map decoder's does."""
    torch.manual_seed(0)
    method = create_method("autoencoder", ssl_rep.create_encoder("resnet20"), image_size=32, bottleneck=bottleneck,
                           code_grid=2, code_dim=code_dim, decoder=decoder).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = method.encoder.feature_map(x)
        noise = torch.randn_like(fmap)
        if bottleneck != "map":   # the code is what encoder(x), encoder.pt and load_encoder give
            assert torch.allclose(method.code(fmap).flatten(1), method.encoder(x), atol=1e-6)
            assert method.encoder.num_features == code_dim or 64 * (4 if bottleneck == "grid" else 1)
        if bottleneck == "pooled":
            noise -= noise.mean(dim=(2, 3), keepdim=True)
        else:   # zero mean in each of the 2x2 cells of the 8x8 map
            cells = noise.view(2, -1, 2, 4, 2, 4)
            noise = (cells - cells.mean(dim=(3, 5), keepdim=True)).view_as(fmap)
        before, after = method.decoder(method.code(fmap)), method.decoder(method.code(fmap + noise))
    if bottleneck == "map":
        assert (after - before).abs().max() > 1e-3   # negative control: the whole map reaches the decoder
    else:
        assert torch.allclose(after, before, atol=1e-5)


def test_n2d_autoencoder_mirrors_its_mlp_encoder_and_learns(tmp_path):
    """``encoder: mlp`` + ``code_dim: 10`` + ``decoder: mlp`` is DEC's and N2D's autoencoder: the decoder mirrors the
    encoder's widths and, the encoder reading gray, rebuilds the gray image; trained briefly on digits its
    reconstruction error falls, and load_encoder gives back the 10-value code the decoder read."""
    from ssl_rep.train import load_config, train
    cfg = load_config("ae_digits", [f"out_dir={tmp_path}", "encoder.name=mlp", "encoder.image_size=32",
                                    "encoder.hidden=[128, 64]", "encoder.gray=true", "method.bottleneck=pooled",
                                    "method.code_dim=10",
                                    "method.decoder=mlp", "method.mode=plain", "data.transform=none",
                                    "optim.lr=0.001", "trainer.max_steps=60", "trainer.log_every=10",
                                    "data.batch_size=64", "data.num_workers=0", "trainer.device=cpu",
                                    "trainer.online_probe=false", "trainer.memory_check=false"])
    result = train(cfg, progress=False)
    method = create_method("autoencoder", ssl_rep.create_encoder("mlp", image_size=32, hidden=[128, 64], gray=True),
                           image_size=32, code_dim=10, decoder="mlp")
    widths = [(m.in_features, m.out_features) for m in method.decoder.net if isinstance(m, torch.nn.Linear)]
    assert widths == [(10, 64), (64, 128), (128, 32 * 32)]   # a gray encoder is asked for the gray image back
    x = torch.rand(2, 3, 32, 32)
    loss, _ = method((x, torch.zeros(2)))
    torch.testing.assert_close(loss, ((method.reconstruct(x) - x.mean(1, keepdim=True)) ** 2).mean())
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < 0.7 * losses[0]
    enc = ssl_rep.load_encoder(result.encoder_path)
    assert enc.encoder_name == "code_layer" and enc.encoder.encoder_name == "mlp" and enc.num_features == 10
    from types import SimpleNamespace

    from ssl_rep.cli.common import describe_features   # ssl-probe and ssl-cluster say what they read
    assert "the autoencoder's code" in describe_features(enc, SimpleNamespace(features="backbone", grid=2))
    state = ssl_rep.train.load_checkpoint(result.checkpoint)["model"]
    assert torch.equal(state["encoder.code.weight"], enc.code.weight)


def test_autoencoder_code_layer_is_what_load_encoder_returns(tmp_path):
    """``method.code_dim=10``: the saved encoder rebuilds as the code layer on the 2x2 code, 10 values per image,
    equal to the trained method's encoder; a code layer on the whole map is refused."""
    from ssl_rep.train import load_config, train
    cfg = load_config("ae_digits", [f"out_dir={tmp_path}", "method.bottleneck=grid", "method.code_grid=2",
                                    "method.code_dim=10", "trainer.max_steps=2", "data.batch_size=16",
                                    "data.num_workers=0", "trainer.device=cpu", "trainer.memory_check=false"])
    result = train(cfg, progress=False)
    enc = ssl_rep.load_encoder(result.encoder_path)
    assert enc.encoder_name == "code_layer" and enc.num_features == 10
    state = ssl_rep.train.load_checkpoint(result.checkpoint)["model"]
    assert torch.equal(state["encoder.code.weight"], enc.code.weight)
    assert enc(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    with pytest.raises(ValueError, match="code_dim needs bottleneck"):
        create_method("autoencoder", ssl_rep.create_encoder("resnet20"), image_size=32, bottleneck="map", code_dim=10)


@pytest.mark.parametrize("encoder,kw,size", [("resnet20", {}, 28), ("resnet18", {"stem": "cifar"}, 96),
                                             ("resnet18", {}, 224)])
def test_decoder_restores_input_size(encoder, kw, size):
    method = create_method("autoencoder", ssl_rep.create_encoder(encoder, **kw), image_size=size).eval()
    with torch.no_grad():
        assert method.reconstruct(torch.randn(1, 3, size, size)).shape == (1, 3, size, size)


# ------------------------------------------------------------------ supervised
def test_l2_term_equals_coupled_weight_decay_with_plain_sgd(digits_batch):
    """Plain SGD: loss + wd/2 |w|^2 gives exactly SGD's (coupled) weight_decay=wd update."""
    x, y = digits_batch
    torch.manual_seed(0)
    a = create_method("supervised", ssl_rep.create_encoder("resnet20"), l2_weight_decay=1e-2)
    b = create_method("supervised", ssl_rep.create_encoder("resnet20"))
    b.load_state_dict(a.state_dict())
    decay = [p for p in b.parameters() if p.ndim > 1]
    rest = [p for p in b.parameters() if p.ndim <= 1]
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD([{"params": decay, "weight_decay": 1e-2}, {"params": rest}], lr=0.1)
    for method, opt in ((a, opt_a), (b, opt_b)):
        loss, _ = method((x, y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-6, rtol=1e-5)


def test_supervised_rejects_missing_labels(digits_batch):
    x, _ = digits_batch
    with pytest.raises(ValueError, match="unlabeled data has -1"):
        create_method("supervised", ssl_rep.create_encoder("resnet20"))((x, torch.full((32,), -1)))


def test_batchnorm_patch_encoder_would_leak_across_rows():
    """The causality test has teeth: with BatchNorm kept, lower rows reach row 0's prediction."""
    torch.manual_seed(0)
    method = create_method("cpc", ssl_rep.create_encoder("resnet20"), patch_norm="batch").train()
    patches = method.patchify(torch.randn(2, 3, 32, 32)).detach().requires_grad_(True)
    pred = method.predict(method.context_of(method.encode_patches(patches)), method.first_step)[:, 0]
    (grad,) = torch.autograd.grad(pred.sum(), patches)
    assert torch.count_nonzero(grad[:, 1:]) > 0
