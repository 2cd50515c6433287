"""The command lines end to end on a tiny pretraining run: probe, cluster, report, errors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

import ssl_rep
from ssl_rep.cli import cluster as cluster_cli
from ssl_rep.cli import probe as probe_cli
from ssl_rep.train import load_config, train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(load_config("ae_digits", [f"out_dir={out}", "trainer.max_steps=3", "data.batch_size=32",
                                    "data.num_workers=0"]), progress=False)
    return out


def test_probe_writes_json_with_top1_top5_knn(tiny_run, tmp_path, capsys):
    probe_cli.main(["--checkpoint", str(tiny_run / "checkpoints" / "last.pt"), "--data", "digits",
                    "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--workers", "0"])
    result = json.loads((tmp_path / "probe.json").read_text())
    assert 0.5 < result["top1"] <= result["top5"] <= 1.0
    assert set(result["knn"]) == {"20", "200"} and result["n_train"] == 1437 and result["n_test"] == 360
    assert "linear probe top-1" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test features cached


def test_random_baseline_and_cluster_report(tiny_run, tmp_path):
    probe_cli.main(["--checkpoint", "random:resnet20", "--data", "digits", "--out", str(tmp_path / "p"),
                    "--cache-dir", "none", "--workers", "0", "--knn-k", "20"])
    assert json.loads((tmp_path / "p" / "probe.json").read_text())["top1"] > 0.5
    cluster_cli.main(["--checkpoint", str(tiny_run / "checkpoints" / "last.pt"), "--data", "digits",
                      "--out", str(tmp_path / "c"), "--cache-dir", "none", "--workers", "0"])
    clusters = json.loads((tmp_path / "c" / "clusters.json").read_text())["methods"]
    assert set(clusters) == {"kmeans", "meanshift", "dbscan", "gmm", "agglomerative"}
    for method, r in clusters.items():
        assert {"acc", "nmi", "ari", "purity", "n_clusters"} <= set(r["scores"]) and r["seconds"] >= 0
    page = (tmp_path / "c" / "report.html").read_text()
    for section in ("Scores", "Explore (", "Feature maps", "Confusion matrix", "Samples per cluster", "Pretraining",
                    "Autoencoder reconstructions"):
        assert section in page
    assert page.count("<img alt=") == 5 and page.count("data:image/png;base64,") == 5 + 360   # + a thumbnail a point
    body = page.split("<body>")[1].replace("http://www.w3.org/2000/svg", "")   # a namespace name, not a fetch
    assert "http" not in body and "<script src" not in body


def test_cluster_guard_is_reported_not_fatal(tiny_run, tmp_path, capsys):
    cluster_cli.main(["--checkpoint", "random:resnet20", "--data", "digits", "--methods", "agglomerative,kmeans",
                      "--max-memory-gb", "0.0001", "--out", str(tmp_path), "--cache-dir", "none", "--workers", "0"])
    clusters = json.loads((tmp_path / "clusters.json").read_text())["methods"]
    assert "GB" in clusters["agglomerative"]["error"] and "max_samples" in clusters["agglomerative"]["error"]
    assert "scores" in clusters["kmeans"]


@pytest.mark.xdist_group("umap")   # under pytest-xdist: numba compiles UMAP once, on one worker
def test_cluster_umap_prepares_once_and_feeds_every_method(tmp_path, caplog):
    from ssl_rep.cli.common import encoder_for, features_for
    from ssl_rep.eval import cluster, clustering_scores, preprocess

    argv = ["--checkpoint", "random:resnet20", "--data", "digits", "--methods", "kmeans,dbscan", "--l2",
            "--umap", "5", "--umap-neighbors", "20", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
            "--workers", "0"]
    with caplog.at_level("INFO", logger="ssl_rep.eval"):
        cluster_cli.main(argv)
    assert caplog.text.count("UMAP to 5 dimensions") == 1   # one UMAP for both methods
    clusters = json.loads((tmp_path / "clusters.json").read_text())["methods"]
    for method in ("kmeans", "dbscan"):   # no default PCA for dbscan once UMAP has reduced the features
        assert clusters[method]["params"] | {"n_clusters": 10} == {"l2_normalize": True, "pca": None, "umap": 5,
                                                                  "umap_neighbors": 20, "n_clusters": 10}
    args = cluster_cli.parse_args(argv)
    X, y, _ = features_for(encoder_for(args, "test"), "digits", "test", args)
    expected = clustering_scores(y, cluster(preprocess(X, l2_normalize=True, umap=5, umap_neighbors=20), "kmeans",
                                            n_clusters=10))
    assert clusters["kmeans"]["scores"]["acc"] == pytest.approx(expected["acc"])
    assert "<b>UMAP</b>: 5 dims, 20 neighbours" in (tmp_path / "report.html").read_text()
    assert clusters["kmeans"]["preprocess_seconds"] == clusters["dbscan"]["preprocess_seconds"] > 0


def test_cluster_repeats_reports_each_seed_and_their_mean(tmp_path, capsys, caplog):
    """--repeats 3: seed 0's clusters in the report and scores, plus every score's spread over seeds 0-2, each seed's
    run equal to clustering the same features with that seed alone."""
    from ssl_rep.cli.common import encoder_for, features_for
    from ssl_rep.eval import cluster_features

    argv = ["--checkpoint", "random:resnet20", "--data", "digits", "--methods", "kmeans,gmm", "--repeats", "3",
            "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    cluster_cli.main(argv)
    methods = json.loads((tmp_path / "clusters.json").read_text())["methods"]
    args = cluster_cli.parse_args(argv)
    X, y, _ = features_for(encoder_for(args, "test"), "digits", "test", args)
    alone = [cluster_features(X, y, ["kmeans", "gmm"], seed=s)[0] for s in range(3)]
    for method in ("kmeans", "gmm"):
        spread = methods[method]["over_seeds"]
        assert spread["seeds"] == [0, 1, 2]
        assert spread["acc"]["runs"] == pytest.approx([run[method]["scores"]["acc"] for run in alone])
        assert spread["nmi"]["mean"] == pytest.approx(np.mean([run[method]["scores"]["nmi"] for run in alone]))
        assert methods[method]["scores"]["acc"] == spread["acc"]["runs"][0]    # the report's clusters: seed 0's
    assert len(set(methods["gmm"]["over_seeds"]["acc"]["runs"])) > 1           # the seeds really differ
    assert "mean of seeds 0, 1, 2: acc" in capsys.readouterr().out
    assert "seeds</b>: 0-2" in (tmp_path / "report.html").read_text()
    unlabelled, _ = cluster_features(X, None, ["gmm"], repeats=3)              # unlabelled: the silhouettes
    spread = unlabelled["gmm"]["over_seeds"]
    assert spread["silhouette"]["runs"] == pytest.approx([run["gmm"]["scores"]["silhouette"] for run in alone])
    assert "acc" not in spread
    with pytest.raises(SystemExit) as exit_info:
        cluster_cli.parse_args([*argv[:-8], "--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats 0: cluster at least once" in capsys.readouterr().err


def test_cluster_n_init_reaches_kmeans_and_gmm(tmp_path, capsys):
    """--n-init 4: k-means and the GMM each keep the best of 4 starts (as cluster_features(n_init=4) does, and
    unlike the defaults); other methods take no starts; the report says so; 0 is refused."""
    from ssl_rep.cli.common import encoder_for, features_for
    from ssl_rep.eval import cluster_features, clustering_scores

    argv = ["--checkpoint", "random:resnet20", "--data", "digits", "--methods", "kmeans,gmm,agglomerative",
            "--n-init", "4", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]
    cluster_cli.main(argv)
    methods = json.loads((tmp_path / "clusters.json").read_text())["methods"]
    assert methods["kmeans"]["params"]["n_init"] == methods["gmm"]["params"]["n_init"] == 4
    assert "n_init" not in methods["agglomerative"]["params"]
    args = cluster_cli.parse_args(argv)
    X, y, _ = features_for(encoder_for(args, "test"), "digits", "test", args)
    _, four = cluster_features(X, y, ["kmeans", "gmm"], n_init=4)
    _, default = cluster_features(X, y, ["kmeans", "gmm"])
    for method in ("kmeans", "gmm"):
        assert methods[method]["scores"]["acc"] == pytest.approx(clustering_scores(y, four[method])["acc"])
    assert any(not np.array_equal(four[m], default[m]) for m in ("kmeans", "gmm"))
    assert "starts</b>: 4 (k-means, GMM)" in (tmp_path / "report.html").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cluster_cli.parse_args([*argv[:-6], "--n-init", "0"])
    assert exit_info.value.code == 2 and "--n-init 0: start each method at least once" in capsys.readouterr().err
    with pytest.raises(ValueError, match="n_init=0"):
        cluster_features(X, y, ["gmm"], n_init=0)


def test_cluster_whiten_feeds_every_method_the_whitened_features(tmp_path, capsys):
    """--whiten 8: k-means and DBSCAN (no default PCA then) read the standardised, whitened, L2-normalised features;
    the scores equal clustering ``whiten_features`` of the same features; the report says so."""
    from ssl_rep.cli.common import encoder_for, features_for
    from ssl_rep.eval import cluster, clustering_scores
    from ssl_rep.eval.cluster import whiten_features

    argv = ["--checkpoint", "random:resnet20", "--data", "digits", "--methods", "kmeans,dbscan", "--whiten", "8",
            "--out", str(tmp_path), "--cache-dir", "none", "--workers", "0"]
    cluster_cli.main(argv)
    clusters = json.loads((tmp_path / "clusters.json").read_text())["methods"]
    for method in ("kmeans", "dbscan"):
        assert clusters[method]["params"] | {"n_clusters": 10} == {"l2_normalize": False, "pca": None, "umap": None,
                                                                  "whiten": 8, "n_clusters": 10}
    args = cluster_cli.parse_args(argv)
    X, y, _ = features_for(encoder_for(args, "test"), "digits", "test", args)
    expected = clustering_scores(y, cluster(whiten_features(X, 8), "kmeans", n_clusters=10))
    assert clusters["kmeans"]["scores"]["acc"] == pytest.approx(expected["acc"])
    assert "<b>whitened</b>: 8 dims, L2-normalised" in (tmp_path / "report.html").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cluster_cli.parse_args([*argv[:7], "0"])
    assert exit_info.value.code == 2 and "--whiten 0: whiten to at least 1 dimension" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cluster_cli.parse_args([*argv, "--pca", "5"])
    assert exit_info.value.code == 2 and "--pca 5 and --whiten 8 both project the features" in capsys.readouterr().err


@pytest.mark.parametrize("cli,flags,message", [
    ("cluster", ["--n-clusters", "0"], "argument --n-clusters: must be at least 1, got 0"),   # was: the default
    ("cluster", ["--n-clusters", "-3"], "argument --n-clusters: must be at least 1, got -3"),  # math domain error
    ("cluster", ["--umap", "-2"], "argument --umap: must be at least 1"),
    ("cluster", ["--umap-neighbors", "1"], "argument --umap-neighbors: must be at least 2"),
    ("cluster", ["--max-memory-gb", "0"], "argument --max-memory-gb: must be greater than 0"),
    ("cluster", ["--image-size", "0"], "argument --image-size: must be at least 1"),             # was: the default
    ("probe", ["--C", "0"], "argument --C: must be greater than 0, got 0"),                      # ZeroDivisionError
    ("probe", ["--C", "nan"], "argument --C: must be a number, got nan"),
    ("probe", ["--batch-size", "x"], "argument --batch-size: expected an integer, got 'x'"),
])
def test_numbers_out_of_range_are_refused_naming_the_flag(cli, flags, message, capsys):
    """Before any work: each of these used to pass as "not given", fail deep inside with another library's
    message, or crash with a traceback."""
    parse = {"cluster": cluster_cli.parse_args, "probe": probe_cli.parse_args}[cli]
    with pytest.raises(SystemExit) as exit_info:
        parse(["--checkpoint", "random:resnet20", "--data", "digits", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "nowhere.pt", "--data", "digits"], "nowhere.pt: no such checkpoint file"),
    (["--checkpoint", "random:resnet21", "--data", "digits"], "unknown encoder 'resnet21'"),
    (["--checkpoint", "random:resnet20", "--data", "no-such-data"], "unknown dataset 'no-such-data'"),
    (["--checkpoint", "random:resnet20", "--data", "digits", "--train-subset", "-5"],
     "--train-subset takes a number of training images, at least 1; got -5"),
])
def test_cli_errors_are_one_clear_line(args, message, capsys):
    """In-process (a new interpreter per case costs ~9 s of imports): exit status 2, the message, no traceback."""
    from ssl_rep.cli.probe import main as probe_main
    with pytest.raises(SystemExit) as exit_info:
        probe_main([*args, "--cache-dir", "none"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed: apt-get install chromium chromium-driver runs it")
def test_report_renders_in_headless_chromium(tiny_run, tmp_path):
    cluster_cli.main(["--checkpoint", str(tiny_run / "encoder.pt"), "--data", "digits", "--methods", "kmeans",
                      "--out", str(tmp_path), "--cache-dir", "none", "--workers", "0"])
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000",
                           f"--screenshot={shot}", f"file://{tmp_path / 'report.html'}"],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    from PIL import Image
    img = Image.open(shot).convert("L")
    assert len(np.unique(np.asarray(img))) > 50  # plots rendered, not a blank page


@pytest.mark.skipif(shutil.which("chromium") is None or shutil.which("chromedriver") is None,
                    reason="Chromium and its driver are not installed: apt-get install chromium chromium-driver runs it")
def test_report_map_is_interactive_in_chromium(tiny_run, tmp_path):
    """Driven by Selenium (Debian's chromedriver, named explicitly: nothing downloaded): no console errors, hovering
    a point shows its thumbnail and names it, the wheel zooms, a legend entry lists its cluster's samples."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    cluster_cli.main(["--checkpoint", str(tiny_run / "encoder.pt"), "--data", "digits", "--methods", "kmeans",
                      "--out", str(tmp_path), "--cache-dir", "none", "--workers", "0"])
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1200",
                 f"--user-data-dir={tmp_path / 'profile'}", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(f"file://{tmp_path / 'report.html'}")
        points = driver.find_elements(By.CSS_SELECTOR, "#explore-map circle.pt")
        assert len(points) == 360   # the digits test split, every point shown
        ActionChains(driver).move_to_element(points[7]).perform()
        tip = driver.find_element(By.ID, "explore-tip")
        assert tip.is_displayed()
        assert tip.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/png;base64,")
        assert "cluster" in tip.text and "#" in tip.text
        before = driver.find_element(By.ID, "explore-map").get_dom_attribute("viewBox")
        origin = ScrollOrigin.from_element(driver.find_element(By.ID, "explore-map"))
        ActionChains(driver).scroll_from_origin(origin, 0, -200).perform()   # wheel up over the map: zoom in
        assert driver.find_element(By.ID, "explore-map").get_dom_attribute("viewBox") != before
        driver.find_elements(By.CSS_SELECTOR, "#explore-legend .lg")[0].click()
        assert driver.find_elements(By.CSS_SELECTOR, "#explore-panel img.thumb")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        driver.quit()


