"""Encoders out: torchvision and timm load the exports strictly as their own models, features equal; safetensors +
JSON rebuild any encoder with its preprocessing; encoders without a twin are refused with the formats that work."""
import json
import subprocess
import sys

import pytest
import torch

import ssl_rep
from ssl_rep.encoders import CheckpointError, GridPooledEncoder, create_encoder
from ssl_rep.export import export_encoder
from ssl_rep.methods import create_method
from ssl_rep.train import load_config, train


def settled(encoder, size=64):
    """Random weights with BatchNorm statistics that are not the init's, so running stats must travel too."""
    torch.manual_seed(0)
    encoder.train()
    with torch.no_grad():
        encoder(torch.randn(8, 3, size, size) * 2 + 0.5)
    return encoder.eval()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae")
    train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=2", "data.batch_size=16",
                                    "data.num_workers=0", "trainer.device=cpu"]), progress=False)
    return out


def test_torchvision_export_loads_strictly_into_torchvision_with_the_same_features(tmp_path):
    import torchvision

    enc = settled(create_encoder("resnet18"))
    path = export_encoder(enc, tmp_path / "r18.pth", "torchvision")
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), enc(x), atol=1e-5, rtol=1e-5)


def test_timm_export_loads_strictly_into_timm_with_the_same_features(tmp_path):
    import timm

    enc = settled(create_encoder("timm:resnet10t"))
    path = export_encoder(enc, tmp_path / "r10t.pth", "timm")
    model = timm.create_model("resnet10t", num_classes=0)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), enc(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["resnet20", "cpc_patch_grid", "ae_grid_code", "groupnorm_resnet18"])
def test_safetensors_round_trip_for_encoders_without_a_twin(tmp_path, kind):
    if kind == "resnet20":
        enc = create_encoder("resnet20", shortcut="B")
    elif kind == "cpc_patch_grid":
        enc = create_method("cpc", create_encoder("resnet20"), prediction_steps=2).encoder
    elif kind == "ae_grid_code":
        enc = GridPooledEncoder(create_encoder("resnet20"), 2)
    else:
        enc = create_encoder("resnet18", norm="group")
    enc = settled(enc, 32)
    path = export_encoder(enc, tmp_path / "enc.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["encoder"] == enc.encoder_name and meta["num_features"] == enc.num_features
    back = ssl_rep.load_encoder(path)
    assert type(back) is type(enc) and back.encoder_kwargs == enc.encoder_kwargs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), enc(x))
    if kind != "groupnorm_resnet18":
        with pytest.raises(ValueError, match="no torchvision twin.*safetensors"):
            export_encoder(enc, tmp_path / "x.pth", "torchvision")
    with pytest.raises(ValueError, match="not a timm model.*safetensors"):
        export_encoder(enc, tmp_path / "x.pth", "timm")


def test_resnets_that_torchvision_cannot_load_are_refused_by_name(tmp_path):
    for kwargs in ({"stem": "cifar"}, {"norm": "group"}, {"in_chans": 1}):
        with pytest.raises(ValueError, match=f"{list(kwargs)[0]}.*no torchvision twin"):
            export_encoder(create_encoder("resnet18", **kwargs), tmp_path / "x.pth", "torchvision")
    with pytest.raises(ValueError, match="not a timm model.*or 'torchvision'"):
        export_encoder(create_encoder("resnet18"), tmp_path / "x.pth", "timm")
    with pytest.raises(ValueError, match="export format must be one of torchvision, timm, safetensors, got 'onnx'"):
        export_encoder(create_encoder("resnet18"), tmp_path / "x.pth", "onnx")


def test_a_runs_export_records_its_preprocessing_and_method(tiny_run, tmp_path):
    path = export_encoder(tiny_run / "encoder.pt", tmp_path / "ae.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["method"] == "autoencoder" and meta["config"]["data"]["dataset"] == "digits"
    assert meta["input"]["dataset"] == "digits" and meta["input"]["mean"] == pytest.approx([0.3057] * 3)
    again = export_encoder(tiny_run / "checkpoints" / "last.pt", tmp_path / "ae2.safetensors")
    assert json.loads(again.with_suffix(".json").read_text())["input"] == meta["input"]
    assert ssl_rep.load_encoder(path).preprocess == meta["input"]
    for saved in (tiny_run / "encoder.pt", tiny_run / "checkpoints" / "last.pt"):   # the run's own files say it too
        assert ssl_rep.load_encoder(saved).preprocess == meta["input"]
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="no ae.json beside it"):
        ssl_rep.load_encoder(path)


def test_cli_export_then_a_fresh_process_loads_it_without_the_training_modules(tiny_run, tmp_path, capsys):
    from ssl_rep.cli.export import main

    main(["--checkpoint", str(tiny_run / "encoder.pt"), "--out", str(tmp_path / "enc.safetensors")])
    out = capsys.readouterr().out
    assert "wrote" in out and "ssl_rep.load_encoder" in out
    with torch.no_grad():
        expected = ssl_rep.load_encoder(tiny_run / "encoder.pt")(torch.zeros(1, 3, 32, 32))
    torch.save(expected, tmp_path / "expected.pt")
    code = ("import sys, torch, ssl_rep; enc = ssl_rep.load_encoder(sys.argv[1]); "
            "torch.testing.assert_close(enc(torch.zeros(1, 3, 32, 32)), torch.load(sys.argv[2]), atol=0, rtol=0); "
            "loaded = [m for m in sys.modules if m.startswith(('ssl_rep.train', 'ssl_rep.methods'))]; "
            "assert not loaded, loaded; print(enc.preprocess['dataset'])")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "enc.safetensors"), str(tmp_path / "expected.pt")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "digits"
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.safetensors")])
    assert "missing.pt: no such checkpoint file" in capsys.readouterr().err
