"""The leaderboard's generated files: ``README.md`` and the self-contained ``index.html``.

``ddbench leaderboard build`` (``ddbench.leaderboard.build``) calls :func:`write`. From the
well-formed entries (``leaderboard.scan``) and every result they hold (their own and the other
views of their set, ``leaderboard.results_of``) it makes:

- per dataset x budget x pinned protocol x split, a table of the sets under that protocol (the
  first result of each set there) with accuracy, the scores of ``ddbench.scores`` (IOR, HLR,
  LRS, ARS, "-" with the reason in its tooltip where a reference is missing), the cost columns,
  the distillation budget, a thumbnail of the set (one row per class, a PNG beside the set made
  by ``ddbench.viz``), a link to the set and the command that reproduces it;
- per dataset x budget x protocol where some set was scored on several models, a
  cross-architecture table (one row per set, one column per model);
- per dataset x protocol, two inline SVG plots: accuracy against IPC and against stored bytes,
  one line per method (the mean over the method's entries at each IPC).

No file loads anything from the network; sorting is plain JavaScript.
"""

from __future__ import annotations

import html
import json
import math
import re
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddbench import scores as _scores
from ddbench import transfer_board

MiB = 1024 * 1024


@dataclass
class Row:
    """One result of one entry, as shown on the board."""

    f: Path  # the entry file
    e: dict  # the entry
    r: dict  # the result (the entry itself, or one of its other_results)
    meta: dict  # the set's header
    own: bool  # the entry's own result
    model: str = ""
    result: _scores.Result | None = None
    scores: dict[str, _scores.Score] = field(default_factory=dict)


def _budget(e: dict, meta: dict) -> int | str:
    """The IPC; "full" for a set holding the whole train split; "graphs" for a graph set (one
    table per graph dataset x protocol)."""
    if e.get("kind") == "graph":
        return "graphs"
    if transfer_board.is_transfer(e):  # one table per source x IPC x target x protocol
        return transfer_board.budget(e)
    return "full" if meta.get("full_dataset") else int(e["ipc"])


def _key(r: dict, budget) -> tuple:
    """(dataset, split, budget, protocol name, hash)."""
    return (r["dataset"], r.get("split", "test"), budget, r["protocol"]["name"],
            r["protocol"]["hash"])  # fmt: skip


def _order(key: tuple) -> tuple:
    ds, split, budget, name, h = key
    n = budget if isinstance(budget, int) else 0
    return (ds, split != "test", split, budget == "full", n, name, h)


@dataclass(frozen=True)
class Entries:
    """How the board's entries are read (``ddbench.leaderboard`` provides them: ``scan``,
    ``results_of`` and the model label of a result), so that this module renders without
    importing the leaderboard's checks."""

    scan: Callable[[Path], tuple[list, list]]
    results_of: Callable[[dict], list[dict]]
    model_label: Callable[[dict], str]


class Board:
    """The board's rows, tables, cross-architecture tables and scores."""

    def __init__(self, board: Path, entries: Entries):
        self.board = Path(board)
        good, self.bad = entries.scan(self.board)
        self.rows: list[Row] = []
        for f, e, meta in good:
            for i, r in enumerate(entries.results_of(e)):
                row = Row(f, e, r, meta, own=i == 0, model=entries.model_label(r))
                row.result = _scores.result_of(self.rel(f), r, _budget(e, meta), row.model)
                self.rows.append(row)
        tested = [x.result for x in self.rows if x.r.get("split", "test") == "test"]
        board_scores = _scores.BoardScores(tested)
        for x in self.rows:
            if x.r.get("split", "test") == "test":
                x.scores = board_scores.all(x.result)
        # main tables: the first result of each set under each protocol
        tables: dict[tuple, list[Row]] = defaultdict(list)
        seen = set()
        for x in self.rows:
            k = _key(x.r, x.result.budget)
            if (x.f, k) not in seen:
                seen.add((x.f, k))
                tables[k].append(x)
        for rows in tables.values():
            rows.sort(key=lambda x: -x.r["accuracy"]["mean"])
        self.tables = dict(sorted(tables.items(), key=lambda kv: _order(kv[0])))
        # cross-architecture: every model a set was scored on under the table's protocol
        cross: dict[tuple, dict[Path, dict[str, Row]]] = defaultdict(dict)
        for x in self.rows:
            cross[_key(x.r, x.result.budget)].setdefault(x.f, {}).setdefault(x.model, x)
        self.cross = {
            k: v for k, v in sorted(cross.items(), key=lambda kv: _order(kv[0]))
            if len({m for models in v.values() for m in models}) > 1
        }  # fmt: skip

    def rel(self, f: Path) -> str:
        return f.relative_to(self.board).as_posix()


