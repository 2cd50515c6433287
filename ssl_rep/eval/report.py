"""A self-contained HTML clustering report: scores, feature maps, confusion matrix, cluster samples."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from .explore import explore_section
from .metrics import match_clusters

SCORE_COLUMNS = ("acc", "nmi", "ari", "purity", "silhouette", "n_clusters", "noise_fraction", "seconds")
LABEL_SCORES = ("acc", "nmi", "ari", "purity")   # left out of an unlabeled dataset's table


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _embeddings(X: np.ndarray, seed: int, umap_map: bool = False) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    out = {"PCA": PCA(n_components=2, random_state=seed).fit_transform(X)}
    if len(X) > 10:
        perplexity = min(30.0, (len(X) - 1) / 3)
        out["t-SNE"] = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(X)
    if umap_map and len(X) > 15:   # opt-in: UMAP's first call in a process compiles for ~15 s
        from .cluster import umap_embed
        out["UMAP"] = umap_embed(X, 2, seed)
    return out


def map_points(n: int, seed: int = 0, max_points: int = 2000) -> np.ndarray:
    """The sorted sample numbers the 2-D maps show (all of them up to ``max_points``)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, max_points), replace=False))


def map_figure(X, y_true, y_pred, method: str, seed: int = 0, max_points: int = 2000, umap_map: bool = False,
               maps: dict | None = None) -> str:
    """Static maps (PCA, t-SNE, UMAP) coloured by cluster and by class; ``maps``: precomputed for ``map_points``."""
    import matplotlib.pyplot as plt

    pick = map_points(len(X), seed, max_points)
    maps = maps if maps is not None else _embeddings(np.asarray(X)[pick], seed, umap_map)
    colourings = [(f"clusters ({method})", y_pred[pick])] + ([("true class", y_true[pick])] if y_true is not None else [])
    fig, axes = plt.subplots(len(colourings), len(maps), figsize=(4.2 * len(maps), 4 * len(colourings)), squeeze=False)
    for r, (title, colour) in enumerate(colourings):
        for c, (name, emb) in enumerate(maps.items()):
            ax = axes[r, c]
            ax.scatter(emb[:, 0], emb[:, 1], c=colour, cmap="tab20", s=6, linewidths=0)
            ax.set_title(f"{name}, coloured by {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    return _png(fig)


def confusion_figure(y_true, y_pred, class_names=None) -> str:
    import matplotlib.pyplot as plt

    table, rows, cols = match_clusters(y_true, y_pred)
    order = list(cols[np.argsort(rows)]) + [c for c in range(table.shape[1]) if c not in set(cols)]
    table = table[:, order]
    fig, ax = plt.subplots(figsize=(0.45 * table.shape[1] + 2.5, 0.45 * table.shape[0] + 2))
    ax.imshow(table, cmap="Blues")
    for (i, j), v in np.ndenumerate(table):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > table.max() / 2 else "black")
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    ax.set_yticks(range(table.shape[0]))
    if class_names is not None and len(class_names) == table.shape[0]:
        ax.set_yticklabels(class_names, fontsize=7)
    return _png(fig)


