"""Named experiments end to end (pretrain -> probe -> cluster), written to JSON and eval/RESULTS.md.

    python -m eval.reproduce --list
    python -m eval.reproduce digits-suite                       # CPU, minutes
    python -m eval.reproduce fashion-mnist-suite --device cuda  # GPU, minutes; CPU, hours
    python -m eval.reproduce --render results.json             # (re)write RESULTS.md from a saved run

Every suite has a row per pretext method, a random-init encoder and raw pixels; each row gets the
linear probe (top-1/top-5), kNN@20 and k-means ACC/NMI on the test split, and k-means ACC on the
L2-normalised features (the unit sphere that contrastive losses and the cosine kNN work on), also after
UMAP to 10 dimensions (``ssl-cluster --l2 --umap 10``; skipped where umap-learn is not installed).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from eval.results_md import command_line, git_rev, machine, update_section
from ssl_rep.data import build_dataset
from ssl_rep.encoders import CheckpointError
from ssl_rep.eval import KNNClassifier, LinearProbe, cluster, cluster_features, clustering_scores, eval_dataset, \
    extract_features, fixed_subset, preprocess, probe_features, resolve_encoder
from ssl_rep.eval.cluster import whiten_features
from ssl_rep.eval.inputs import run_folder
from ssl_rep.train import load_config, train

EXPERIMENTS = {
    "digits-suite": {"data": "digits", "recipes": {"simclr": "simclr_digits", "autoencoder": "ae_digits",
                                                    "cpc": "cpc_digits", "supervised": "supervised_digits"},
                     "anchors": "raw-pixel logistic regression on the 8x8 digits is about 96-97%"},
    # The methods peers are compared by, beside SimCLR, at the digits recipes (heads sized for 64-d features)
    "digits-methods": {"data": "digits",
                       "recipes": {"simclr": "simclr_digits", "byol": "byol_digits", "moco": "moco_digits",
                                   "mocov3": "mocov3_digits", "simsiam": "simsiam_digits",
                                   "barlow_twins": "barlow_twins_digits", "vicreg": "vicreg_digits",
                                   "dino": "dino_digits"},
                       "anchors": "raw-pixel logistic regression on the 8x8 digits is about 96-97%"},
    "fashion-mnist-suite": {"data": "fashion-mnist",
                            "recipes": {"simclr": "simclr_fashion_mnist", "autoencoder": "ae_fashion_mnist",
                                        "cpc": "cpc_fashion_mnist", "supervised": "supervised_fashion_mnist"},
                            "anchors": "raw-pixel logistic regression 84.2%, SVC 89.7% (Xiao et al. 2017); supervised "
                                       "ResNet-18 94.9%; k-means on pixels ACC ~0.47 / NMI ~0.51; N2D ACC 0.672 / "
                                       "NMI 0.684 (McConville et al. 2019). Goal: SSL probe >= 91%, k-means ACC >= 0.70"},
    # The wider encoder for the Fashion-MNIST goals (a GPU run): ResNet-18 with the 3x3 stride-1 stem, 512-d features
    "fashion-mnist-resnet18": {"data": "fashion-mnist",
                               "recipes": {"simclr": "simclr_fashion_mnist", "supervised": "supervised_fashion_mnist"},
                               "overrides": ["encoder.name=resnet18", "encoder.stem=cifar"],
                               "random": "random:resnet18?stem=cifar",
                               "anchors": "supervised ResNet-18 94.9% (Fashion-MNIST benchmark table); N2D ACC 0.672 / "
                                          "NMI 0.684 (McConville et al. 2019). Goal: SSL probe >= 91%, k-means ACC >= 0.70"},
    # CPC v2 and the autoencoder on all of Fashion-MNIST: their own recipes, each beside its own encoder untrained
    "fashion-mnist-ae-cpc": {"data": "fashion-mnist",
                             "recipes": {"autoencoder": "ae_fashion_mnist", "cpc": "cpc_fashion_mnist",
                                         "simclr": "simclr_fashion_mnist"},
                             "anchors": "raw-pixel logistic regression 84.2% (Xiao et al. 2017); N2D (autoencoder -> "
                                        "UMAP -> GMM) ACC 0.672 / NMI 0.684 (McConville et al. 2019). Goals: CPC probe "
                                        ">= 0.90, autoencoder >= 0.88, each >= 3 pt above its untrained encoder; "
                                        "AE + UMAP + GMM ACC >= 0.70 / NMI >= 0.68; CPC k-means ACC >= 0.60"},
    # Every method at one CPU budget: the same ResNet-20 and epochs on the same 5,000 training images, probe on
    # 10,000, test on all 10,000
    "fashion-mnist-methods": {"data": "fashion-mnist", "probe_train_subset": 10_000,
                              "recipes": {"simclr": "simclr_fashion_mnist", "byol": "byol_fashion_mnist",
                                          "moco": "moco_fashion_mnist", "mocov3": "mocov3_fashion_mnist",
                                          "simsiam": "simsiam_fashion_mnist",
                                          "barlow_twins": "barlow_twins_fashion_mnist",
                                          "vicreg": "vicreg_fashion_mnist", "dino": "dino_fashion_mnist",
                                          "autoencoder": "ae_fashion_mnist", "cpc": "cpc_fashion_mnist"},
                              "overrides": ["data.subset=5000", "data.num_workers=2", "trainer.epochs=6",
                                            "data.batch_size=128", "autoencoder:data.batch_size=64",
                                            "cpc:data.batch_size=32", "cpc:encoder.width=16",
                                            "moco:method.queue_size=2048"],
                              "anchors": "raw-pixel logistic regression 84.2% on all 60,000 (Xiao et al. 2017); "
                                         "lightly's CIFAR-10 kNN table (200 epochs): BYOL 0.869, SimCLR 0.847, MoCo "
                                         "0.838, SimSiam 0.819, Barlow Twins 0.842, DINO 0.840"},
    # Every method on CPU in minutes: pretrain on 5,000 training images, probe on 10,000, test on all 10,000.
    "fashion-mnist-cpu-subset": {"data": "fashion-mnist", "probe_train_subset": 10_000,
                                 "recipes": {"simclr": "simclr_fashion_mnist", "autoencoder": "ae_fashion_mnist",
                                             "cpc": "cpc_fashion_mnist", "supervised": "supervised_fashion_mnist"},
                                 "overrides": ["data.subset=5000", "data.num_workers=2", "simclr:data.batch_size=128",
                                               "simclr:trainer.epochs=8", "autoencoder:data.batch_size=64",
                                               "autoencoder:trainer.epochs=4", "cpc:data.batch_size=32",
                                               "cpc:trainer.epochs=1", "supervised:data.batch_size=64",
                                               "supervised:trainer.epochs=4", "supervised:optim.lr=0.05"],
                                 "anchors": "raw-pixel logistic regression 84.2% on all 60,000 (Xiao et al. 2017)"},
}


def evaluate(checkpoint: str, data: str, root, device, cluster_methods, train_subset=None, cache_dir=None) -> dict:
    """One row: the linear probe and kNN@20 (fit on the training split, or its seeded ``train_subset``), and the
    clusterings of the test features, through the library's evaluation API (the defaults of ssl-probe and
    ssl-cluster); each split's features are extracted once and serve the probe and every clustering."""
    def features(encoder, split, subset=None):
        dataset = fixed_subset(eval_dataset(data, split, root), subset)
        X, y = extract_features(encoder, dataset, batch_size=512, device=device, num_workers=4 if device == "cuda"
                                else 2, cache_dir=cache_dir, progress=sys.stderr.isatty())
        return np.asarray(X), y

    encoder = resolve_encoder(checkpoint)
    X, y = features(encoder, "train", train_subset)
    Xt, yt = features(encoder, "test")
    probe = probe_features(X, y, Xt, yt, knn_k=(20,), device=device)
    results, _ = cluster_features(Xt, yt, cluster_methods, max_memory_gb=8.0)
    row = {"top1": probe["top1"], "top5": probe["top5"], "knn20": probe["knn"]["20"],
           "clusters": {m: r.get("scores", {"error": r.get("error")}) for m, r in results.items()},
           **kmeans_l2_columns(Xt, yt), **({} if train_subset else n2d_all_column(X, y, Xt, yt))}
    if not checkpoint.startswith(("random:", "untrained:")):   # SimCLR: k-means also on the sphere its loss compares on
        try:
            Zt, _ = features(resolve_encoder(checkpoint, projection=True), "test")
        except CheckpointError:   # the method has no projection head
            return row
        row["kmeans_projection_l2"] = cluster_features(Zt, yt, ["kmeans"], l2=True)[0]["kmeans"]["scores"]
    return row


