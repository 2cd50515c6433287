"""A run sized to its data and refused before it starts when a step cannot fit in memory."""
import numpy as np
import pytest
import torch
from PIL import Image

import ssl_rep
from ssl_rep.methods import create_method
from ssl_rep.train import StepMemoryError, load_config, train
from ssl_rep.train import memory
from ssl_rep.train.data import build_train_dataset


def small_png_folder(root, n=48, size=28):
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(folder / f"{i}.png")
    (root / "class0" / "empty.jpg").write_bytes(b"")
    return root


def test_a_folder_of_28_px_images_trains_at_28_px_by_default(tmp_path, caplog):
    folder = small_png_folder(tmp_path / "pngs")
    cfg = load_config("simclr_digits", [f"data.dataset={folder}", "data.batch_size=16", "data.num_workers=0",
                                        "trainer.max_steps=1", "trainer.device=cpu", f"out_dir={tmp_path / 'run'}"])
    with caplog.at_level("INFO", logger="ssl_rep.train"):
        dataset, size, _, _ = build_train_dataset(cfg)
    assert size == 28 and "training at 28 px" in caplog.text
    assert tuple(dataset[0][0][0].shape) == (3, 28, 28)   # a view, cropped at the folder's own size
    assert train(cfg, progress=False).steps == 1
    explicit = load_config("simclr_digits", [f"data.dataset={folder}", "data.image_size=20"])
    assert build_train_dataset(explicit)[1] == 20   # the recipe or override still decides when it says


def test_an_oversized_run_stops_with_the_estimate_before_any_step(tmp_path, monkeypatch):
    folder = small_png_folder(tmp_path / "pngs")
    monkeypatch.setattr(memory, "available_bytes", lambda device: 200 * 2**20)   # a 200 MiB machine
    out = tmp_path / "run"
    cfg = load_config("simclr_digits", [f"data.dataset={folder}", "data.image_size=224", "data.batch_size=32",
                                        "data.num_workers=0", "trainer.device=cpu", f"out_dir={out}"])
    with pytest.raises(StepMemoryError, match=r"needs about [\d.]+ GiB .*data.batch_size=32.*224 px.*"
                                              r"Try data.batch_size=\d+ or less"):
        train(cfg, progress=False)
    assert not out.exists()   # no config, no metrics, no checkpoint
    fine = load_config("simclr_digits", [f"data.dataset={folder}", "data.batch_size=16", "data.num_workers=0",
                                         "trainer.max_steps=1", "trainer.device=cpu", f"out_dir={out}"])
    assert train(fine, progress=False).steps == 1   # 28 px fits the same budget


def test_the_estimate_extrapolates_the_counted_activations_and_touches_nothing():
    torch.manual_seed(0)
    method = create_method("simclr", ssl_rep.create_encoder("resnet20"))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    rng = torch.get_rng_state()
    est = memory.estimate_step_bytes(method, 16, 32, 2, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())   # BatchNorm statistics too
    weights = sum(p.numel() * 4 for p in method.parameters())
    direct = memory._saved_activation_bytes(method, memory._example_batch(16, 32, 2, torch.device("cpu"), False),
                                            memory.nullcontext)
    assert est == pytest.approx(memory.MARGIN * (4 * weights + direct), rel=0.05)
    # ResNet-20's first stage alone saves several (16, 32, 32) float maps per image and view
    assert direct > 16 * 2 * 16 * 32 * 32 * 4 * 10


def test_the_cli_refuses_with_exit_status_2(tmp_path, monkeypatch, capsys):
    from ssl_rep.cli.pretrain import main
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)
    with pytest.raises(SystemExit) as exit_info:
        main(["simclr_digits", f"out_dir={tmp_path / 'run'}", "trainer.device=cpu", "data.num_workers=0"])
    assert exit_info.value.code == 2 and "needs about" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
