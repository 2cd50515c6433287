"""eval/n2d_reference.py: N2D's MLP autoencoder as the paper builds it, trained, saved and scored again."""
import json
import math

import numpy as np
import pytest
import torch

from eval import n2d_reference as n2d


def test_layers_are_the_papers_and_start_as_keras_dense():
    enc = n2d.fully_connected((784, *n2d.HIDDEN, n2d.CODE))
    linears = [m for m in enc if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 500), (500, 2000), (2000, 10)]
    assert sum(isinstance(m, torch.nn.ReLU) for m in enc) == 3 and isinstance(enc[-1], torch.nn.Linear)   # linear code
    for m in linears:
        bound = math.sqrt(6 / (m.in_features + m.out_features))   # Glorot uniform
        assert m.weight.abs().max() <= bound and m.weight.abs().max() > 0.9 * bound
        assert not m.bias.any()


def test_colour_images_are_refused_by_name():
    class Colour:
        name, images = "paintings", np.stack([np.zeros((4, 4)), np.ones((4, 4)), np.zeros((4, 4))], -1)[None]
    with pytest.raises(ValueError, match="paintings"):
        n2d.gray_pixels(Colour())


def test_training_lowers_the_loss_and_a_saved_encoder_scores_the_same(tmp_path, monkeypatch):
    # the UMAP + GMM scoring is eval.reproduce's (tested there); here a stand-in records the codes it is given
    codes = []
    monkeypatch.setattr(n2d, "n2d_scores", lambda X, y, k, seed=0, n_init=1: codes.append(X.copy()) or {"acc": 0.5,
                                                                                                   "nmi": 0.4})
    common = ["--data", "digits", "--cluster-seeds", "0,1", "--epochs", "3"]
    trained = n2d.main([*common, "--save", str(tmp_path / "enc.pt"), "--score-at", "1",
                        "--json", str(tmp_path / "r.json")])
    assert trained["loss"]["3"] < trained["loss"]["1"]
    assert set(trained["curve"]) == {"1", "3"} and trained["points"] == 360 and len(codes) == 4
    assert json.loads((tmp_path / "r.json").read_text())["mean_acc"] == 0.5
    n2d.main([*common, "--load", str(tmp_path / "enc.pt")])
    np.testing.assert_array_equal(codes[-1], codes[2])          # the saved encoder gives the trained codes
    assert not np.array_equal(codes[0], codes[2])                # and they moved between epochs 1 and 3
    assert codes[2].shape == (360, n2d.CODE)


def test_no_cluster_seeds_trains_and_saves_without_scoring(tmp_path, monkeypatch):
    monkeypatch.setattr(n2d, "n2d_scores", lambda *a, **kw: pytest.fail("scored with no seeds"))
    out = n2d.main(["--data", "digits", "--epochs", "1", "--cluster-seeds", "", "--save", str(tmp_path / "e.pt")])
    assert out["runs"] == [] and "mean_acc" not in out and (tmp_path / "e.pt").exists()


def test_augment_moves_and_turns_images_as_asked():
    torch.manual_seed(0)
    x = torch.zeros(64, 28 * 28)
    x.view(64, 28, 28)[:, 11:17, 11:17] = 1.0                   # a centred square, clear of the border
    assert n2d.augment(x, 0, 0) is x                             # off: the batch as it is
    moved = n2d.augment(x, 3, 0).view(64, 28, 28)
    torch.testing.assert_close(moved.sum((1, 2)), torch.full((64,), 36.0), atol=1e-3, rtol=0)   # nothing lost
    rows = torch.arange(28.0)
    centre = (moved.sum(2) * rows).sum(1) / moved.sum((1, 2))    # the square's centre row, 13.5 before
    assert (centre - 13.5).abs().max() <= 3 + 1e-4 and (centre - 13.5).abs().max() > 2
    assert len({round(c, 1) for c in centre.tolist()}) > 20      # each image its own move
    turned = n2d.augment(x, 0, 45).view(64, 28, 28)
    assert not torch.allclose(turned, x.view(64, 28, 28))
    torch.testing.assert_close(turned.sum((1, 2)), torch.full((64,), 36.0), atol=0, rtol=0.05)   # resampled edges