def test_cluster_compares_encoders_side_by_side_and_pixels_are_a_checkpoint(tiny_run, tmp_path):
    """--compare clusters other encoders' features the same way; `pixels` (a --checkpoint for ssl-probe too) is the
    raw-image baseline: its k-means here equals clustering the flattened images directly."""
    from ssl_rep.eval import eval_dataset
    from ssl_rep.eval import cluster, clustering_scores

    cluster_cli.main(["--checkpoint", str(tiny_run / "encoder.pt"), "--data", "digits", "--methods", "kmeans",
                      "--compare", "random:resnet20", "--compare", "pixels", "--out", str(tmp_path), "--cache-dir",
                      "none", "--workers", "0"])
    saved = json.loads((tmp_path / "clusters.json").read_text())
    assert set(saved["compare"]) == {"random:resnet20", "pixels"}
    dataset = eval_dataset("digits", "test", None, None)
    flat = torch.stack([dataset[i][0] for i in range(len(dataset))]).flatten(1).numpy()
    direct = clustering_scores(np.asarray(dataset.labels), cluster(flat, "kmeans", n_clusters=10))
    assert saved["compare"]["pixels"]["kmeans"]["scores"]["acc"] == pytest.approx(direct["acc"])
    page = (tmp_path / "report.html").read_text()
    assert "<h2>Comparison</h2>" in page and page.count("class='gap'") >= 1 and "pixels" in page


