"""The main job on the embedded default: pretrain -> probe -> cluster report on digits, on CPU.

``python -m ssl_rep.demo --out runs/demo`` (``make demo``) pretrains a ResNet-20 with SimCLR on
scikit-learn's digits, probes it and the same encoder untrained (linear + kNN), clusters its features
with all five methods, and writes ``summary.json`` and ``report.html`` under ``--out``. A few
minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from .cli.common import setup_logging
from .data import build_dataset, build_transform, stats_for
from .encoders import load_encoder
from .eval import cluster_features, extract_features, image_getter, probe_features, resolve_encoder
from .eval.report import write_report
from .train import load_config, train


def write_json(path: Path, value: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="ssl_rep.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--config", default="simclr_digits", help="pretraining recipe (a name in configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the recipe")
    args = parser.parse_args(argv)
    setup_logging()   # the training loop's notes (e.g. the faster bf16 setting on such CPUs), as under ssl-pretrain
    out = Path(args.out)
    start = time.time()
    print(f"[1/4] pretraining ({args.config}) -> {out / 'pretrain'}", flush=True)
    cfg = load_config(args.config, [f"out_dir={out / 'pretrain'}", *args.overrides])
    result = train(cfg, overwrite=True)   # make demo again: a fresh demo in the same place
    print("[2/4] linear probe + kNN: pretrained encoder vs random init", flush=True)
    data = cfg.data.dataset
    transform = build_transform("eval", stats=stats_for(data), resize=None)
    train_set, test_set = (build_dataset(data, split=s, root=cfg.data.root, transform=transform) for s in ("train", "test"))
    # the baseline: the same architecture (width, stem, ... as trained) with fresh weights
    baseline = f"untrained:{result.checkpoint}"
    encoders = {"probe": load_encoder(result.checkpoint), "probe_random": resolve_encoder(baseline)}
    features = {}
    for name, encoder in encoders.items():
        X, y = extract_features(encoder, train_set)
        Xt, yt = extract_features(encoder, test_set)
        features[name] = Xt, yt
        write_json(out / name / "probe.json", {"checkpoint": str(result.checkpoint) if name == "probe" else
                                               baseline, "data": data,
                                               **probe_features(X, y, Xt, yt)})
    print("[3/4] clustering (kmeans, meanshift, dbscan, gmm, agglomerative) + HTML report", flush=True)
    Xt, yt = features["probe"]
    clusters, labels = cluster_features(Xt, yt)
    write_json(out / "cluster" / "clusters.json", {"checkpoint": str(result.checkpoint), "data": data, "split": "test",
                                                   "methods": clusters})
    write_report(out / "cluster" / "report.html", clusters, Xt, yt, labels,
                 image_at=image_getter(test_set), title=f"Clusters of {result.checkpoint} on {data}/test",
                 meta={"checkpoint": str(result.checkpoint), "data": f"{data}/test", "points": len(Xt)},
                 class_names=getattr(test_set, "classes", None))
    print("[4/4] summary", flush=True)
    ours = json.loads((out / "probe" / "probe.json").read_text())
    base = json.loads((out / "probe_random" / "probe.json").read_text())
    summary = {"config": args.config, "data": data, "pretrain_steps": result.steps, "seconds": time.time() - start,
               "probe": {"pretrained": ours, "random_init": base},
               "clusters": {m: r.get("scores", {"error": r.get("error")}) for m, r in clusters.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{'':24s}{'linear top-1':>14s}{'kNN@20':>10s}")
    for name, r in (("pretrained " + cfg.method.name, ours), ("random init", base)):
        print(f"{name:24s}{r['top1']:14.4f}{r['knn']['20']:10.4f}")
    print(f"\n{'clustering':24s}{'ACC':>8s}{'NMI':>8s}{'ARI':>8s}{'clusters':>10s}")
    for method, r in clusters.items():
        if "scores" in r:
            s = r["scores"]
            print(f"{method:24s}{s['acc']:8.4f}{s['nmi']:8.4f}{s['ari']:8.4f}{s['n_clusters']:10d}")
    print(f"\nreport: {out / 'cluster' / 'report.html'}   summary: {out / 'summary.json'}   "
          f"({summary['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