UMAP_DIM = 10
WHITEN_DIM = 20   # ssl-cluster --whiten 20: CPC's mean readout (eval/RESULTS.md, "k-means: which feature space")
N2D_NEIGHBORS = 20   # N2D's Fashion-MNIST run (rymc/n2d run.sh): 20 neighbours, min_dist 0, dims = clusters


def kmeans_l2_columns(X, y) -> dict:
    """k-means (the suites' default settings) on the L2-normalised features, and after L2 + UMAP to
    ``UMAP_DIM`` dimensions where umap-learn is installed (the GPU image may lack it): the columns
    ``kmeans_l2`` and ``kmeans_l2_umap``; k-means on the features whitened to ``WHITEN_DIM`` dimensions
    (``ssl-cluster --whiten``), ``kmeans_whiten``, where they have more; and N2D's UMAP + GMM, ``umap_gmm`` (it also
    runs on features that have no more dimensions than clusters, as N2D's 10-value code has)."""
    k, unit = len(np.unique(y)), preprocess(X, l2_normalize=True)   # normalised once, for both columns
    out = {"kmeans_l2": clustering_scores(y, cluster(unit, "kmeans", n_clusters=k))}
    if X.shape[1] > WHITEN_DIM:
        out["kmeans_whiten"] = clustering_scores(y, cluster(whiten_features(X, WHITEN_DIM), "kmeans", n_clusters=k))
    if importlib.util.find_spec("umap") is None:
        print("k-means after UMAP skipped: umap-learn is not installed", file=sys.stderr)
        return out
    if X.shape[1] > UMAP_DIM:
        out["kmeans_l2_umap"] = clustering_scores(y, cluster(preprocess(unit, umap=UMAP_DIM), "kmeans", n_clusters=k))
    if X.shape[1] >= k:
        out["umap_gmm"] = n2d_scores(X, y, k)
    return out