def test_setup_stops_before_installing_when_the_disk_is_short(tmp_path):
    """`make setup` (under `make test` / `make demo`, so under CI) checks free space before pip fills the disk."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "venv"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["make", "-C", str(root), "setup", f"VENV={venv}", "MIN_FREE_GIB=1000000000",
                          f"PYTHON={sys.executable}"], capture_output=True, text=True)
    assert out.returncode != 0
    assert f"GiB free on the disk of {tmp_path}" in out.stderr and "MIN_FREE_GIB=0" in out.stderr
    assert not venv.exists()


def test_demo_runs_pretrain_probe_cluster_and_shows_the_loops_notes(tmp_path):
    """`make demo` (python -m ssl_rep.demo) end to end, in its own process, at 80 steps of a width-8 ResNet-20: the
    pretrained encoder's probe beats its untrained twin (the demo's baseline: same width, fresh weights), and the
    summary, the report and the loop's INFO note on stderr (the precision auto picked for this CPU) appear. bf16 is
    not forced: where the CPU emulates it (AVX2 without AVX512-BF16) the demo would run 10x slower."""
    from ssl_rep.train.setup import native_bf16
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "ssl_rep.demo", "--out", str(out), "trainer.max_steps=80", "encoder.width=8",
                           "data.num_workers=0", "trainer.device=cpu"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SSL_REP_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pretrain_steps"] == 80 and summary["data"] == "digits"
    pretrained, baseline = summary["probe"]["pretrained"], summary["probe"]["random_init"]
    assert baseline["checkpoint"].startswith("untrained:")
    assert pretrained["top1"] > baseline["top1"] + 0.03, (pretrained["top1"], baseline["top1"])  # 0.847 vs 0.778 here
    assert {"kmeans", "meanshift", "dbscan", "gmm", "agglomerative"} <= set(summary["clusters"])
    assert 0 < summary["clusters"]["kmeans"]["acc"] <= 1
    assert (out / "cluster" / "report.html").stat().st_size > 1000
    precision = "bf16" if native_bf16() else "fp32"
    assert f"INFO ssl_rep.train: training in {precision}" in proc.stderr
    assert f"bf16 in hardware: {'yes' if native_bf16() else 'no'}" in proc.stderr
    assert "report:" in proc.stdout


def test_untrained_baseline_has_the_checkpoints_shape_and_the_output_names_the_features(tmp_path, caplog):
    """untrained:CKPT is the same encoder (a CPC patch grid here) with fresh weights: same shape, same
    features read the same way, and the log says which representation was read."""
    from ssl_rep.eval import resolve_encoder
    from ssl_rep.cli.probe import main as probe_main
    run = train(load_config("cpc_digits", ["trainer.max_steps=2", "data.num_workers=0", "trainer.device=cpu",
                                           f"out_dir={tmp_path / 'cpc'}"]), progress=False)
    trained = resolve_encoder(str(run.encoder_path))
    fresh = resolve_encoder(f"untrained:{run.encoder_path}", seed=1)
    assert fresh.encoder_name == trained.encoder_name == "patch_grid"
    assert fresh.encoder_kwargs == trained.encoder_kwargs
    assert [v.shape for v in fresh.state_dict().values()] == [v.shape for v in trained.state_dict().values()]
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), trained.state_dict().values()))
    with caplog.at_level("INFO", logger="ssl_rep.eval"):
        probe_main(["--checkpoint", f"untrained:{run.encoder_path}", "--data", "digits", "--out", str(tmp_path / "p"),
                    "--cache-dir", "none", "--device", "cpu", "--knn-k", "5", "--C", "0.1", "--train-subset", "300"])
    assert "mean of the patch vectors over the grid (CPC v2's linear protocol)" in caplog.text


def test_patch_reading_flags_set_how_a_cpc_encoder_reads_and_refuse_other_encoders():
    """--patch-stride / --patch-crop override what a CPC checkpoint records (0: the whole patch), the log line
    says how the grid was read, and any other encoder gets an error naming the flags."""
    import argparse
    from ssl_rep import create_encoder
    from ssl_rep.cli.common import describe_features, set_patch_reading
    from ssl_rep.methods import create_method
    enc = create_method("cpc", create_encoder("resnet20"), patch_jitter=2, prediction_steps=2).encoder
    args = argparse.Namespace(features="backbone", grid=2)
    assert "at stride 2, each read as its central 6 px resized to 8" in describe_features(enc, args)
    set_patch_reading(enc, 4, 0)
    assert (enc.read_stride, enc.read_crop) == (4, None)
    assert describe_features(enc, args).endswith("patches of 8 px at stride 4")
    assert enc(torch.zeros(1, 3, 28, 28)).shape == (1, enc.num_features)
    with pytest.raises(ValueError, match="--patch-crop must be in \\[0, 8\\]"):
        set_patch_reading(enc, None, 9)
    with pytest.raises(ValueError, match="--patch-stride and --patch-crop apply to CPC.*not to resnet20"):
        set_patch_reading(create_encoder("resnet20"), 2, None)


def test_evaluation_reads_the_training_dataset_at_the_size_the_encoder_trained_at(tmp_path, monkeypatch):
    """A folder trained at data.image_size=16 is probed, clustered and embedded at 16 px (and so is its untrained
    twin), not at the folder's median size, from another working directory than the run's relative data.dataset;
    another dataset is read at its own default size."""
    from PIL import Image

    from ssl_rep.cli.common import encoder_for, features_for

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls in ("a", "b"):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    train(load_config("simclr_digits", ["data.dataset=imgs", "data.image_size=16", "data.batch_size=8",
                                        "trainer.max_steps=1", "data.num_workers=0", "trainer.device=cpu",
                                        f"out_dir={tmp_path / 'run'}"]), progress=False)
    encoder_file = tmp_path / "run" / "encoder.pt"
    assert ssl_rep.load_encoder(encoder_file).preprocess["image_size"] == 16
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    folder = "../imgs"
    for checkpoint, data, size in ((encoder_file, folder, 16), (f"untrained:{encoder_file}", folder, 16),
                                   (encoder_file, "digits", None)):
        args = probe_cli.parse_args(["--checkpoint", str(checkpoint), "--data", data, "--cache-dir", "none",
                                     "--workers", "0"])
        encoder = encoder_for(args, "train")
        assert args.image_size == size, checkpoint
        if data == folder:
            _, _, dataset = features_for(encoder, data, "test", args)
            assert dataset[0][0].shape == (3, 16, 16)   # the folder's own median short side is 40


def test_pretrain_on_an_unlabeled_folder_points_to_ssl_cluster_not_ssl_probe(tmp_path, capsys):
    """A flat folder has no labels: ssl-pretrain's closing lines suggest ssl-cluster and say why not ssl-probe,
    where a labelled dataset gets both."""
    from PIL import Image

    from ssl_rep.cli.pretrain import main as pretrain_main

    rng = np.random.default_rng(0)
    (tmp_path / "flat").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    common = ["trainer.max_steps=1", "data.batch_size=8", "data.num_workers=0", "trainer.device=cpu"]
    for data, labelled in ((tmp_path / "flat", False), ("digits", True)):
        pretrain_main(["simclr_digits", f"data.dataset={data}", f"out_dir={tmp_path / str(labelled)}", *common])
        printed = capsys.readouterr().out.split("next:")[1]
        assert ("ssl-probe --checkpoint" in printed) == labelled, printed
        assert "ssl-cluster --checkpoint" in printed
        assert ("has no labels" in printed) != labelled
    # and ssl-cluster as suggested: the silhouette scores it, the report names the folder it read, no label columns
    out = tmp_path / "False"
    cluster_cli.main(["--checkpoint", str(out / "encoder.pt"), "--data", str(tmp_path / "flat"), "--methods",
                      "kmeans", "--n-clusters", "3", "--cache-dir", "none", "--workers", "0"])
    assert "kmeans         silhouette " in capsys.readouterr().out
    report = (out / "report.html").read_text()
    assert f"Clusters of {out / 'encoder.pt'} on {tmp_path / 'flat'}</h1>" in report
    assert "<th>silhouette</th>" in report and "<th>acc</th>" not in report


def _class_folders(root, classes, n):
    """``root/<class>/<i>.png``: one colour per class (by name), so any encoder's features separate them."""
    colours = {"bird": (0, 200, 0), "cat": (220, 0, 0), "dog": (0, 0, 230), "fox": (200, 120, 0)}
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(np.array(colours[cls]) + rng.integers(-20, 21, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def test_a_held_out_folder_missing_a_class_is_scored_in_the_training_splits_classes(tmp_path, capsys, caplog):
    """train/ holds bird, cat, dog and val/ only cat and dog: numbered by their own folders, val's cat (0) and dog
    (1) read as the training split's bird and cat, and a probe that is right on every image scored 0. Both ssl-probe
    and the online probe now count val's classes as train's; a val class that train lacks is an error naming it
    (ssl-probe) or a warning that leaves the online probe to training accuracy."""
    from ssl_rep.encoders import create_encoder
    from ssl_rep.eval.api import probe_encoder
    from ssl_rep.eval.inputs import eval_dataset
    from ssl_rep.train.data import build_eval_dataset

    root = tmp_path / "pets"
    _class_folders(root / "train", ["bird", "cat", "dog"], 6)
    _class_folders(root / "val", ["cat", "dog"], 3)
    argv = ["--checkpoint", "random:resnet20", "--data", str(root), "--C", "1", "--knn-k", "1", "--cache-dir",
            str(tmp_path / "cache"), "--workers", "0", "--out", str(tmp_path / "probe")]
    probe_cli.main(argv)
    result = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert result["top1"] == 1.0 and result["knn"]["1"] == 1.0
    cfg = load_config("simclr_digits", [f"data.dataset={root}"])
    held_out = build_eval_dataset(cfg, 16, ["bird", "cat", "dog"])
    assert held_out.classes == ["bird", "cat", "dog"] and held_out.labels == [1, 1, 1, 2, 2, 2]
    train_set, test_set = (eval_dataset(str(root), split, image_size=16) for split in ("train", "test"))
    api = probe_encoder(create_encoder("resnet20"), train_set, test_set, device="cpu", C=1.0, knn_k=[1])
    assert api["top1"] == 1.0   # the Python API too

    _class_folders(root / "val", ["fox"], 2)
    with pytest.raises(SystemExit):
        probe_cli.main(argv)
    assert "class(es) fox not among the training split's 3 classes" in capsys.readouterr().err
    with caplog.at_level("WARNING", logger="ssl_rep.train"):
        assert build_eval_dataset(cfg, 16, ["bird", "cat", "dog"]) is None
    assert "fox not among" in caplog.text and "training accuracy only" in caplog.text


def test_a_fully_connected_encoder_is_read_at_its_one_size_on_any_dataset(tmp_path, caplog):
    """An mlp encoder (N2D's) trained at 16 px and read on another dataset: it was read at that dataset's own size
    and failed with the mlp's shape error; it now reads the one size it can. --features grid, which has no spatial
    map to pool there, is an error saying so."""
    from ssl_rep.cli.common import encoder_for

    run = tmp_path / "mlp"
    train(load_config("ae_digits", [f"out_dir={run}", "encoder.name=mlp", "encoder.image_size=16",
                                    "method.decoder=mlp", "method.code_dim=4", "data.image_size=16",
                                    "trainer.max_steps=2", "data.batch_size=16", "data.num_workers=0"]),
          progress=False)
    argv = ["--checkpoint", str(run / "encoder.pt"), "--data", "fashion-mnist", "--cache-dir", "none",
            "--workers", "0", "--out", str(tmp_path / "p")]
    args = probe_cli.parse_args(argv)
    with caplog.at_level("INFO", logger="ssl_rep.eval"):
        encoder = encoder_for(args, "train")
    assert args.image_size == 16 and "reads 16 px images only" in caplog.text
    assert encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 4)
    with pytest.raises(ValueError, match="--features grid pools a spatial feature map"):
        encoder_for(probe_cli.parse_args([*argv, "--features", "grid"]), "train")


def test_ctrl_c_in_an_evaluation_command_exits_130_without_a_traceback(capsys):
    from ssl_rep.cli.common import friendly_errors
    with pytest.raises(SystemExit) as exit_info, friendly_errors("ssl-cluster", ValueError):
        raise KeyboardInterrupt
    assert exit_info.value.code == 130 and capsys.readouterr().err == "\nssl-cluster: interrupted\n"


def test_input_transform_reads_a_file_as_ssl_probe_does(tmp_path):
    """ssl_rep.input_transform(encoder): a user's own image becomes the tensor ssl-probe would feed the encoder
    for that file (size and statistics from encoder.preprocess), whatever the image's mode."""
    from ssl_rep.data.decode import load_rgb
    from ssl_rep.eval.inputs import eval_dataset, trained_size

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 36, 4), dtype=np.uint8), mode="RGBA").save(folder / f"{i}.png")
    train(load_config("ae_digits", [f"out_dir={tmp_path / 'run'}", f"data.dataset={folder}", "data.image_size=24",
                                    "trainer.max_steps=1", "data.batch_size=8", "data.num_workers=0",
                                    "data.eval_split=null"]), progress=False)
    encoder = ssl_rep.load_encoder(tmp_path / "run" / "encoder.pt")
    probe_read = eval_dataset(str(folder), "test", image_size=trained_size(encoder, str(folder)))
    index = [Path(path).name for path, _ in probe_read.samples].index("3.png")
    mine = ssl_rep.input_transform(encoder)(Image.open(folder / "3.png"))   # RGBA, as the file is
    assert mine.shape == (3, 24, 24) and torch.equal(mine, probe_read[index][0])
    assert torch.equal(ssl_rep.input_transform(encoder)(load_rgb(folder / "3.png")), mine)
    with pytest.raises(ValueError, match="records no preprocessing"):
        ssl_rep.input_transform(ssl_rep.create_encoder("resnet20"))


def test_the_online_probes_held_out_images_span_every_class_of_a_folder(tmp_path):
    """A folder lists its images class by class, and the online probe kept the first `limit` of its held-out split:
    on ImageNet's val, the first 10,000 are 200 of the 1,000 classes. It now keeps images spread through the split."""
    from ssl_rep.train.online_probe import HeldOut

    _class_folders(tmp_path / "val", ["bird", "cat", "dog"], 4)
    held_out = HeldOut(ssl_rep.build_dataset(tmp_path / "val"), torch.device("cpu"), limit=6)
    assert sorted(held_out.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert len(HeldOut(ssl_rep.build_dataset(tmp_path / "val"), torch.device("cpu"), limit=100)) == 12
