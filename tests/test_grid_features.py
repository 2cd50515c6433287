"""Grid-pooled features: ``GridPooledEncoder`` and ``--features grid`` in ssl-probe and ssl-cluster."""
import json
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from ssl_rep import create_encoder
from ssl_rep.cli import cluster as cluster_cli
from ssl_rep.cli import probe as probe_cli
from ssl_rep.cli.common import default_out, resolve_encoder
from ssl_rep.encoders import GridPooledEncoder


def naive_grid_pool(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """Cell (i, j) is the mean over rows floor(i h / g) .. ceil((i + 1) h / g), columns alike; channel-major."""
    n, c, h, w = fmap.shape
    out = torch.empty(n, c, grid, grid)
    for i in range(grid):
        for j in range(grid):
            r0, r1 = i * h // grid, -(-(i + 1) * h // grid)
            c0, c1 = j * w // grid, -(-(j + 1) * w // grid)
            out[:, :, i, j] = fmap[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    return out.reshape(n, c * grid * grid)


@pytest.mark.parametrize("size, grid", [(32, 2), (28, 2), (28, 3), (32, 1)])
def test_grid_pooling_matches_a_naive_loop(size, grid):
    torch.manual_seed(0)
    encoder = create_encoder("resnet20").eval()
    pooled = GridPooledEncoder(encoder, grid)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        fmap = encoder.feature_map(x)        # 8x8 for 32 px, 7x7 for 28 px (overlapping cells)
        got = pooled(x)
        assert got.shape == (3, pooled.num_features) == (3, 64 * grid * grid)
        assert torch.allclose(got, naive_grid_pool(fmap, grid), atol=1e-5)
        if grid == 1:
            assert torch.allclose(got, encoder(x), atol=1e-5)   # one cell is the global average
        else:
            assert not torch.allclose(got[:, ::grid * grid], encoder(x), atol=1e-3)
    assert pooled.encoder_name == "grid_pooled" and pooled.encoder_kwargs["grid"] == grid
    rebuilt = create_encoder(pooled.encoder_name, **pooled.encoder_kwargs)   # what load_encoder does with encoder.pt
    rebuilt.load_state_dict(pooled.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), got)


def test_grid_errors_name_the_value():
    with pytest.raises(ValueError, match="grid must be a positive integer.*got 0"):
        GridPooledEncoder(create_encoder("resnet20"), 0)
    with pytest.raises(ValueError, match="Identity has no feature_map"):
        GridPooledEncoder(torch.nn.Identity(), 2)


def test_cli_grid_features_probe_and_cluster(tmp_path, capsys):
    common = ["--checkpoint", "random:resnet20", "--data", "digits", "--cache-dir", str(tmp_path / "cache"),
              "--workers", "0"]
    probes = {}
    for features in ("backbone", "grid"):
        probe_cli.main([*common, "--features", features, "--knn-k", "5", "--out", str(tmp_path / features)])
        probes[features] = json.loads((tmp_path / features / "probe.json").read_text())
    assert probes["grid"]["features"] == "grid 2x2" and probes["backbone"]["features"] == "backbone"
    assert probes["grid"]["feature_dim"] == 4 * probes["backbone"]["feature_dim"] == 256
    assert len(list((tmp_path / "cache").iterdir())) == 4   # train and test of each space, never shared
    # the same random weights: where in the image a feature fired is what the grid adds
    assert probes["grid"]["top1"] > probes["backbone"]["top1"] + 0.01
    narrow = ["--checkpoint", "random:resnet20?width=8", *common[2:]]   # query values are YAML scalars: width 8
    cluster_cli.main([*narrow, "--features", "grid", "--grid", "3", "--methods", "kmeans", "--out", str(tmp_path / "c")])
    clusters = json.loads((tmp_path / "c" / "clusters.json").read_text())
    assert clusters["features"] == "grid 3x3" and "<b>feature dim</b>: 288" in (tmp_path / "c" / "report.html").read_text()
    for argv, message in [(["--grid", "0"], "--grid must be at least 1"),
                          (["--quantize", "int8"], "--quantize int8 quantizes the encoder alone")]:
        with pytest.raises(SystemExit) as exit_info:
            probe_cli.main([*common, "--features", "grid", *argv, "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_random_spec_reads_yaml_values_and_names_a_plain_folder():
    encoder = resolve_encoder("random:resnet20?width=8&shortcut=B")
    assert encoder.num_features == 32 and encoder.encoder_kwargs == {"width": 8, "shortcut": "B"}
    assert default_out(Namespace(out=None, checkpoint="random:resnet20?width=8")) == Path("runs/random_resnet20_width_8")
    twin = default_out(Namespace(out=None, checkpoint="untrained:runs/r/checkpoints/last.pt"))
    assert twin == Path("runs/r/untrained").resolve()   # beside the run, not a folder named "untrained:runs"
    with pytest.raises(ValueError, match=r"random:resnet20\?width: write the encoder's arguments as .*key=value"):
        resolve_encoder("random:resnet20?width")


@pytest.mark.slow   # a script under eval/, not the library (make test-all runs it)
def test_probe_grid_study_agrees_with_the_cli(tmp_path, monkeypatch):
    from eval import probe_grid
    sections = {}
    monkeypatch.setattr(probe_grid, "table_section", lambda key, *a, **kw: sections.update({key: (a, kw)}))
    monkeypatch.setattr("sys.argv", ["probe_grid.py", "--checkpoint", "random=random:resnet20", "--checkpoint", "pixels",
                                     "--data", "digits", "--grids", "1,2", "--json", str(tmp_path / "grid.json")])
    probe_grid.main()
    rows = json.loads((tmp_path / "grid.json").read_text())["rows"]
    assert [(r["checkpoint"], r["grid"]) for r in rows] == [("random", 1), ("random", 2), ("pixels", None)]
    assert rows[0]["dim"] == 64 and rows[1]["dim"] == 256 and rows[2]["top1"] > 0.9
    assert "probe-grid-digits" in sections
    probe_cli.main(["--checkpoint", "random:resnet20", "--data", "digits", "--cache-dir", "none", "--workers", "0",
                    "--knn-k", "20", "--out", str(tmp_path / "p")])
    cli = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert abs(rows[0]["top1"] - cli["top1"]) <= 0.005 and abs(rows[0]["knn20"] - cli["knn"]["20"]) <= 0.005
