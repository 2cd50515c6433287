"""The clustering report's interactive map: points on a 2-D map, each with its thumbnail, as HTML and a script
written small by hand (SVG circles, no library, nothing fetched when the page opens)."""
from __future__ import annotations

import base64
import html
import io
import json

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7",
           "#dbdb8d", "#9edae5")
EXPLORE_POINTS = 1000   # points (each with its thumbnail) in the interactive map
THUMB = 48              # thumbnail side in px

# The interactive map, written small by hand (no library, nothing fetched): SVG circles, hover tooltip with the
# image, wheel zoom and drag pan on the viewBox, a legend that colours by cluster or class and lists a group's
# samples when clicked.
EXPLORE_JS = r"""
(function () {
  const D = JSON.parse(document.getElementById('explore-data').textContent);
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.getElementById('explore-map'), tip = document.getElementById('explore-tip');
  const legend = document.getElementById('explore-legend'), panel = document.getElementById('explore-panel');
  const mapSel = document.getElementById('explore-which'), bySel = document.getElementById('explore-by');
  const full = [0, 0, 100, 100];
  let view = full.slice();
  const setView = () => svg.setAttribute('viewBox', view.join(' '));
  const label = (p, by) => by === 'class' ? (D.classes ? D.classes[p.t] : 'class ' + p.t)
                                          : (p.c < 0 ? 'noise' : 'cluster ' + p.c);
  const value = (p, by) => by === 'class' ? p.t : p.c;
  const circles = D.points.map((p, k) => {
    const c = document.createElementNS(NS, 'circle');
    c.setAttribute('r', 0.55);
    c.setAttribute('class', 'pt');
    c.dataset.k = k;
    svg.appendChild(c);
    return c;
  });
  function place() {
    const m = D.maps[mapSel.value];
    circles.forEach((c, k) => { c.setAttribute('cx', m[k][0]); c.setAttribute('cy', m[k][1]); });
  }
  function colour() {
    const by = bySel.value;
    circles.forEach((c, k) => {
      const v = value(D.points[k], by);
      c.setAttribute('fill', v < 0 ? '#999' : D.palette[v % D.palette.length]);
    });
    const groups = new Map();
    D.points.forEach(p => { const v = value(p, by); groups.set(v, (groups.get(v) || 0) + 1); });
    legend.innerHTML = '';
    [...groups.keys()].sort((a, b) => a - b).forEach(v => {
      const item = document.createElement('div');
      item.className = 'lg';
      item.dataset.value = v;
      const sw = document.createElement('span');
      sw.className = 'sw';
      sw.style.background = v < 0 ? '#999' : D.palette[v % D.palette.length];
      item.appendChild(sw);
      item.appendChild(document.createTextNode(label(by === 'class' ? {t: v} : {c: v}, by) + ' (' + groups.get(v) + ')'));
      item.addEventListener('click', () => showGroup(v));
      legend.appendChild(item);
    });
  }
  function describe(p) {
    return (p.n || '#' + p.i) + (p.t >= 0 ? ' · ' + label(p, 'class') : '') + ' · ' + label(p, 'cluster');
  }
  function showGroup(v) {
    const by = bySel.value;
    const members = D.points.filter(p => value(p, by) === v);
    panel.innerHTML = '<h3>' + label(by === 'class' ? {t: v} : {c: v}, by) + ': ' + members.length +
                      ' of the points shown</h3>';
    members.slice(0, 60).forEach(p => {
      const img = document.createElement('img');
      img.src = p.img; img.title = describe(p); img.className = 'thumb';
      panel.appendChild(img);
    });
  }
  svg.addEventListener('mouseover', e => {
    const k = e.target.dataset && e.target.dataset.k;
    if (k === undefined) return;
    const p = D.points[+k];
    tip.innerHTML = (p.img ? '<img src="' + p.img + '">' : '') + '<div>' + describe(p) + '</div>';
    tip.style.display = 'block';
    tip.style.left = (e.pageX + 12) + 'px';
    tip.style.top = (e.pageY + 12) + 'px';
  });
  svg.addEventListener('mouseout', e => { if (e.target.dataset && e.target.dataset.k !== undefined) tip.style.display = 'none'; });
  svg.addEventListener('wheel', e => {
    e.preventDefault();
    const r = svg.getBoundingClientRect();
    const fx = (e.clientX - r.left) / r.width, fy = (e.clientY - r.top) / r.height;
    const s = e.deltaY < 0 ? 0.8 : 1.25;
    const w = Math.min(view[2] * s, 100), h = Math.min(view[3] * s, 100);
    view = [view[0] + fx * (view[2] - w), view[1] + fy * (view[3] - h), w, h];
    setView();
  }, {passive: false});
  let drag = null;
  svg.addEventListener('mousedown', e => { drag = [e.clientX, e.clientY, view[0], view[1]]; });
  window.addEventListener('mouseup', () => { drag = null; });
  svg.addEventListener('mousemove', e => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    view[0] = drag[2] - (e.clientX - drag[0]) * view[2] / r.width;
    view[1] = drag[3] - (e.clientY - drag[1]) * view[3] / r.height;
    setView();
  });
  document.getElementById('explore-reset').addEventListener('click', () => { view = full.slice(); setView(); });
  mapSel.addEventListener('change', place);
  bySel.addEventListener('change', colour);
  setView(); place(); colour();
})();
"""


