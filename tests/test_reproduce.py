"""The reproduction harness (eval/reproduce.py) end to end on digits, at a few steps per method."""
import json
from pathlib import Path

import pytest

from eval import reproduce


@pytest.fixture
def sections(monkeypatch) -> dict:
    """RESULTS.md sections that ``reproduce.render`` writes, caught here instead of in eval/RESULTS.md."""
    caught = {}
    monkeypatch.setattr(reproduce, "update_section", lambda key, title, command, body, **kw: caught.update({key: body}))
    return caught


@pytest.mark.slow   # a script under eval/, not the library (make test-all runs it)
def test_digits_suite_runs_every_row_and_writes_its_table(tmp_path, monkeypatch, sections):
    monkeypatch.chdir(tmp_path)   # runs/ and the feature cache go here
    out = tmp_path / "digits.json"
    result = reproduce.run("digits-suite", "cpu", None, ["trainer.max_steps=3", "data.num_workers=0"],
                           ["simclr", "autoencoder", "cpc", "supervised"], ["kmeans", "gmm"], out)
    reproduce.render(result)
    saved = json.loads(out.read_text())
    # CPC's patch-grid encoder is not the random row's ResNet: it gets its own untrained twin
    assert list(saved["rows"]) == ["simclr", "autoencoder", "cpc", "cpc, untrained", "supervised", "random init",
                                   "raw pixels"]
    for name, row in saved["rows"].items():
        assert 0.1 < row["top1"] <= row["top5"] <= 1, name
        assert 0 < row["clusters"]["kmeans"]["acc"] <= 1 and 0 < row["kmeans_l2"]["acc"] <= 1, name
        assert 0 < row["kmeans_l2_umap"]["acc"] <= 1 and 0 < row["umap_gmm"]["nmi"] <= 1, name
        assert 0 < row["kmeans_whiten"]["acc"] <= 1, name   # 64 features: whitened to 20
    assert saved["rows"]["simclr"]["steps"] == 3
    # only SimCLR has a projection head; its k-means on the L2-normalised head output is a column of its own
    assert [n for n, r in saved["rows"].items() if "kmeans_projection_l2" in r] == ["simclr"]
    assert 0 < saved["rows"]["simclr"]["kmeans_projection_l2"]["acc"] <= 1
    assert saved["rows"]["raw pixels"]["top1"] > 0.9   # logistic regression on 8x8 digits: ~0.96
    pixels = saved["rows"]["raw pixels"]   # UMAP separates the digits' pixels (measured 0.625 -> 0.822)
    assert pixels["kmeans_l2_umap"]["acc"] > pixels["kmeans_l2"]["acc"] + 0.05
    table = sections["suite-digits-suite"]
    assert "k-means ACC, L2" in table and "| raw pixels |" in table and "| random init |" in table
    assert "k-means ACC, projection L2" in table and "k-means ACC, L2 + UMAP-10" in table
    assert "k-means ACC, whitened-20" in table
    assert "UMAP + GMM ACC / NMI (N2D)" in table and "| cpc, untrained | same encoder, untrained |" in table
    assert all(line.count("|") == 15 for line in table.splitlines() if line.startswith("|"))
    # N2D's protocol (train + test clustered together) where the whole training split was probed
    assert all(row["umap_gmm_all"]["points"] == 1797 for row in saved["rows"].values())
    # --trained METHOD=CKPT evaluates a finished run instead of training it again
    monkeypatch.setattr(reproduce, "train", lambda *a, **k: pytest.fail("trained again"))
    again = reproduce.run("digits-suite", "cpu", None, [], ["autoencoder"], ["kmeans"], tmp_path / "again.json",
                          {"autoencoder": "runs/digits-suite/autoencoder/checkpoints/last.pt"})
    row = again["rows"]["autoencoder"]
    assert row["steps"] == 3 and row["top1"] == pytest.approx(saved["rows"]["autoencoder"]["top1"], abs=1e-9)


def test_render_keeps_runs_saved_before_the_l2_umap_and_projection_columns(sections):
    row = {"top1": 0.9, "top5": 1.0, "knn20": 0.8, "clusters": {"kmeans": {"acc": 0.5, "nmi": 0.4}}}
    reproduce.render({"experiment": "x", "rows": {"random init": row}, "overrides": [], "anchors": "a",
                      "command": "c", "machine": "m"})
    expected = "| random init | – | 0.9000 | 1.0000 | 0.8000 | 0.5000 | 0.4000 | – | – | – | – | – | – | – |"
    assert expected in sections["suite-x"]


def test_umap_column_is_skipped_without_umap_learn(monkeypatch):
    """The GPU image has no umap-learn: the suite still runs, without the UMAP column; the whitened column needs
    more features than it keeps."""
    import numpy as np
    X, y = np.random.default_rng(0).normal(size=(60, 24)).astype(np.float32), np.arange(60) % 3
    monkeypatch.setattr(reproduce.importlib.util, "find_spec", lambda name: None)
    assert list(reproduce.kmeans_l2_columns(X, y)) == ["kmeans_l2", "kmeans_whiten"]
    assert list(reproduce.kmeans_l2_columns(X[:, :reproduce.WHITEN_DIM], y)) == ["kmeans_l2"]