# ----------------------------------------------------------------------------- cells


def _header_bytes(path: Path) -> dict[str, int]:
    """Bytes of each tensor of a safetensors file, from its header (no torch)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        return {k: int(v["data_offsets"][1]) - int(v["data_offsets"][0])
                for k, v in header.items() if k != "__metadata__"}  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return {}


_LABEL_TENSORS = re.compile(r"^(labels|topk_.*|label_.*)$")


def stored_bytes(x: Row) -> dict[str, int | None]:
    """Bytes of the images, of the labels (with stored per-crop labels) and of everything else
    the set file stores to be used (a learned lr, weights, ZCA matrices), and the total."""
    c = x.r["cost"]
    if "image_bytes" not in c:  # a graph set (ddbench.graphs): its bytes as one figure
        return {"images": None, "labels": None, "other": None, "total": c.get("synset_bytes")}
    tensors = _header_bytes(x.f.with_name(x.e["synset"]["path"]))
    other = sum(v for k, v in tensors.items() if k != "images" and not _LABEL_TENSORS.match(k))
    return {"images": c["image_bytes"], "labels": c["label_bytes"], "other": other,
            "total": c["image_bytes"] + c["label_bytes"] + other}  # fmt: skip


def compression(x: Row) -> float | None:
    """Bytes of the full train split stored as the set stores its images (the set's bytes per
    image) with one-byte class indices, over the set's stored bytes; None if unknown."""
    facts = (x.e.get("submission") or {}).get("set") or {}
    n, imgs = facts.get("train_images"), facts.get("num_images")
    if not isinstance(n, int) or not isinstance(imgs, int) or imgs < 1:
        return None
    if "image_bytes" not in x.r["cost"]:
        return None
    full = n * (x.r["cost"]["image_bytes"] / imgs + 1)
    return full / stored_bytes(x)["total"]


def _num(v: float | None, fmt: str, missing: str = "–") -> tuple[str, str]:
    if v is None:
        return ("", missing)
    return (str(v) if isinstance(v, int) else f"{v:.6g}", format(v, fmt))


def budget_text(x: Row) -> str:
    """The distillation budget: the set's iterations where its method has them, and the note
    given at submission (``--budget``)."""
    cfg = ((x.meta.get("method") or {}).get("config")) or {}
    parts = [f"{cfg['iterations']} it." for _ in [0] if isinstance(cfg.get("iterations"), int)]
    note = (x.e.get("submission") or {}).get("budget")
    if isinstance(note, str) and note:
        parts.append(note)
    return ", ".join(parts) or "–"


def machine(x: Row) -> str:
    cost = x.meta.get("cost") or {}
    return str(cost.get("machine") or cost.get("device") or "–")


def method_label(r: dict, meta: dict) -> tuple[str, str]:
    """The method as the board shows it, and a tooltip. A set imported from another code's
    output (``imported:<method>``) is marked as such: "<method> (authors' set)" where the set
    names the code it came from (``ddbench import --method M --code REPO@COMMIT``), else
    "<method> (imported)"."""
    name = r["method"]
    if not name.startswith("imported:"):
        return name, ""
    code = ((meta.get("method") or {}).get("config") or {}).get("code")
    base = name.partition(":")[2]
    if isinstance(code, str) and code:
        return f"{base} (authors' set)", f"the authors' code's output, imported: {code}"
    return f"{base} (imported)", "another code's output, imported"


def reproduce_command(x: Row) -> str:
    if x.r["method"].startswith("imported:"):  # not ddbench's to rerun: re-evaluated by verify
        return "ddbench leaderboard verify"
    return f"ddbench leaderboard reproduce {x.f.with_suffix('').name}"


def thumbnail_path(x: Row) -> Path:
    return x.f.with_suffix(".png")


