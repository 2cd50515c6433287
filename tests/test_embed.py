"""ssl-embed: a dataset's features on disk in a fixed order with an index, continued after a stop, never mixed."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import ssl_rep
from ssl_rep.eval import eval_dataset
from ssl_rep.cli.embed import main as embed_main
from ssl_rep.eval import embed, extract_features
from ssl_rep.eval import embeddings as embed_module


def class_folders(root, per_class=5, size=20):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / c / f"{c}{i}.png")
    return root


def test_cli_writes_the_folders_features_in_order_with_paths_labels_and_classes(tmp_path, capsys):
    folder = class_folders(tmp_path / "images")
    out = tmp_path / "emb"
    embed_main(["--checkpoint", "random:resnet20", "--data", str(folder), "--out", str(out), "--workers", "0",
                "--device", "cpu"])
    assert "10 embeddings of 64 dims (float32)" in capsys.readouterr().out
    X = np.load(out / "embeddings.npy", mmap_mode="r")
    dataset = eval_dataset(str(folder), "train", None, None)
    torch.manual_seed(0)
    expected, labels = extract_features(ssl_rep.create_encoder("resnet20").eval(), dataset, device="cpu",
                                        progress=False)
    np.testing.assert_allclose(X, expected, rtol=1e-5, atol=1e-6)
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert [r["sample"] for r in rows] == [p for p, _ in dataset.samples]
    assert [int(r["label"]) for r in rows] == list(labels) and rows[0]["class"] == "cat" and rows[-1]["class"] == "dog"
    assert json.loads((out / "embed.json").read_text())["done"] == 10
    from ssl_rep.cli import cluster as cluster_cli   # the report's map names a folder's files on hover
    cluster_cli.main(["--checkpoint", "random:resnet20", "--data", str(folder), "--methods", "kmeans", "--n-clusters",
                      "2", "--out", str(tmp_path / "c"), "--cache-dir", "none", "--workers", "0", "--device", "cpu"])
    page = (tmp_path / "c" / "report.html").read_text()
    assert all(f'"n": "{c}{i}.png"' in page for c in ("cat", "dog") for i in range(5))


def test_pixels_are_embedded_as_the_flattened_evaluation_images(tmp_path, capsys):
    folder = class_folders(tmp_path / "images", size=12)
    embed_main(["--checkpoint", "pixels", "--data", str(folder), "--out", str(tmp_path / "emb"), "--workers", "0",
                "--device", "cpu"])
    dataset = eval_dataset(str(folder), "train", None, None)
    expected = torch.stack([dataset[i][0] for i in range(len(dataset))]).flatten(1).numpy()
    assert expected.shape[1] == 3 * dataset[0][0].shape[-1] ** 2
    assert f"10 embeddings of {expected.shape[1]} dims (float32)" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "embeddings.npy"), expected)


def test_a_stopped_run_continues_from_its_last_piece_and_refuses_another_encoder(tmp_path, monkeypatch):
    dataset = ssl_rep.build_dataset("digits", split="test", transform=ssl_rep.data.build_transform(
        "eval", stats="digits", resize=None))
    dataset = torch.utils.data.Subset(dataset, range(23))
    torch.manual_seed(0)
    encoder = ssl_rep.create_encoder("resnet20").eval()
    full = embed(encoder, dataset, tmp_path / "full", chunk=5, progress=False)
    real, calls = embed_module.extract_features, []

    def stops_after_two(enc, piece, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt   # stopped while the third piece runs
        calls.append(list(piece.indices))
        return real(enc, piece, **kw)

    monkeypatch.setattr(embed_module, "extract_features", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        embed(encoder, dataset, tmp_path / "part", chunk=5, progress=False)
    assert json.loads((tmp_path / "part" / "embed.json").read_text())["done"] == 10
    monkeypatch.setattr(embed_module, "extract_features", lambda enc, piece, **kw: (calls.append(list(piece.indices)),
                                                                                      real(enc, piece, **kw))[1])
    embed(encoder, dataset, tmp_path / "part", chunk=5, progress=False)
    assert calls[2][0] == 10 and calls[-1][-1] == 22   # only the pieces not yet done ran
    assert np.array_equal(np.load(tmp_path / "part" / "embeddings.npy"), np.load(full))
    other = ssl_rep.create_encoder("resnet20", width=8).eval()
    with pytest.raises(ValueError, match="embeddings of another run \\(its encoder, .*dim differ\\)"):
        embed(other, dataset, tmp_path / "part", chunk=5, progress=False)
    half = embed(encoder, dataset, tmp_path / "half", dtype="float16", progress=False)
    assert np.load(half).dtype == np.float16
    np.testing.assert_allclose(np.load(half), np.load(full), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, got 'int4'"):
        embed(encoder, dataset, tmp_path / "x", dtype="int4")