def n2d_scores(X, y, k: int, seed: int = 0, n_init: int = 1) -> dict:
    """N2D's pipeline (McConville et al. 2019): the features as they are -> UMAP to ``k`` dimensions with N2D's
    neighbours and min_dist 0 -> a Gaussian mixture of ``k`` components (the most likely of ``n_init`` fits; N2D
    fits once), scored against ``y``; ``seed`` is UMAP's and the mixture's."""
    mapped = preprocess(X, umap=k, umap_neighbors=N2D_NEIGHBORS, seed=seed)
    labels = cluster(mapped, "gmm", n_clusters=k, seed=seed, n_init=n_init)
    return {**clustering_scores(y, labels), "umap_neighbors": N2D_NEIGHBORS,
            **({"gmm_starts": n_init} if n_init > 1 else {})}


def n2d_all_column(X, y, Xt, yt) -> dict:
    """N2D's own protocol: UMAP + GMM on the training and test features together (all 70,000 Fashion-MNIST
    images, as N2D clusters them), scored against all their labels: the column ``umap_gmm_all``. Left out where
    the training features are a subset or umap-learn is missing."""
    k = len(np.unique(yt))
    if importlib.util.find_spec("umap") is None or X.shape[1] < k:
        return {}
    both = np.concatenate([X, Xt])
    return {"umap_gmm_all": {**n2d_scores(both, np.concatenate([y, yt]), k), "points": len(both)}}


