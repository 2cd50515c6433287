"""Projection-head features: ``load_encoder(ckpt, projection=True)`` and ``--features projection``."""
import json

import pytest
import torch

import ssl_rep
from ssl_rep.cli import cluster as cluster_cli
from ssl_rep.cli import probe as probe_cli
from ssl_rep.encoders import CheckpointError
from ssl_rep.methods import create_method
from ssl_rep.train import load_config, train

# its module-scoped fixture is costly: under pytest-xdist, every test here runs on one worker, which builds it once
pytestmark = pytest.mark.xdist_group("projection")

TINY = ["trainer.max_steps=3", "data.batch_size=32", "data.num_workers=0"]


def tiny(config: str, out, *extra: str):
    train(load_config(config, [f"out_dir={out}", *TINY, *extra]), progress=False)
    return out


@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    return tiny("simclr_digits", tmp_path_factory.mktemp("simclr"))


@pytest.mark.parametrize("batchnorm", [True, False])
def test_projection_is_the_trained_head_on_the_encoder(request, tmp_path, batchnorm):
    out = request.getfixturevalue("simclr_run") if batchnorm else tiny("simclr_digits", tmp_path,
                                                                        "method.head_batchnorm=false")
    ckpt = out / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    method = create_method("simclr", ssl_rep.load_encoder(ckpt), hidden_dim=256, out_dim=64,
                           head_batchnorm=batchnorm)
    method.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("probe")})
    method.eval()
    projected = ssl_rep.load_encoder(ckpt, projection=True)
    assert not projected.training and projected.num_features == 64
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = method.head(method.encoder(x))
        assert torch.allclose(projected(x), expected, atol=1e-5)
        assert not torch.allclose(projected(x)[:, :8], method.encoder(x)[:, :8])  # not the backbone
    assert projected.encoder_kwargs["head"] == [64, 256, 64]


def test_projection_errors_name_the_file_and_the_way_out(simclr_run, tmp_path):
    with pytest.raises(CheckpointError, match=r"encoder\.pt holds the encoder alone.*checkpoints/last\.pt"):
        ssl_rep.load_encoder(simclr_run / "encoder.pt", projection=True)
    ae = tiny("ae_digits", tmp_path / "ae") / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match=r"last\.pt: no projection head .*method 'autoencoder'.*SimCLR"):
        ssl_rep.load_encoder(ae, projection=True)
    for argv, message in [(["--checkpoint", "random:resnet20"], "random:resnet20 has no head"),
                          (["--checkpoint", str(simclr_run / "checkpoints" / "last.pt"), "--quantize", "int8"],
                           "--quantize int8 quantizes the encoder alone")]:
        with pytest.raises(SystemExit) as exit_info:
            probe_cli.main([*argv, "--data", "digits", "--features", "projection", "--cache-dir", "none",
                            "--out", str(tmp_path / "p")])
        assert exit_info.value.code == 2
    assert not (tmp_path / "p").exists()


def test_cli_projection_features_are_recorded_and_cached_apart(simclr_run, tmp_path, capsys):
    ckpt = str(simclr_run / "checkpoints" / "last.pt")
    common = ["--checkpoint", ckpt, "--data", "digits", "--cache-dir", str(tmp_path / "cache"), "--workers", "0",
              "--methods", "kmeans"]
    for features in ("backbone", "projection"):
        cluster_cli.main([*common, "--features", features, "--l2", "--out", str(tmp_path / features)])
    runs = {f: json.loads((tmp_path / f / "clusters.json").read_text()) for f in ("backbone", "projection")}
    assert runs["projection"]["features"] == "projection" and runs["backbone"]["features"] == "backbone"
    for r in runs.values():
        assert r["methods"]["kmeans"]["params"]["l2_normalize"] is True
    assert len(list((tmp_path / "cache").iterdir())) == 2   # one feature cache per space, never shared
    assert "projection" in (tmp_path / "projection" / "report.html").read_text()
    probe_cli.main(["--checkpoint", ckpt, "--data", "digits", "--features", "projection", "--knn-k", "5",
                    "--cache-dir", "none", "--workers", "0", "--out", str(tmp_path / "p")])
    probe = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert probe["features"] == "projection" and probe["feature_dim"] == 64 and probe["top1"] > 0.3