def test_n2d_column_runs_on_a_code_as_small_as_the_clusters():
    """N2D maps a 10-value code to 10 dimensions: the UMAP + GMM column runs on it (the k-means-after-UMAP column
    needs more dimensions than it maps to, so it is left out), with N2D's 20 neighbours."""
    import numpy as np
    pytest.importorskip("umap")
    rng = np.random.default_rng(0)
    y = np.arange(90) % 3
    X = (rng.normal(size=(90, 3)) * 0.1 + np.eye(3)[y] * 5).astype(np.float32)
    out = reproduce.kmeans_l2_columns(X, y)
    assert list(out) == ["kmeans_l2", "umap_gmm"]
    assert out["umap_gmm"]["umap_neighbors"] == reproduce.N2D_NEIGHBORS == 20 and out["umap_gmm"]["acc"] > 0.9
    starts = []   # --gmm-starts reaches the GMM, and the scores say how many fits it kept the best of
    real = reproduce.cluster
    spy = lambda *args, **kw: starts.append(kw.get("n_init")) or real(*args, **kw)  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduce, "cluster", spy)
        four = reproduce.n2d_scores(X, y, 3, n_init=4)
    assert starts == [4] and four["gmm_starts"] == 4 and four["acc"] > 0.9 and "gmm_starts" not in out["umap_gmm"]


@pytest.mark.parametrize("name", sorted(reproduce.EXPERIMENTS))
def test_every_experiment_names_recipes_that_load(name):
    from ssl_rep.train import load_config
    spec = reproduce.EXPERIMENTS[name]
    for method, recipe in spec["recipes"].items():
        load_config(recipe, reproduce.for_method(spec.get("overrides", []), method))


def test_epochs_for_budget_times_the_second_half_of_a_run():
    from eval.epochs_for_budget import epochs_for_budget, seconds_per_step
    # 40 s of compilation before step 5, then 0.5 s per step: only the steady state counts
    lines = [{"step": s, "elapsed": (40 if s >= 5 else 0) + 0.5 * s, "loss": 1.0} for s in range(1, 81)]
    lines.insert(10, {"epoch": 0, "online_probe": 0.5})   # lines without timing are skipped
    assert seconds_per_step(lines) == pytest.approx(0.5)
    assert epochs_for_budget(lines, 300, images=60_000, batch_size=256) == 2   # 234 steps x 0.5 s = 117 s/epoch
    assert epochs_for_budget(lines, 10, images=60_000, batch_size=256) == 1    # never 0
    with pytest.raises(ValueError, match="at least two logged steps"):
        seconds_per_step(lines[:1])


def test_results_md_keeps_its_topics_in_order_and_a_rewrite_changes_nothing_else():
    from eval.results_md import TOPICS, organise
    text = (Path(__file__).resolve().parents[1] / "eval" / "RESULTS.md").read_text()
    assert organise(text) == text   # the file is organised, and organising is idempotent
    titles = [line[2:] for line in text.splitlines() if line.startswith("# ")][1:]
    assert titles == [t for t, _ in TOPICS if t in titles]


def test_trained_run_adds_up_resumed_segments_and_counts_epochs_of_a_step_capped_run(tmp_path):
    """elapsed restarts when a run resumes: the training time is the sum of the segments. With trainer.max_steps
    the epochs are those the steps covered (here 10 steps of 4 per epoch), not the recipe's trainer.epochs."""
    from ssl_rep.train import load_config
    from ssl_rep.train.config import save_config
    save_config(load_config("simclr_digits", ["trainer.epochs=50", "trainer.max_steps=10"]), tmp_path / "config.yaml")
    rows = [{"step": 2, "epoch": 0, "elapsed": 1.0}, {"step": 4, "epoch": 0, "elapsed": 2.0},   # checkpoint at 4,
            {"step": 6, "epoch": 1, "elapsed": 0.5}, {"step": 10, "epoch": 2, "elapsed": 1.5}]  # killed, resumed
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "checkpoints").mkdir()
    seconds, steps, epochs = reproduce.trained_run(str(tmp_path / "checkpoints" / "last.pt"))
    assert (seconds, steps, epochs) == (2.0 + 1.5, 10, 2.0)


