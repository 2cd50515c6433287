"""WebDataset shards: a folder round-trips through write_shards/ShardDataset; ranks and workers split it."""
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_rep.data.shards import ShardDataset, main, write_shards

pytest.importorskip("webdataset")


def make_folder(root):
    """Two classes of solid-colour images (one CMYK JPEG among them) and two bad files."""
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8 + i, 8), colour).save(d / f"{i}.png")
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(root / "class0" / "cmyk.jpg")   # red
    (root / "class1" / "empty.jpg").write_bytes(b"")
    (root / "class1" / "text.png").write_text("not an image")


def summary(items):
    return sorted((label, tuple(x[:, 0, 0].tolist()), tuple(x.shape)) for x, label in items)


def test_round_trip_counts_bad_files_and_splits_across_ranks_and_workers(tmp_path):
    make_folder(tmp_path / "src")
    index = write_shards(tmp_path / "src", tmp_path / "shards", max_count=3, progress=False)
    assert index["total"] == 11 and index["counts"] == [3, 3, 3, 2] and index["classes"] == ["class0", "class1"]
    assert sorted(s["file"].split("/")[-1] for s in index["skipped"]) == ["empty.jpg", "text.png"]
    everything = list(ShardDataset(tmp_path / "shards", shuffle_buffer=0))
    assert len(everything) == 11
    expected = [(0, (1.0, 0.0, 0.0), (3, 8, 8 + i)) for i in range(5)] + [(0, (1.0, 0.0, 0.0), (3, 6, 6))] + \
               [(1, (0.0, 0.0, 1.0), (3, 8, 8 + i)) for i in range(5)]
    assert summary(everything) == sorted(expected)
    # two processes read disjoint shards that together hold everything
    ranks = [ShardDataset(tmp_path / "shards", rank=r, world_size=2, shuffle_buffer=4) for r in (0, 1)]
    parts = [list(r) for r in ranks]
    assert [len(p) for p in parts] == [len(r) for r in ranks] == [6, 5]
    assert summary(parts[0] + parts[1]) == summary(everything)
    # DataLoader workers split a process's shards further; nothing is read twice
    loader = torch.utils.data.DataLoader(ShardDataset(tmp_path / "shards", shuffle_buffer=0), batch_size=None,
                                         num_workers=2)
    assert summary(list(loader)) == summary(everything)


def test_shuffling_is_seeded_per_epoch(tmp_path):
    make_folder(tmp_path / "src")
    write_shards(tmp_path / "src", tmp_path / "shards", max_count=3, progress=False)
    ds = ShardDataset(tmp_path / "shards", shuffle_buffer=8, seed=3)
    order = lambda: [(y, x.shape[-1]) for x, y in ds]  # noqa: E731
    first = order()
    assert order() == first          # same epoch, same order
    ds.set_epoch(1)
    assert order() != first and sorted(order()) == sorted(first)


def test_a_corrupt_sample_is_skipped_and_counted(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    good = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(good, format="PNG")
    with tarfile.open(shards / "shard-000000.tar", "w") as tar:
        for name, data in (("a.png", good.getvalue()), ("b.png", b"garbage")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shards / "shards.json").write_text(json.dumps({"shards": ["shard-000000.tar"], "counts": [2], "classes": None}))
    ds = ShardDataset(shards, shuffle_buffer=0)
    items = list(ds)
    assert len(items) == 1 and items[0][1] == -1 and np.allclose(items[0][0][:, 0, 0].numpy(), [0, 1, 0])
    assert len(ds.bad_samples) == 1 and "b.png" in ds.bad_samples[0][1]


def test_cli_and_errors(tmp_path, capsys):
    make_folder(tmp_path / "src")
    main([str(tmp_path / "src"), str(tmp_path / "out"), "--max-count", "100"])
    assert "wrote 11 samples in 1 shards" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="already holds shards"):
        write_shards(tmp_path / "src", tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match="no shards.json"):
        ShardDataset(tmp_path / "src")