def _thumbnail(img: np.ndarray) -> str:
    from PIL import Image

    pil = Image.fromarray(np.asarray(img, dtype=np.uint8))
    pil.thumbnail((THUMB, THUMB))
    if pil.size[0] < THUMB // 2:   # 8-28 px images: enlarge so the tooltip shows something
        factor = THUMB // max(pil.size)
        pil = pil.resize((pil.size[0] * factor, pil.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def explore_section(maps: dict[str, np.ndarray], pick: np.ndarray, y_true, y_pred, method: str, class_names=None,
                    image_at=None, max_points: int = EXPLORE_POINTS, names=None) -> str:
    """The interactive 2-D map of the points ``pick`` (their ``maps`` coordinates), as HTML with its script;
    ``names``: each sample's file name (a folder's), shown on hover instead of its number."""
    keep = np.arange(len(pick)) if len(pick) <= max_points else \
        np.sort(np.random.default_rng(0).choice(len(pick), max_points, replace=False))
    coords = {}
    for name, emb in maps.items():
        e = np.asarray(emb, dtype=np.float64)[keep]
        lo, span = e.min(axis=0), np.ptp(e, axis=0)
        span[span == 0] = 1.0
        coords[name] = np.round(3 + 94 * (e - lo) / span, 2).tolist()   # into the 100 x 100 viewBox, a margin kept
    points = []
    for k in keep:
        i = int(pick[k])
        points.append({"i": i, "c": int(y_pred[i]), "t": int(y_true[i]) if y_true is not None else -1,
                       "img": _thumbnail(image_at(i)) if image_at is not None else "",
                       **({"n": str(names[i])} if names is not None else {})})
    data = {"maps": coords, "points": points, "palette": PALETTE,
            "classes": list(map(str, class_names)) if class_names is not None else None}
    payload = json.dumps(data).replace("</", "<\\/")
    last = list(coords)[-1]   # UMAP or t-SNE where computed: they separate groups that PCA overlaps
    options = "".join(f"<option{' selected' if n == last else ''}>{html.escape(n)}</option>" for n in coords)
    by = "<option value='cluster'>cluster</option>" + ("<option value='class'>true class</option>"
                                                       if y_true is not None else "")
    return (f"<h2>Explore ({html.escape(method)}, {len(points)} points)</h2>"
            f"<p class='meta'>Hover a point for its image; wheel to zoom, drag to pan; click a legend entry for "
            f"its samples. Map <select id='explore-which'>{options}</select> colour by "
            f"<select id='explore-by'>{by}</select> <button id='explore-reset'>reset view</button></p>"
            f"<div class='explore'><svg id='explore-map' xmlns='http://www.w3.org/2000/svg'></svg>"
            f"<div id='explore-legend'></div></div><div id='explore-panel'></div><div id='explore-tip'></div>"
            f"<script type='application/json' id='explore-data'>{payload}</script><script>{EXPLORE_JS}</script>")