def raw_pixels(data: str, root, cluster_methods, train_subset=None) -> dict:
    train_ds, test_ds = build_dataset(data, split="train", root=root), build_dataset(data, split="test", root=root)
    if train_subset:
        pick = np.asarray(fixed_subset(train_ds, train_subset, 0).indices)
        train_ds.images, train_ds.labels = train_ds.images[pick], train_ds.labels[pick]
    flat = lambda ds: np.asarray(ds.images)[..., 0].reshape(len(ds), -1).astype(np.float32) / 255  # noqa: E731
    X, Xt = flat(train_ds), flat(test_ds)
    y, yt = np.asarray(train_ds.labels), np.asarray(test_ds.labels)
    probe = LinearProbe().fit(X, y)
    clusters = {m: clustering_scores(yt, cluster(Xt, m, n_clusters=10, max_memory_gb=8.0)) for m in cluster_methods}
    return {"top1": probe.score(Xt, yt), "top5": probe.top_k_accuracy(Xt, yt),
            "knn20": KNNClassifier(20).fit(X, y).score(Xt, yt), "clusters": clusters,
            **kmeans_l2_columns(Xt, yt), **({} if train_subset else n2d_all_column(X, y, Xt, yt))}


def same_architecture(checkpoint: str, random_spec: str) -> bool:
    a, b = resolve_encoder(checkpoint), resolve_encoder(random_spec)
    return (a.encoder_name, a.encoder_kwargs) == (b.encoder_name, b.encoder_kwargs)


def for_method(overrides: list[str], method: str) -> list[str]:
    """Overrides that apply to ``method``: plain ``key=value`` for all, ``method:key=value`` for one."""
    picked = []
    for text in overrides:
        target, sep, rest = text.partition(":")
        if sep and "=" not in target:
            if target == method:
                picked.append(rest)
        else:
            picked.append(text)
    return picked


def training_speed(checkpoint: str) -> float | None:
    """The median of the run's logged images/s (the trainer's own measure, views counted once)."""
    out = run_folder(checkpoint)
    speeds = [json.loads(line).get("images_per_s") for line in (out / "metrics.jsonl").read_text().splitlines()[1:]]
    speeds = [v for v in speeds if v]
    return float(np.median(speeds)) if speeds else None


def trained_run(checkpoint: str) -> tuple[float, int, float]:
    """``(training seconds, steps, epochs)`` of a finished run, from the metrics.jsonl and config.yaml beside it.
    ``elapsed`` restarts at each resume: the seconds are the sum over the run's segments. A run stopped by
    ``trainer.max_steps`` reports the epochs it covered (to 0.1), not the recipe's ``trainer.epochs``."""
    out = run_folder(checkpoint)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in lines if "elapsed" in r and "step" in r]
    pairs = list(zip(logged, logged[1:]))
    seconds = sum(a["elapsed"] for a, b in pairs if b["elapsed"] < a["elapsed"]) + logged[-1]["elapsed"]
    cfg, steps = load_config(str(out / "config.yaml")), int(logged[-1]["step"])
    epochs: float = cfg.trainer.epochs
    if cfg.trainer.max_steps:   # the first epoch ends between the last step logged in epoch 0 and the next one
        ends = [(a["step"] + b["step"]) / 2 for a, b in pairs if a["epoch"] == 0 and b["epoch"] == 1]
        epochs = round(steps / ends[0], 1) if ends else epochs
    return float(seconds), steps, epochs