def test_build_dataset_reads_shards_and_features_come_out_for_every_sample(tmp_path):
    import ssl_rep
    make_folder(tmp_path / "src" / "train")
    write_shards(tmp_path / "src" / "train", tmp_path / "sh" / "train", max_count=4, progress=False)
    from ssl_rep.data import build_transform
    ds = ssl_rep.build_dataset(tmp_path / "sh", split="train", transform=build_transform("eval", size=8, resize=8))
    assert isinstance(ds, ShardDataset) and len(ds) == 11
    X, y = ssl_rep.extract_features(ssl_rep.create_encoder("resnet20"), ds, batch_size=4, device="cpu",
                                    progress=False)
    assert X.shape == (11, 64) and sorted(y.tolist()) == [0] * 6 + [1] * 5


@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_on_shards_resumes_exactly(tmp_path, workers):
    """Pretraining reads shards; stopping after 3 steps and resuming to 12 gives the weights of a straight
    run of 12 (the resumed epoch skips the batches already done, then the next epoch starts)."""
    from runs import straight_and_resumed
    from ssl_rep.train.metrics import read_metrics
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c in range(2):
        (src / f"c{c}").mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(src / f"c{c}" / f"{i}.png")
    write_shards(src, tmp_path / "shards", max_count=10, progress=False)
    common = [f"data.dataset={tmp_path / 'shards'}", "data.image_size=16", "data.batch_size=4",
              f"data.num_workers={workers}",
              "trainer.deterministic=true", "trainer.log_every=1", "trainer.checkpoint_every=3", "optim.name=adamw",
              "optim.lr=0.001", "trainer.online_probe=false"]
    straight, same = straight_and_resumed("ae_digits", common, tmp_path, stop=3, total=12)
    assert straight.steps == 12 and same
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")]
    assert max(epochs) == 1   # (40 - max(1, workers) * 3) // 4 = 9 or 8 batches per epoch: 12 steps reach epoch 1


def test_indexed_shards_read_every_sample_in_writing_order_and_feed_probe_and_cluster_report(tmp_path):
    """Evaluation reads shards by sample number: sample i is the folder's image i, so features line up
    with samples, and ssl-cluster's report shows thumbnails read from the tar files."""
    from ssl_rep.cli import cluster as cluster_cli, probe as probe_cli
    from ssl_rep.data import ImageFolderDataset
    from ssl_rep.data.shards import IndexedShards
    for split in ("train", "test"):
        make_folder(tmp_path / "src" / split)
        write_shards(tmp_path / "src" / split, tmp_path / "sh" / split, max_count=4, progress=False)
    folder = ImageFolderDataset(tmp_path / "src" / "test", verify="full")
    indexed = IndexedShards(tmp_path / "sh" / "test")
    assert len(indexed) == len(folder) == 11 and indexed.classes == folder.classes
    for i in range(len(folder)):
        (a, la), (b, lb) = indexed[i], folder[i]
        assert la == lb and torch.equal(a, b)
    common = ["--checkpoint", "random:resnet20", "--data", str(tmp_path / "sh"), "--cache-dir", "none",
              "--workers", "0", "--image-size", "8", "--batch-size", "4"]
    probe_cli.main([*common, "--out", str(tmp_path / "p"), "--knn-k", "3"])
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["n_test"] == 11
    cluster_cli.main([*common, "--out", str(tmp_path / "c"), "--methods", "kmeans,gmm", "--n-clusters", "2"])
    page = (tmp_path / "c" / "report.html").read_text()
    assert "cluster samples" in page
    index_file = tmp_path / "sh" / "test" / "shards.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "total": 12}))
    with pytest.raises(ValueError, match="lists 12 samples but the shards hold 11 images"):
        IndexedShards(tmp_path / "sh" / "test")
    (tmp_path / "sh" / "test" / "shard-000001.tar").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="shard-000001.tar: cannot read shard"):
        IndexedShards(tmp_path / "sh" / "test")
