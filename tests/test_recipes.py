"""Every shipped recipe for data we cannot ship runs a few real steps on files written in the real format."""
import pytest
import torch

import ssl_rep
from ssl_rep.train import load_config, train
from ssl_rep.train.metrics import read_metrics

from formats import make_cifar10_pickles, make_fmnist, make_imagenet_folders, make_stl10_binary

FEW = ["trainer.max_steps=2", "data.num_workers=0", "trainer.log_every=1", "trainer.device=cpu"]


NEW_METHODS = ["byol", "moco", "mocov3", "simsiam", "barlow_twins", "vicreg", "dino"]


@pytest.mark.parametrize("recipe,batch", [("supervised_resnet20_cifar10", 8), ("simclr_cifar10", 8),
                                          ("cpc_cifar10", 2), *((f"{m}_cifar10", 8) for m in NEW_METHODS)])
def test_cifar10_recipes_run_on_written_pickles(tmp_path, recipe, batch):
    make_cifar10_pickles(tmp_path / "data", n_per_batch=4)
    out = tmp_path / "run"
    result = train(load_config(recipe, [f"out_dir={out}", f"data.root={tmp_path / 'data'}",
                                        f"data.batch_size={batch}", *FEW]), progress=False)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in read_metrics(out / "metrics.jsonl"))
    enc = ssl_rep.load_encoder(out / "encoder.pt")
    assert enc(torch.zeros(1, 3, 32, 32)).shape[1] == enc.num_features


def test_stl10_recipe_runs_on_train_plus_unlabeled(tmp_path):
    make_stl10_binary(tmp_path / "data", n=4, unlabeled=4)
    out = tmp_path / "run"
    result = train(load_config("simclr_stl10", [f"out_dir={out}", f"data.root={tmp_path / 'data'}",
                                                "data.batch_size=4", *FEW]), progress=False)
    assert result.steps == 2


@pytest.mark.parametrize("recipe", ["simclr_imagenet", "supervised_resnet50_imagenet"])
def test_imagenet_recipes_run_on_written_folders(tmp_path, recipe):
    make_imagenet_folders(tmp_path / "imagenet")
    out = tmp_path / "run"
    options = ["method.num_classes=2"] if recipe.startswith("supervised") else []
    result = train(load_config(recipe, [f"out_dir={out}", f"data.root={tmp_path / 'imagenet'}",
                                        "data.batch_size=2", "trainer.channels_last=false", *options, *FEW]),
                   progress=False)
    assert result.steps == 2


def test_n2d_recipe_runs_on_written_idx_files_and_saves_the_10_value_code(tmp_path):
    make_fmnist(tmp_path / "data", 8, compress=True)
    out = tmp_path / "run"
    result = train(load_config("ae_n2d_fashion_mnist", [f"out_dir={out}", f"data.root={tmp_path / 'data'}",
                                                        "data.batch_size=4", *FEW]), progress=False)
    assert result.steps == 2
    enc = ssl_rep.load_encoder(out / "encoder.pt")
    assert enc.encoder_name == "code_layer" and enc.encoder.encoder_name == "mlp"
    assert enc(torch.zeros(5, 3, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_fashion_mnist_recipes_of_the_new_methods_load_and_match_their_digits_twins(method):
    """The Fashion-MNIST recipe is the digits one on other data: same method options, SimCLR's FM crop scale."""
    fm, digits = load_config(f"{method}_fashion_mnist"), load_config(f"{method}_digits")
    assert fm.data.dataset == "fashion-mnist" and fm.data.min_scale == 0.2
    assert fm.method.name == digits.method.name
    shared = set(fm.method.options) & set(digits.method.options)
    assert shared and all(fm.method.options[k] == digits.method.options[k] for k in shared - {"queue_size",
                                                                                            "momentum_final"})