def samples_figure(image_at, y_pred: np.ndarray, per_cluster: int = 8, max_clusters: int = 20, seed: int = 0) -> str:
    """A row of sample images for each of the largest clusters; ``image_at(i)`` -> uint8 (H, W, 3)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    ids, counts = np.unique(y_pred, return_counts=True)
    ids = ids[np.argsort(-counts)][:max_clusters]
    fig, axes = plt.subplots(len(ids), per_cluster, figsize=(per_cluster * 0.9, len(ids) * 1.1), squeeze=False)
    fig.subplots_adjust(hspace=0.4)   # room for each row's title above its images
    for r, cid in enumerate(ids):
        members = np.nonzero(y_pred == cid)[0]
        chosen = rng.choice(members, min(per_cluster, len(members)), replace=False)
        for c in range(per_cluster):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(chosen):
                ax.imshow(image_at(int(chosen[c])))
        axes[r, 0].set_title(f"{'noise' if cid < 0 else f'cluster {cid}'} (n={len(members)})", fontsize=7, loc="left")
    return _png(fig)


def reconstructions_figure(originals: np.ndarray, reconstructions: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(n * 0.9, 2), squeeze=False)
    for i in range(n):
        for r, img in enumerate((originals[i], reconstructions[i])):
            axes[r, i].imshow(img)
            axes[r, i].axis("off")
    axes[0, 0].set_title("original", fontsize=7, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=7, loc="left")
    return _png(fig)


def curves_figure(metrics_path: str | Path) -> str | None:
    """Pretraining loss and online-probe accuracy against step from a run's ``metrics.jsonl`` (None if it has
    no loss lines)."""
    import matplotlib.pyplot as plt

    lines = [json.loads(x) for x in Path(metrics_path).read_text().splitlines() if x.strip()]
    loss = [(r["step"], r["loss"]) for r in lines if "loss" in r and "step" in r]
    probe = [(r["step"], r["online_probe_acc"]) for r in lines if "online_probe_acc" in r]
    if not loss:
        return None
    fig, axes = plt.subplots(1, 2 if probe else 1, figsize=(9 if probe else 4.5, 3), squeeze=False)
    axes[0, 0].plot(*zip(*loss), lw=1)
    axes[0, 0].set(xlabel="step", ylabel="loss", title="pretraining loss")
    if probe:
        axes[0, 1].plot(*zip(*probe), marker="o", lw=1)
        axes[0, 1].set(xlabel="step", ylabel="accuracy", title="online linear probe (each epoch)")
    return _png(fig)


def comparison_section(comparison: dict[str, dict], y_true, seed: int = 0, max_points: int = 2000,
                       known: dict | None = None) -> str:
    """Several encoders' (or feature spaces') clusterings side by side: for each, its best method's scores with the
    gap to the best encoder, and its 2-D map coloured by true class (or by its clusters without labels).
    ``known``: ``id(features) -> maps`` already computed for :func:`map_points` (the report's own encoder)."""
    import matplotlib.pyplot as plt

    key = "acc" if y_true is not None else "silhouette"
    best_of = {}
    for name, c in comparison.items():
        ok = {m: r["scores"] for m, r in c["results"].items() if "scores" in r}
        if ok:
            method = max(ok, key=lambda m: ok[m].get(key, -1.0))
            best_of[name] = (method, ok[method])
    if not best_of:
        return ""
    columns = [k for k in ("acc", "nmi", "ari", "purity", "silhouette") if any(k in s for _, s in best_of.values())]
    top = {k: max(s.get(k, float("-inf")) for _, s in best_of.values()) for k in columns}
    rows = []
    for name, (method, scores) in best_of.items():
        cells = "".join(f"<td>{_fmt(scores.get(k))}" + (f" <span class='gap'>({scores[k] - top[k]:+.4f})</span>"
                                                          if k in scores and scores[k] < top[k] else "") + "</td>"
                        for k in columns)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(method)}</td>{cells}</tr>")
    header = "".join(f"<th>{c}</th>" for c in ("encoder", "best method", *columns))
    pick = None
    fig, axes = plt.subplots(1, len(best_of), figsize=(4 * len(best_of), 4), squeeze=False)
    for ax, name in zip(axes[0], best_of):
        features = comparison[name]["features"]
        X = np.asarray(features)
        pick = map_points(len(X), seed, max_points) if pick is None else pick
        maps = (known or {}).get(id(features)) or _embeddings(X[pick], seed)
        which = "t-SNE" if "t-SNE" in maps else "PCA"
        colour = y_true[pick] if y_true is not None else np.zeros(len(pick))
        ax.scatter(*maps[which].T, c=colour, cmap="tab10" if y_true is not None else None, s=5, linewidths=0)
        ax.set_title(f"{name}\n{which}, coloured by true class", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    return (f"<h2>Comparison</h2><p class='meta'>Each encoder's best clustering method; in brackets the gap to the "
            f"best encoder.</p><table><tr>{header}</tr>{''.join(rows)}</table>"
            f"<img alt='maps of each encoder' src='{_png(fig)}'>")


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def write_report(path: str | Path, results: dict[str, dict], features: np.ndarray, y_true, labels: dict[str, np.ndarray],
                 image_at=None, reconstructions: tuple[np.ndarray, np.ndarray] | None = None,
                 title: str = "ssl_rep clustering report", meta: dict | None = None, class_names=None,
                 seed: int = 0, umap_map: bool = False, metrics_path: str | Path | None = None,
                 comparison: dict[str, dict] | None = None, sample_names=None) -> Path:
    """Write one HTML page (all images embedded) and return its path.

    ``results``: method -> {"scores": {...}, "params": {...}, "seconds": float} (or {"error": str});
    ``labels``: method -> cluster labels. The best method (highest ``acc``, else silhouette) gets
    the maps (PCA, t-SNE, and UMAP with ``umap_map``), static and interactive (hover shows image ``i`` from
    ``image_at(i)`` -> uint8 (H, W, 3), its class and cluster), the confusion matrix and the sample grid.
    ``metrics_path``: a run's ``metrics.jsonl``, whose loss and online-probe curves are drawn.
    ``comparison``: name -> {"results": ..., "features": X} for several encoders, set side by side.
    ``sample_names``: each sample's file name, shown when a point is hovered (else its number).
    """
    import matplotlib
    matplotlib.use("Agg")

    ok = {m: r for m, r in results.items() if "scores" in r}
    key = "acc" if y_true is not None else "silhouette"
    best = max(ok, key=lambda m: ok[m]["scores"].get(key, -1.0)) if ok else None
    columns = SCORE_COLUMNS if y_true is not None else tuple(c for c in SCORE_COLUMNS if c not in LABEL_SCORES)
    rows = []
    for method, r in results.items():
        if "scores" not in r:
            rows.append(f"<tr><td>{html.escape(method)}</td><td colspan='{len(columns)}' class='err'>"
                        f"{html.escape(r.get('error', 'failed'))}</td></tr>")
            continue
        cells = "".join(f"<td>{_fmt(r['seconds'] if c == 'seconds' else r['scores'].get(c))}</td>" for c in columns)
        mark = " class='best'" if method == best else ""
        rows.append(f"<tr{mark}><td>{html.escape(method)}</td>{cells}</tr>")
    sections = [f"<h1>{html.escape(title)}</h1>"]
    if meta:
        sections.append("<p class='meta'>" + " · ".join(f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}"
                                                      for k, v in meta.items()) + "</p>")
    header = "".join(f"<th>{c}</th>" for c in ("method",) + columns)
    sections.append(f"<h2>Scores</h2><table><tr>{header}</tr>{''.join(rows)}</table>")
    pick = map_points(len(features), seed)
    maps = _embeddings(np.asarray(features)[pick], seed, umap_map) if best is not None or comparison else None
    if comparison:
        sections.append(comparison_section(comparison, y_true, seed, known={id(features): maps}))
    if best is not None:
        pred = labels[best]
        sections.append(explore_section(maps, pick, y_true, pred, best, class_names, image_at, names=sample_names))
        figure = map_figure(features, y_true, pred, best, seed, maps=maps)
        sections.append(f"<h2>Feature maps</h2><img alt='feature maps' src='{figure}'>")
        if y_true is not None:
            sections.append(f"<h2>Confusion matrix ({html.escape(best)})</h2>"
                            f"<img alt='confusion matrix' src='{confusion_figure(y_true, pred, class_names)}'>")
        if image_at is not None:
            sections.append(f"<h2>Samples per cluster ({html.escape(best)})</h2>"
                            f"<img alt='cluster samples' src='{samples_figure(image_at, pred, seed=seed)}'>")
    curves = curves_figure(metrics_path) if metrics_path is not None and Path(metrics_path).is_file() else None
    if curves is not None:
        sections.append(f"<h2>Pretraining</h2><img alt='training curves' src='{curves}'>")
    if reconstructions is not None:
        sections.append(f"<h2>Autoencoder reconstructions</h2>"
                        f"<img alt='reconstructions' src='{reconstructions_figure(*reconstructions)}'>")
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}"
             "tr.best{background:#e8f4e8}.err{color:#a00;text-align:left}.meta{color:#555}img{max-width:100%}"
             ".explore{display:flex;gap:1em}#explore-map{width:640px;height:640px;border:1px solid #ccc;cursor:grab}"
             ".pt{stroke:#fff;stroke-width:0.08}.pt:hover{stroke:#000;stroke-width:0.3}"
             "#explore-legend{font-size:13px}.lg{cursor:pointer;padding:2px}.lg:hover{background:#eee}"
             ".sw{display:inline-block;width:10px;height:10px;margin-right:6px}"
             "#explore-tip{position:absolute;display:none;background:#fff;border:1px solid #888;padding:4px;"
             "font-size:12px;pointer-events:none}.thumb{margin:2px;image-rendering:pixelated}.gap{color:#a00}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