@pytest.mark.slow   # a script under eval/, not the library (make test-all runs it)
def test_cluster_spaces_study_agrees_with_the_cli(simclr_run, tmp_path, monkeypatch):
    from eval import cluster_spaces
    sections = {}
    monkeypatch.setattr(cluster_spaces, "table_section", lambda key, *a, **kw: sections.update({key: (a, kw)}))
    ckpt = str(simclr_run / "checkpoints" / "last.pt")
    monkeypatch.setattr("sys.argv", ["cluster_spaces.py", "--checkpoint", f"tiny={ckpt}", "--checkpoint", "pixels",
                                     "--data", "digits", "--seeds", "1", "--umap", "5",
                                     "--json", str(tmp_path / "spaces.json")])
    cluster_spaces.main()
    result = json.loads((tmp_path / "spaces.json").read_text())["rows"]
    rows = {r["space"]: r for r in result if r["checkpoint"] == "tiny"}
    assert len(rows) == 11 and rows["projection"]["dim"] == 64 and rows["head hidden layer"]["dim"] == 256
    assert rows["backbone, L2 + UMAP-5"]["dim"] == rows["head hidden layer, L2 + UMAP-5"]["dim"] == 5
    pixel_rows = {r["space"]: r for r in result if r["checkpoint"] == "pixels"}
    assert len(pixel_rows) == 6 and "head hidden layer" not in pixel_rows
    assert pixel_rows["backbone, L2 + UMAP-5"]["acc"][0] > pixel_rows["backbone, L2"]["acc"][0] + 0.03
    cluster_cli.main(["--checkpoint", ckpt, "--data", "digits", "--features", "projection", "--l2", "--methods",
                      "kmeans", "--cache-dir", "none", "--workers", "0", "--out", str(tmp_path / "c")])
    cli = json.loads((tmp_path / "c" / "clusters.json").read_text())["methods"]["kmeans"]["scores"]
    assert abs(rows["projection, L2"]["acc"][0] - cli["acc"]) <= 0.01   # the same space, the same k-means seed
    assert "cluster-spaces-digits-umap" in sections   # a UMAP study does not overwrite the plain one


def test_cluster_spaces_reads_an_encoder_file_and_names_its_own_section(simclr_run, tmp_path, monkeypatch):
    """An ``encoder.pt`` (no projection head: a run copied off a GPU machine) gives the backbone spaces only, the
    same numbers as its training checkpoint, and so does ``untrained:``; ``--whiten`` adds ``ssl-cluster
    --whiten``'s space; ``--study`` writes a RESULTS section of its own."""
    from eval import cluster_spaces
    sections = {}
    monkeypatch.setattr(cluster_spaces, "table_section", lambda key, *a, **kw: sections.update({key: (a, kw)}))
    monkeypatch.setattr("sys.argv", ["cluster_spaces.py", "--checkpoint", f"file={simclr_run / 'encoder.pt'}",
                                     "--checkpoint", f"ckpt={simclr_run / 'checkpoints' / 'last.pt'}",
                                     "--checkpoint", f"twin=untrained:{simclr_run / 'encoder.pt'}", "--whiten", "4",
                                     "--data", "digits", "--seeds", "1", "--study", "Encoder file, tiny",
                                     "--json", str(tmp_path / "spaces.json")])
    cluster_spaces.main()
    rows = json.loads((tmp_path / "spaces.json").read_text())["rows"]
    file_rows = {r["space"]: r for r in rows if r["checkpoint"] == "file"}
    ckpt_rows = {r["space"]: r for r in rows if r["checkpoint"] == "ckpt"}
    twin_rows = {r["space"]: r for r in rows if r["checkpoint"] == "twin"}
    assert sorted(file_rows) == sorted(s for s in ckpt_rows if s.startswith("backbone")) and len(file_rows) == 6
    assert len(ckpt_rows) == 10 and sorted(twin_rows) == sorted(file_rows)
    for space, row in file_rows.items():
        scores = lambda r: (r["acc"], r["nmi"])  # noqa: E731
        assert scores(row) == scores(ckpt_rows[space]), space
        # untrained: other features. ACC alone can tie on 360 images (an AVX2 machine read 0.2472 for both)
        assert scores(row) != scores(twin_rows[space]), space
    whitened = file_rows["backbone, standardised + whitened-4 + L2"]
    assert whitened["dim"] == 4 and scores(whitened) != scores(file_rows["backbone"])
    (key, (args, _)), = sections.items()
    assert key == "cluster-spaces-digits-encoder-file-tiny" and args[0].endswith("(digits, Encoder file, tiny)")