def run(name: str, device: str, root, overrides: list[str], methods: list[str], cluster_methods: list[str],
        json_path: Path, trained_checkpoints: dict | None = None, baselines: bool = True) -> dict:
    spec = EXPERIMENTS[name]
    data = spec["data"]
    overrides = [*spec.get("overrides", []), *overrides]
    subset = spec.get("probe_train_subset")
    cache = f"runs/{name}/feature_cache"  # probe and clustering share the test features
    dev = device if device != "auto" else None
    rows = {}
    result = {"experiment": name, "data": data, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "commit": git_rev(), "overrides": overrides,
              "command": command_line(), "anchors": spec["anchors"], "rows": rows}
    save = lambda: json_path.write_text(json.dumps(result, indent=2))  # noqa: E731  (partial results survive a timeout)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    random_spec = spec.get("random", "random:resnet20")
    for method in methods:
        if method in (trained_checkpoints or {}):
            checkpoint = trained_checkpoints[method]
            seconds, steps, epochs = trained_run(checkpoint)
        else:
            start = time.time()
            cfg = load_config(spec["recipes"][method], [f"out_dir=runs/{name}/{method}", f"trainer.device={device}",
                                                        *([f"data.root={root}"] if root else []),
                                                        *for_method(overrides, method)])
            trained = train(cfg, progress=False, overwrite=True)   # a reproduction trains again
            checkpoint, seconds, steps, epochs = str(trained.checkpoint), time.time() - start, trained.steps, \
                cfg.trainer.epochs
        rows[method] = {"pretrain_seconds": seconds, "steps": steps, "epochs": epochs,
                        "images_per_s": training_speed(checkpoint),
                        **evaluate(checkpoint, data, root, dev, cluster_methods, subset, cache)}
        print(json.dumps({method: rows[method]}), flush=True)
        save()
        if not same_architecture(checkpoint, random_spec):   # CPC's patch grid: its own untrained twin
            rows[f"{method}, untrained"] = {"note": "same encoder, untrained",
                                            **evaluate(f"untrained:{checkpoint}", data, root, dev, cluster_methods,
                                                       subset, cache)}
            save()
    if not baselines:
        return result
    rows["random init"] = evaluate(random_spec, data, root, dev, cluster_methods, subset, cache)
    save()
    rows["raw pixels"] = raw_pixels(data, root, ["kmeans"], subset)  # O(d^2) methods are slow on 784 raw dims
    save()
    return result