_COLUMNS = (  # key, header, type, title
    ("rank", "#", "num", ""), ("method", "method", "str", ""),
    ("accuracy", "accuracy (%)", "num", "final-epoch test accuracy, mean over the seeds"),
    ("std", "std", "num", ""),
    ("ior", "IOR", "num", "improvement over a random subset (fractions)"),
    ("hlr", "HLR", "num", "full-data minus the set's hard-label accuracy (fractions)"),
    ("lrs", "LRS", "num", "Label-Robust Score in [0, 1]"),
    ("ars", "ARS", "num", "Augmentation-Robust Score in [0, 1]"),
    ("distill", "distill (s)", "num", "distillation wall time"),
    ("peak", "distill peak (MiB)", "num", "peak memory of the distillation"),
    ("machine", "machine", "str", "where the set was distilled"),
    ("eval", "eval (s)", "num", "evaluation wall time, all seeds"),
    ("images", "images (B)", "num", ""), ("labels", "labels (B)", "num", ""),
    ("other", "other (B)", "num", "learned lr, weights, ZCA matrices stored with the set"),
    ("bytes", "storage (bytes)", "num", "everything the set needs"),
    ("ratio", "compression", "num", "full train split bytes / stored bytes"),
    ("budget", "budget", "str", "distillation budget"),
    ("model", "model", "str", ""), ("set", "set", "str", ""),
)  # fmt: skip


def cells(rank: int, x: Row, board: Board) -> dict[str, tuple[str, str, str]]:
    """column key -> (sort value, display text, tooltip)."""
    c, acc = x.r["cost"], x.r["accuracy"]
    d = c.get("distill_seconds")
    peak = (x.meta.get("cost") or {}).get("peak_memory_bytes")
    b = stored_bytes(x)
    ratio = compression(x)
    link = x.f.with_name(x.e["synset"]["path"]).relative_to(board.board).as_posix()
    label, why = method_label(x.r, x.meta)
    out = {
        "rank": (str(rank), str(rank), ""),
        "method": (label, label, why),
        "accuracy": (f"{acc['mean']:.4f}", f"{acc['mean']:.2f}", ""),
        "std": (f"{acc['std']:.4f}", f"{acc['std']:.2f}", ""),
        "distill": (*_num(d, ".1f"), ""),
        "peak": (*_num(None if peak is None else peak / MiB, ".0f"), ""),
        "machine": (machine(x), machine(x), ""),
        "eval": (*_num(c.get("eval_seconds"), ".1f"), ""),
        "images": (*_num(b["images"], ","), ""),
        "labels": (*_num(b["labels"], ","), ""),
        "other": (*_num(b["other"], ","), ""),
        "bytes": (*_num(b["total"], ","), ""),
        "ratio": (
            *_num(ratio, ",.0f"),
            "" if ratio else "the entry does not record the train split's size",
        ),  # fmt: skip
        "budget": (budget_text(x), budget_text(x), ""),
        "model": (x.model, x.model, ""),
        "set": (link, link, ""),
    }
    for k in ("ior", "hlr", "lrs", "ars"):
        s = x.scores.get(k) or _scores.Score(None, "not a test-split result")
        out[k] = ("" if s.value is None else f"{s.value:.6f}", s.show(), s.why)
    return out


# ----------------------------------------------------------------------------- README.md

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~#!])")