def test_render_merges_runs_in_order_and_keeps_a_rows_first_run(tmp_path, monkeypatch, sections):
    def row(top1):
        return {"top1": top1, "top5": 1.0, "knn20": 0.5, "clusters": {"kmeans": {"acc": 0.5, "nmi": 0.4}}}
    runs = {"main": {"cpc": row(0.86)}, "a": {"raw pixels": row(0.85), "autoencoder": row(0.89)},
            "b": {"raw pixels": row(0.11), "simclr": row(0.89)}}
    for name, rows in runs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"experiment": "x", "rows": rows, "overrides": [],
                                                           "anchors": "a", "command": "c", "machine": "m"}))
    monkeypatch.setattr("sys.argv", ["reproduce", "--render", str(tmp_path / "main.json"),
                                     "--merge", str(tmp_path / "a.json"), "--merge", str(tmp_path / "b.json")])
    reproduce.main()
    table = [line.split(" | ")[0][2:] for line in sections["suite-x"].splitlines()[2:] if line.startswith("| ")]
    assert table == ["cpc", "raw pixels", "autoencoder", "simclr"]
    assert "| raw pixels | – | 0.8500 |" in sections["suite-x"]   # the first run that has the row wins


def test_a_re_render_stamps_the_commit_that_measured_the_run_not_the_checkouts(tmp_path, monkeypatch):
    from eval import results_md
    out = tmp_path / "RESULTS.md"
    monkeypatch.setattr(reproduce, "update_section", lambda *a, **kw: results_md.update_section(*a, path=out, **kw))
    monkeypatch.setattr(results_md, "git_rev", lambda: "c0ffee1")   # the checkout's commit
    row = {"top1": 0.9, "top5": 1.0, "knn20": 0.8, "clusters": {"kmeans": {"acc": 0.5, "nmi": 0.4}}}
    saved = {"experiment": "x", "rows": {"cpc": row}, "overrides": [], "anchors": "a", "command": "c",
             "machine": "m", "date": "2026-01-02"}
    path = tmp_path / "run.json"
    for recorded, flag, stamp in [({"commit": "abc1234"}, [], "abc1234"), ({}, [], "c0ffee1"),
                                  ({}, ["--commit", "0a51428"], "0a51428")]:
        path.write_text(json.dumps({**saved, **recorded}))
        monkeypatch.setattr("sys.argv", ["reproduce", "--render", str(path), *flag])
        reproduce.main()
        assert f"2026-01-02, m, commit {stamp}\n" in out.read_text(), (recorded, flag)
    # the other benchmarks' --render takes --commit too
    import argparse
    monkeypatch.setattr(results_md, "MEASURED_AT", None)   # restored to None after the test
    monkeypatch.setattr("sys.argv", ["bench", "--render", str(path), "--commit", "1234abc"])
    assert results_md.parse_or_render(argparse.ArgumentParser(), lambda result, command, machine_name: (
        results_md.update_section("y", "y", "c", "b", path=out, machine_name="m", date="d"))) is None
    assert "d, m, commit 1234abc\n" in out.read_text()


def test_cpu_benchmarks_keep_each_kind_of_cpu_in_a_section_of_its_own(monkeypatch):
    """An AVX-512 CPU, AVX2 kernels capped on it, and a CPU that is itself AVX2-only: three sections, none
    overwriting another (a real AVX2 machine once rendered over the AVX-512 machine's lightly comparison)."""
    from eval import bench_cpu_precision, bench_kmeans, bench_vs_lightly
    caught = []
    for module in (bench_cpu_precision, bench_kmeans, bench_vs_lightly):
        monkeypatch.setattr(module, "table_section", lambda key, title, *a, **kw: caught.append((key, title)))
    kinds = [("AVX512", {}), ("AVX2", {"ATEN_CPU_CAPABILITY": "avx2"}), ("AVX2", {})]
    for capability, caps in kinds:
        precision_row = {"method": "simclr", "variant": "fp32", "batch_size": 8, "ms": 1.0, "speedup": 1.0,
                         "speedup_min": 1.0, "speedup_max": 1.0}
        bench_cpu_precision.render({"data": "digits", "steps": 1, "repeats": 1, "threads": 2, "native_bf16": False,
                                    "cpu_capability": capability, "rows": [precision_row], "caps": caps}, "c")
        bench_kmeans.render({"rows": [], "threads": 2, "caps": caps, "cpu_capability": capability}, "c")
        bench_vs_lightly.render({"rows": [], "device": "cpu", "lightly": "1.6.0", "batch": 8, "image_size": 32,
                                 "steps": 1, "warmup": 1, "workers": 0, "caps": caps, "cpu_capability": capability},
                                "c")
    keys = [key for key, _ in caught]
    assert len(set(keys)) == 9, keys
    assert keys[:3] == ["cpu-precision-digits", "bench-kmeans", "bench-vs-lightly-cpu"]   # the AVX-512 machine's
    assert "bench-vs-lightly-cpu-avx2" in keys   # the capped sections keep the keys they were written under
    assert all("AVX2-only CPU" in title for _, title in caught[6:])
    bench_kmeans.render({"rows": [], "threads": 2}, "c")   # saved before the CPU was recorded: the AVX-512 one
    assert caught[-1][0] == "bench-kmeans"