def render(result: dict) -> None:
    lines = ["| encoder | pretraining | linear top-1 | top-5 | kNN@20 | k-means ACC | k-means NMI | k-means ACC, L2 "
             f"| k-means ACC, L2 + UMAP-{UMAP_DIM} | k-means ACC, whitened-{WHITEN_DIM} | k-means ACC, projection L2 "
             "| UMAP + GMM ACC / NMI (N2D) | UMAP + GMM on train + test (N2D's protocol) | best other clustering (ACC) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        km = r["clusters"].get("kmeans", {})
        others = {m: s["acc"] for m, s in r["clusters"].items() if m != "kmeans" and "acc" in s}
        best = max(others, key=others.get) if others else None
        pre = (f"{r['epochs']} epochs, {r['steps']} steps, {r['pretrain_seconds'] / 60:.1f} min"
               + (f", {r['images_per_s']:.0f} img/s" if r.get("images_per_s") else "")
               if "pretrain_seconds" in r else r.get("note", "–"))
        l2 = f"{r['kmeans_l2']['acc']:.4f}" if "kmeans_l2" in r else "–"   # runs saved before the column
        umap = f"{r['kmeans_l2_umap']['acc']:.4f}" if "kmeans_l2_umap" in r else "–"  # needs umap-learn
        white = f"{r['kmeans_whiten']['acc']:.4f}" if "kmeans_whiten" in r else "–"   # runs saved before it
        proj = f"{r['kmeans_projection_l2']['acc']:.4f}" if "kmeans_projection_l2" in r else "–"  # SimCLR rows only
        n2d, n2d_all = (f"{r[key]['acc']:.4f} / {r[key]['nmi']:.4f}" if key in r else "–"
                        for key in ("umap_gmm", "umap_gmm_all"))
        lines.append(f"| {name} | {pre} | {r['top1']:.4f} | {r['top5']:.4f} | {r['knn20']:.4f} | "
                     f"{km.get('acc', float('nan')):.4f} | {km.get('nmi', float('nan')):.4f} | {l2} | {umap} | {white} | {proj} | "
                     f"{n2d} | {n2d_all} | "
                     f"{f'{best} {others[best]:.4f}' if best else '–'} |")
    body = "\n".join(lines) + f"\n\nOverrides: `{' '.join(result['overrides']) or 'none'}`.  \n" \
                              f"Published anchors: {result['anchors']}." + (f"  \n{result['notes']}" if result.get("notes") else "")
    update_section(f"suite-{result['experiment']}", f"{result['experiment']}", result["command"], body,
                   machine_name=result["machine"], date=result.get("date"), commit=result.get("commit"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", choices=sorted(EXPERIMENTS))
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--root", default=None, help="dataset root (e.g. the Fashion-MNIST folder)")
    parser.add_argument("--methods", default="simclr,autoencoder,cpc,supervised",
                        help="comma-separated; empty (--methods '') for the baselines alone")
    parser.add_argument("--cluster-methods", default="kmeans,gmm,agglomerative")
    parser.add_argument("--override", action="append", default=[],
                        help="key=value for every recipe, or method:key=value for one (repeatable)")
    parser.add_argument("--json", default=None, help="where to write the result (default eval/results/NAME.json)")
    parser.add_argument("--render", default=None, help="update RESULTS.md from a saved JSON and exit")
    parser.add_argument("--no-baselines", action="store_true", help="only the methods' rows (and untrained twins)")
    parser.add_argument("--merge", action="append", default=[], metavar="JSON",
                        help="with --render: add the rows of these saved runs of the same experiment (a row "
                             "name already in the table keeps its first run)")
    parser.add_argument("--trained", action="append", default=[], metavar="METHOD=CKPT",
                        help="evaluate this finished run's checkpoint instead of training the method (repeatable)")
    parser.add_argument("--commit", default=None,
                        help="with --render: the commit that measured the saved run, for runs saved before their "
                             "JSON recorded it (default: the JSON's, else the checkout's)")
    parser.add_argument("--add-raw-pixels", action="store_true",
                        help="with --render: compute the raw-pixel row here if the saved run lacks it")
    args = parser.parse_args()
    if args.list:
        for name, spec in EXPERIMENTS.items():
            print(f"{name}: {spec['data']}, methods {', '.join(spec['recipes'])}")
        return
    if args.render:
        result = json.loads(Path(args.render).read_text())
        if args.commit:
            result["commit"] = args.commit
        for other in args.merge:   # the saved run's rows first, then each merged run's new rows, in order
            rows = json.loads(Path(other).read_text())["rows"]
            result["rows"].update({name: row for name, row in rows.items() if name not in result["rows"]})
        if args.add_raw_pixels and "raw pixels" not in result["rows"]:
            result["rows"]["raw pixels"] = {**raw_pixels(result["data"], args.root, ["kmeans"]),
                                            "note": f"computed on {machine()}"}
            Path(args.render).write_text(json.dumps(result, indent=2))
        render(result)
        return
    if not args.name:
        parser.error("name an experiment (or --list)")
    out = Path(args.json or Path(__file__).parent / "results" / f"{args.name}.json")
    trained = dict(text.split("=", 1) for text in args.trained)
    result = run(args.name, args.device, args.root, args.override, [m for m in args.methods.split(",") if m],
                 args.cluster_methods.split(","), out, trained, not args.no_baselines)
    render(result)
    print(f"wrote {out} and eval/RESULTS.md")


if __name__ == "__main__":
    main()