def md(text: Any) -> str:
    """``text`` shown literally in Markdown: HTML escaped, Markdown punctuation backslashed."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def title(key: tuple) -> str:
    ds, split, budget, name, h = key
    size = {"full": "full dataset", "graphs": "graph sets"}.get(budget, f"IPC {budget}")
    if isinstance(budget, str) and "_to_" in budget:  # a transfer table
        ipc, target = budget.split("_to_", 1)
        size = f"IPC {ipc[3:]} → {target} (transfer: target test accuracy)"
    other = "" if split == "test" else f" · {split} split, not a test score"
    return f"{ds} · {size} · {name} ({h}){other}"


EXCLUDED = ("These entries fail the board's checks and are left out of the tables "
            "(`ddbench leaderboard verify` flags them too):")  # fmt: skip
_MD_COLUMNS = ("rank", "method", "accuracy", "std", "ior", "hlr", "lrs", "ars", "distill",
               "peak", "eval", "bytes", "ratio", "budget", "model", "set")  # fmt: skip


def markdown(b: Board) -> str:
    heads = {k: h for k, h, _, _ in _COLUMNS}
    lines = [
        "# ddbench leaderboard",
        "",
        "Generated by `ddbench leaderboard build` from `submissions/`; do not edit by hand.",
        "One table per dataset × IPC (or full dataset) × pinned protocol, test split; results on",
        "another split have tables of their own. Accuracy: the protocol's final-epoch accuracy,",
        "mean and std over its seeds. Scores (IOR, HLR, LRS, ARS) on accuracies as fractions:",
        "`docs/leaderboard.md`. `index.html` has the same tables, sortable, with thumbnails,",
        "plots, the cross-architecture tables and each row's reproduce command.",
        "Submitting: `docs/leaderboard.md`; entry schema: `SCHEMA.md`.",
        "",
    ]
    if not b.tables:
        lines += ["No submissions yet.", ""]
    for key, rows in b.tables.items():
        lines += [f"## {md(title(key))}", ""]
        if not all(x.r["protocol"].get("comparable", True) for x in rows):
            lines += ["*Smoke protocol: not comparable with papers or other protocols.*", ""]
        lines.append("| " + " | ".join(heads[k] for k in _MD_COLUMNS) + " |")
        lines.append("|" + "---|" * len(_MD_COLUMNS))
        for i, x in enumerate(rows, 1):
            c = cells(i, x, b)
            kinds = {k: t for k, _, t, _ in _COLUMNS}
            shown = [c[k][1] if kinds[k] == "num" else md(c[k][1]) for k in _MD_COLUMNS]
            link = c["set"][1]
            shown[-1] = f"[{md(Path(link).name)}]({urllib.parse.quote(link)})"
            lines.append("| " + " | ".join(shown) + " |")
        lines.append("")
    for key, sets in b.cross.items():
        models = sorted({m for v in sets.values() for m in v})
        lines += [f"## Cross-architecture: {md(title(key))}", ""]
        lines.append("| method | set | " + " | ".join(md(m) for m in models) + " |")
        lines.append("|" + "---|" * (len(models) + 2))
        for f, per in sets.items():
            first = next(iter(per.values()))
            accs = [f"{per[m].r['accuracy']['mean']:.2f}" if m in per else "–" for m in models]
            label = method_label(first.r, first.meta)[0]
            lines.append(f"| {md(label)} | {md(f.stem)} | " + " | ".join(accs) + " |")
        lines.append("")
    if b.bad:
        lines += ["## Excluded entries", "", EXCLUDED, ""]
        lines += [f"- {md(b.rel(f))}: {md(why)}" for f, why in b.bad]
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#17becf", "#bcbd22", "#7f7f7f")  # fmt: skip


def svg_plot(lines: dict[str, list[tuple[float, float]]], xlabel: str, log_x: bool,
             caption: str) -> str:  # fmt: skip
    """An inline SVG line plot: one polyline (with point markers) per name, a legend, axes."""
    esc = html.escape
    w, h, left, right, top, bottom = 560, 300, 52, 150, 12, 40
    pts = [p for v in lines.values() for p in v]
    fx = (lambda v: math.log10(v)) if log_x else (lambda v: float(v))
    xs, ys = [fx(p[0]) for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = max(0.0, min(ys) - 5), min(100.0, max(ys) + 5)
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1

    def px(v):
        return left + (fx(v) - x0) / (x1 - x0) * (w - left - right)

    def py(v):
        return top + (y1 - v) / (y1 - y0) * (h - top - bottom)

    out = [f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="{esc(caption)}">',
           f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" '
           'fill="none" stroke="#999"/>']  # fmt: skip
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        out.append(f'<text x="{left - 4}" y="{py(yv) + 4:.1f}" text-anchor="end" '
                   f'font-size="10">{yv:.0f}</text>')  # fmt: skip
    ticks = sorted({p[0] for p in pts})
    for t in ticks[:: max(1, len(ticks) // 6)]:
        label = f"{t:,.0f}" if t >= 1 else f"{t:g}"
        out.append(f'<text x="{px(t):.1f}" y="{h - bottom + 14}" text-anchor="middle" '
                   f'font-size="10">{esc(label)}</text>')  # fmt: skip
    out.append(f'<text x="{left + (w - left - right) / 2}" y="{h - 6}" text-anchor="middle" '
               f'font-size="11">{esc(xlabel)}</text>')  # fmt: skip
    out.append(f'<text x="12" y="{top + (h - top - bottom) / 2}" font-size="11" '
               f'transform="rotate(-90 12 {top + (h - top - bottom) / 2})" '
               'text-anchor="middle">accuracy (%)</text>')  # fmt: skip
    for i, (name, points) in enumerate(sorted(lines.items())):
        color = _PALETTE[i % len(_PALETTE)]
        points = sorted(points)
        coords = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in points)
        out.append(f'<polyline class="series" data-name="{esc(name)}" points="{coords}" '
                   f'fill="none" stroke="{color}" stroke-width="2"/>')  # fmt: skip
        for a, b in points:
            out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="{color}">'
                       f"<title>{esc(name)}: {b:.2f} %</title></circle>")  # fmt: skip
        ly = top + 14 + 16 * i
        out.append(f'<line x1="{w - right + 10}" y1="{ly - 4}" x2="{w - right + 28}" '
                   f'y2="{ly - 4}" stroke="{color}" stroke-width="2"/>'
                   f'<text x="{w - right + 32}" y="{ly}" font-size="11">{esc(name)}</text>')  # fmt: skip
    out.append("</svg>")
    return "".join(out)


def plots(b: Board) -> dict[tuple[str, str, str], dict[str, dict]]:
    """(dataset, protocol name, hash) -> method -> {ipc: [(accuracy, bytes)]}, test split, IPC
    budgets, the protocol's main tables."""
    out: dict[tuple, dict[str, dict]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for (ds, split, budget, name, h), rows in b.tables.items():
        if split != "test" or not isinstance(budget, int):  # IPC budgets only
            continue
        for x in rows:
            out[ds, name, h][method_label(x.r, x.meta)[0]][budget].append((x.r["accuracy"]["mean"],
                                                            stored_bytes(x)["total"]))  # fmt: skip
    return out


def plot_section(b: Board) -> list[str]:
    parts = []
    for (ds, name, h), methods in sorted(plots(b).items()):
        by_ipc, by_bytes = {}, {}
        for m, per in methods.items():
            by_ipc[m] = [(ipc, sum(a for a, _ in v) / len(v)) for ipc, v in per.items()]
            by_bytes[m] = [(sum(n for _, n in v) / len(v), sum(a for a, _ in v) / len(v))
                           for v in per.values()]  # fmt: skip
        cap = f"{ds} · {name} ({h})"
        parts.append(f'<figure class="plots" data-dataset="{html.escape(ds)}" '
                     f'data-protocol="{html.escape(name)}"><figcaption>{html.escape(cap)}: '
                     "accuracy against IPC and against stored bytes (log scale), one line per "
                     "method</figcaption>")  # fmt: skip
        parts.append(svg_plot(by_ipc, "images per class (log)", True, f"{cap}: accuracy vs IPC"))
        parts.append(svg_plot(by_bytes, "stored bytes (log)", True, f"{cap}: accuracy vs bytes"))
        parts.append("</figure>")
    return parts


# ----------------------------------------------------------------------------- index.html

_JS = r"""
(function () {
  function sortTable(table, key, dir) {
    var ths = Array.prototype.slice.call(table.tHead.rows[0].cells);
    var col = -1;
    ths.forEach(function (th, i) { if (th.dataset.key === key) col = i; });
    if (col < 0) return false;
    var num = ths[col].dataset.type === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value, c;
      if (num) {
        var fx = parseFloat(x), fy = parseFloat(y);
        if (isNaN(fx) || isNaN(fy)) return (isNaN(fx) ? 1 : 0) - (isNaN(fy) ? 1 : 0);
        c = fx - fy;
      } else { c = x.localeCompare(y); }
      return dir === "asc" ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    ths.forEach(function (th) { th.removeAttribute("aria-sort"); });
    ths[col].setAttribute("aria-sort", dir === "asc" ? "ascending" : "descending");
    table.dataset.sort = key + ":" + dir;
    return true;
  }
  function fromHash() {
    var m = /(?:^#|&)sort=([A-Za-z_]+)(?::(asc|desc))?/.exec(location.hash);
    if (!m) return;
    document.querySelectorAll("table.board").forEach(function (t) {
      sortTable(t, m[1], m[2] || "desc");
    });
  }
  document.querySelectorAll("table.sortable").forEach(function (t) {
    Array.prototype.forEach.call(t.tHead.rows[0].cells, function (th) {
      th.addEventListener("click", function () {
        var cur = (t.dataset.sort || "").split(":");
        var dir = cur[0] === th.dataset.key && cur[1] === "desc" ? "asc" : "desc";
        if (sortTable(t, th.dataset.key, dir)) {
          history.replaceState(null, "", "#sort=" + th.dataset.key + ":" + dir);
        }
      });
    });
  });
  window.addEventListener("hashchange", fromHash);
  fromHash();
  // After load: record how many thumbnails decoded and how many plots drew their lines.
  window.addEventListener("load", function () {
    var imgs = Array.prototype.slice.call(document.querySelectorAll("img.thumb"));
    var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
    var svgs = Array.prototype.slice.call(document.querySelectorAll("svg.plot"));
    var blank = svgs.filter(function (s) {
      var lines = s.querySelectorAll("polyline.series");
      if (!lines.length) return true;
      return Array.prototype.some.call(lines, function (p) {
        var r = p.getBBox(); return !(r.width > 0 || r.height > 0 || p.points.length === 1);
      });
    });
    document.body.dataset.thumbs = imgs.length + ":" + broken.length;
    document.body.dataset.plots = svgs.length + ":" + blank.length;
  });
})();
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table.board, table.cross { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: right;
  vertical-align: middle; }
td.str, th.str { text-align: left; }
th { cursor: pointer; user-select: none; background: #f4f4f4; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
tbody tr:hover { background: #fafae8; }
img.thumb { image-rendering: pixelated; display: block; }
code.cmd { font-size: 0.8em; white-space: nowrap; color: #555; }
.note { color: #a15c00; } code { background: #f4f4f4; padding: 0 0.2em; }
figure.plots { display: flex; flex-wrap: wrap; gap: 1em; margin: 1em 0; }
figure.plots figcaption { width: 100%; font-weight: 600; }
"""


def _thumbnail_img(x: Row, b: Board) -> str:
    """The ``<img>`` of a set's thumbnail, drawn at up to twice its size and 120 pixels high."""
    thumb = thumbnail_path(x)
    if not thumb.is_file():
        return "–"
    shape = x.meta.get("image_shape") or [1, 28, 28]
    classes = int(x.meta.get("num_classes") or 10)
    height = min(120, 2 * (classes * (int(shape[1]) + 1) + 1))
    src = esc_url(thumb.relative_to(b.board).as_posix())
    return (f'<img class="thumb" style="height: {height}px" src="{src}" '
            f'alt="{html.escape(method_label(x.r, x.meta)[0])}: one row per class">')  # fmt: skip


def esc_url(path: str) -> str:
    return html.escape(urllib.parse.quote(path))


def page(b: Board) -> str:
    esc = html.escape
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>ddbench leaderboard</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>ddbench leaderboard</h1>",
        "<p>One table per dataset × IPC (or full dataset) × pinned protocol, test split; results "
        "on another split have tables of their own. Accuracy: final-epoch accuracy, "
        "mean and std over the protocol's seeds. IOR, HLR, LRS and ARS are DD-Ranking's scores "
        "on accuracies as fractions (a dash: a reference is missing; hover for the reason). "
        "Click a column header to sort; a link such as <code>#sort=accuracy:asc</code> sorts on "
        "load. Generated by <code>ddbench leaderboard build</code>.</p>",
    ]  # fmt: skip
    if not b.tables:
        parts.append("<p>No submissions yet.</p>")
    plotted = plot_section(b)
    if plotted:
        parts += ['<section id="plots"><h2>Accuracy against IPC and bytes</h2>', *plotted,
                  "</section>"]  # fmt: skip
    kinds = {k: t for k, _, t, _ in _COLUMNS}
    for key, rows in b.tables.items():
        ds, split, budget, name, h = key
        parts.append(f'<section data-dataset="{esc(ds)}" data-ipc="{budget}" '
                     f'data-split="{esc(split)}" data-protocol="{esc(name)}">')  # fmt: skip
        parts.append(f"<h2>{esc(title(key))}</h2>")
        if not all(x.r["protocol"].get("comparable", True) for x in rows):
            parts.append('<p class="note">Smoke protocol: not comparable with papers.</p>')
        parts.append('<table class="board sortable" data-sort="accuracy:desc"><thead><tr>')
        for k, head, kind, tip in _COLUMNS:
            sort = ' aria-sort="descending"' if k == "accuracy" else ""
            parts.append(f'<th data-key="{k}" data-type="{kind}" class="{kind}" '
                         f'title="{esc(tip)}"{sort}>{esc(head)}</th>')  # fmt: skip
            if k == "method":
                parts.append('<th class="str" title="one row per class">images</th>')
        parts.append("</tr></thead><tbody>")
        for i, x in enumerate(rows, 1):
            c = cells(i, x, b)
            out = []
            for k, _, _, _ in _COLUMNS:
                value, text, tip = c[k]
                shown = esc(text)
                if k == "set":
                    shown = (f'<a href="{esc(urllib.parse.quote(text))}">{esc(Path(text).name)}'
                             f'</a><br><code class="cmd" title="reproduce this entry">'
                             f"{esc(reproduce_command(x))}</code>")  # fmt: skip
                tip = f' title="{esc(tip)}"' if tip else ""
                out.append(f'<td data-key="{k}" data-value="{esc(value)}" class="{kinds[k]}"'
                           f"{tip}>{shown}</td>")  # fmt: skip
                if k == "method":
                    out.append(f'<td class="str">{_thumbnail_img(x, b)}</td>')
            parts.append("<tr>" + "".join(out) + "</tr>")
        parts.append("</tbody></table></section>")
    for key, sets in b.cross.items():
        models = sorted({m for v in sets.values() for m in v})
        parts.append(f'<section class="cross-arch"><h2>Cross-architecture: {esc(title(key))}'
                     "</h2>")  # fmt: skip
        parts.append('<table class="cross sortable"><thead><tr>'
                     '<th data-key="method" data-type="str" class="str">method</th>'
                     '<th data-key="set" data-type="str" class="str">set</th>')  # fmt: skip
        parts += [
            f'<th data-key="m{i}" data-type="num">{esc(m)}</th>' for i, m in enumerate(models)
        ]
        parts.append("</tr></thead><tbody>")
        for f, per in sets.items():
            first = next(iter(per.values()))
            label = method_label(first.r, first.meta)[0]
            row = [f'<td class="str" data-value="{esc(label)}">{esc(label)}</td>',
                   f'<td class="str" data-value="{esc(f.stem)}">{esc(f.stem)}</td>']  # fmt: skip
            for m in models:
                a = per[m].r["accuracy"]["mean"] if m in per else None
                row.append(f'<td data-value="{"" if a is None else f"{a:.4f}"}">'
                           f'{"–" if a is None else f"{a:.2f}"}</td>')  # fmt: skip
            parts.append("<tr>" + "".join(row) + "</tr>")
        parts.append("</tbody></table></section>")
    if b.bad:
        parts += ['<section id="excluded"><h2>Excluded entries</h2>', f"<p>{esc(EXCLUDED)}</p>",
                  "<ul>"]  # fmt: skip
        parts += [f"<li><code>{esc(b.rel(f))}</code>: {esc(why)}</li>" for f, why in b.bad]
        parts.append("</ul></section>")
    parts += [f"<script>{_JS}</script>", "</body></html>", ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- files


def thumbnails(b: Board, out=None) -> list[Path]:
    """Make the thumbnail of every listed image set that has none (``<entry>.png`` beside it:
    the entry's name holds the set's checksum, so an existing one is current). Graph sets have
    no image grid."""
    made = []
    todo = {
        x.f: x
        for x in b.rows
        if x.own and x.e.get("kind") != "graph" and not thumbnail_path(x).is_file()
    }
    if not todo:
        return made
    from ddbench import synset as synset_io
    from ddbench.errors import DDBenchError
    from ddbench.viz import save_thumbnail

    for f, x in todo.items():
        try:
            s = synset_io.load(f.with_name(x.e["synset"]["path"]))
            made.append(save_thumbnail(s, thumbnail_path(x)))
        except DDBenchError as err:
            if out is not None:
                out(f"no thumbnail for {f}: {err}")
    return made


def write(board: str | Path, entries: Entries, out=None) -> tuple[Path, Path]:
    """Regenerate ``README.md``, ``index.html`` and the missing thumbnails of ``board``."""
    from ddbench.synset import atomic_write

    board = Path(board)
    b = Board(board, entries)
    thumbnails(b, out)
    md_text, page_html = markdown(b), page(b)
    readme, index = board / "README.md", board / "index.html"
    atomic_write(readme, lambda tmp: Path(tmp).write_text(md_text))
    atomic_write(index, lambda tmp: Path(tmp).write_text(page_html))
    return readme, index
