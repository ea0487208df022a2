"""Benchmark pages generated from ``benchmarks/results/*.json`` at every build.

``builder-inited`` (before Sphinx looks for its sources) writes ``docs/benchmarks/``:

* ``index.rst``: the headline tables and figures (test ROC AUC per seed, operating
  points at the validation cut-off in ROC space, CPU time of the paper and the small
  settings, throughput), each drawn from the results file it names;
* one page per results file with every number it holds, as tables.

Every number shown is read from the JSON files (formatted to four significant
digits); nothing is typed in here. Figures are plots of those numbers, never images of
a data set. A file whose layout the headline figures do not know is still shown in
full on its own page; a file that is not valid JSON is a build warning (an error with
``-W``). Files are rewritten only when their content changes, so incremental builds
stay incremental. ``docs/benchmarks/`` is generated (docs/.gitignore).
"""

import json
import math
import re
from io import BytesIO
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

#: dicts with at most this many scalar values are written inline in a table cell
INLINE_ITEMS = 6
#: columns per table; wider record sets are split into several tables
MAX_COLUMNS = 7
#: list items shown before "... (n values)"
MAX_LIST = 12
HEADINGS = "=-~^\"'"


# ---------------------------------------------------------------- formatting
def _is_scalar(value):
    return value is None or isinstance(value, (bool, int, float, str))


def _number(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return None


def _escape(text):
    text = " ".join(str(text).split())
    text = re.sub(r"([\\`*|_<>\[\]])", r"\\\1", text)
    # A cell that starts like a list item or an enumeration would become one.
    if re.match(r"^([-+#]|\d+[.)])(\s|$)", text):
        text = "\\" + text
    return text


def _cell(value):
    """Text of one table cell (inline rST), or None if the value needs a table."""
    number = _number(value)
    if number is not None:
        return number
    if value is None:
        return "--"
    if isinstance(value, str):
        return _escape(value) if value else "--"
    if isinstance(value, list) and all(_is_scalar(v) for v in value):
        shown = [_cell(v) for v in value[:MAX_LIST]]
        more = f", ... ({len(value)} values)" if len(value) > MAX_LIST else ""
        return "[" + ", ".join(shown) + more + "]"
    if isinstance(value, dict) and len(value) <= INLINE_ITEMS and all(_is_scalar(v) for v in value.values()):
        if set(value) == {"mean", "sd"} and all(isinstance(v, (int, float)) for v in value.values()):
            return f"{_cell(value['mean'])} ± {_cell(value['sd'])}"
        return "; ".join(f"{_escape(k)}: {_cell(v)}" for k, v in value.items())
    return None


def _heading(text, level):
    text = _escape(text)
    if level >= len(HEADINGS):
        return [f".. rubric:: {text}", ""]
    return [text, HEADINGS[level] * max(len(text), 3), ""]


def _list_table(header, rows, widths=None):
    lines = [".. list-table::", "   :header-rows: 1"]
    if widths:
        lines.append("   :widths: " + " ".join(str(w) for w in widths))
    lines.append("")
    for row in [header, *rows]:
        lines.append(f"   * - {row[0] or ' '}")
        lines.extend(f"     - {cell or ' '}" for cell in row[1:])
    return [*lines, ""]


# ---------------------------------------------------------------- generic pages
def _records(value):
    """The value as {row name: record dict} if it is a set of records, else None."""
    if isinstance(value, dict) and len(value) >= 2 and all(isinstance(v, dict) for v in value.values()):
        return value
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return {str(v.get("kind", i)) if isinstance(v.get("kind"), str) else str(i): v for i, v in enumerate(value)}
    return None


def _record_table(name, records, level, path):
    """Rows = records, columns = their inline fields; other fields become subsections."""
    columns = []
    for record in records.values():
        for key, field in record.items():
            if _cell(field) is not None and key not in columns:
                columns.append(key)
    lines = []
    for start in range(0, len(columns), MAX_COLUMNS):
        chunk = columns[start : start + MAX_COLUMNS]
        rows = [[_escape(row)] + [_cell(record[c]) if c in record else "" for c in chunk] for row, record in records.items()]
        lines += _list_table([_escape(name)] + [_escape(c) for c in chunk], rows)
    for row, record in records.items():
        for key, field in record.items():
            if _cell(field) is None:
                lines += _render(field, f"{row}: {key}", level, f"{path}/{row}/{key}")
    return lines


def _render(value, title, level, path):
    """rST lines for any JSON value, under a heading of ``level``."""
    lines = _heading(title, level)
    cell = _cell(value)
    if cell is not None:
        return [*lines, cell, ""]
    records = _records(value)
    if records is not None and not any(_records(r) is not None for r in records.values()):
        return [*lines, *_record_table(title.split(": ")[-1], records, level + 1, path)]
    if isinstance(value, list):
        for i, item in enumerate(value):
            lines += _render(item, f"{title} [{i}]", level + 1, f"{path}/{i}")
        return lines
    inline = [(k, _cell(v)) for k, v in value.items() if _cell(v) is not None]
    if inline:
        lines += _list_table(["field", "value"], [[_escape(k), c] for k, c in inline], widths=[30, 70])
    for key, item in value.items():
        if _cell(item) is None:
            lines += _render(item, key, level + 1, f"{path}/{key}")
    return lines


def file_page(stem, data, figures):
    title = f"{TITLES.get(stem, stem.replace('_', ' '))} ({stem}.json)"
    lines = [f".. _benchmark-{stem}:", "", *_heading(title, 0)]
    intro = [data.get(k) for k in ("protocol", "purpose") if isinstance(data, dict) and isinstance(data.get(k), str)]
    lines += [*(_escape(t) + "\n" for t in intro)]
    lines += [
        (
            f"Every number of ``benchmarks/results/{stem}.json``, as the benchmark wrote it "
            "(floats to four significant digits). ``benchmarks/README.md`` discusses them."
        ),
        "",
    ]
    if isinstance(data, dict) and isinstance(data.get("command"), str):
        lines += ["The command that wrote it::", "", "    " + " ".join(data["command"].split()), ""]
    for figure in figures:
        lines += figure
    body = {k: v for k, v in data.items() if k not in ("protocol", "purpose", "command")} if isinstance(data, dict) else data
    lines += _render(body, "All numbers", 1, stem)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures
def _get(data, *keys):
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _num(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Figures:
    """Writes PNG figures into ``benchmarks/figures`` and returns their rST."""

    def __init__(self, folder):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = set()

    def save(self, fig, name, caption):
        buffer = BytesIO()
        fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight", metadata={"Software": None})
        self.plt.close(fig)
        path = self.folder / f"{name}.png"
        data = buffer.getvalue()
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        self.written.add(path.name)
        return [f".. figure:: figures/{name}.png", "   :width: 90%", "", f"   {caption}", ""]


def _seed_records(detector):
    seeds = _get(detector, "per_seed")
    if not isinstance(seeds, dict):
        return []
    return [(seed, record) for seed, record in seeds.items() if isinstance(record, dict)]


def protocol_figures(fig, stem, data, what):
    """Per-seed test AUC, operating points and training time of a whole-image protocol."""
    detectors = _get(data, "detectors")
    if not isinstance(detectors, dict):
        return [], []
    names = [n for n, d in detectors.items() if any(_num(r.get("test_roc_auc")) for _, r in _seed_records(d))]
    if not names:
        return [], []
    baseline = _get(data, "baseline_intensity_mahalanobis")
    out, rows = [], []
    f, ax = fig.plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    for i, name in enumerate(names):
        aucs = [r["test_roc_auc"] for _, r in _seed_records(detectors[name]) if _num(r.get("test_roc_auc"))]
        ax.plot(aucs, [i] * len(aucs), "o", color="tab:blue", alpha=0.7)
        mean, sd = detectors[name].get("test_roc_auc_mean"), detectors[name].get("test_roc_auc_sd")
        if _num(mean):
            ax.plot([mean], [i], "|", color="k", markersize=16)
        rows.append([_escape(name), str(len(aucs)), _cell(mean) if _num(mean) else "--",
                     _cell(sd) if _num(sd) else "--", _cell(detectors[name].get("chosen_scores")) or "--",
                     _cell(_mean([r.get("train_seconds") for _, r in _seed_records(detectors[name])])) or "--"])
    if _num(_get(baseline, "test_roc_auc")):
        ax.axvline(baseline["test_roc_auc"], color="tab:red", linestyle="--", label="intensity baseline")
        ax.legend(loc="lower right", fontsize=8)
    ax.axvline(0.5, color="0.6", linewidth=0.8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test ROC AUC (one dot per training seed; bar: mean)", title=what)
    out.append(fig.save(f, f"{stem}_auc_per_seed", f"Test ROC AUC per seed, ``{stem}.json``."))

    f, ax = fig.plt.subplots(figsize=(5.2, 5))
    markers = "osD^v<>phX*"
    for i, name in enumerate(names):
        points = [(1 - r["test_specificity_at_cutoff"], r["test_sensitivity_at_cutoff"])
                  for _, r in _seed_records(detectors[name])
                  if _num(r.get("test_specificity_at_cutoff")) and _num(r.get("test_sensitivity_at_cutoff"))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, markers[i % len(markers)], label=name, alpha=0.8)
    if _num(_get(baseline, "test_specificity_at_cutoff")) and _num(_get(baseline, "test_sensitivity_at_cutoff")):
        ax.plot([1 - baseline["test_specificity_at_cutoff"]], [baseline["test_sensitivity_at_cutoff"]], "k*",
                markersize=12, label="intensity baseline")
    ax.plot([0, 1], [0, 1], color="0.6", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false-positive rate (1 - specificity)", ylabel="sensitivity",
           title="Operating points at the validation cut-off")
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=7, loc="lower right")
    out.append(fig.save(f, f"{stem}_operating_points",
                        f"Test sensitivity and false-positive rate at the cut-off chosen on validation data "
                        f"(Youden's J), one point per seed, in ROC space, ``{stem}.json``. The files keep the "
                        "operating points, not whole ROC curves."))
    table = _list_table(["detector", "seeds", "test AUC mean", "sd", "scores chosen on validation", "train s (mean)"], rows)
    return out, table


def _mean(values):
    values = [v for v in values if _num(v)]
    return sum(values) / len(values) if values else None


def cpu_figures(fig, stem, data):
    detectors = _get(data, "detectors")
    if not isinstance(detectors, dict):
        return [], []
    rows, names, paper_h, small_s = [], [], [], []
    for name, entry in detectors.items():
        paper, small = _get(entry, "paper"), _get(entry, "small")
        hours = _get(paper, "hours_per_1000_images")
        seconds = _get(small, "fit_seconds")
        rows.append([_escape(name), _cell(_get(paper, "settings")) or "--", _cell(hours) if _num(hours) else "--",
                     _cell(_get(small, "settings")) or "--", _cell(seconds) if _num(seconds) else "--"])
        if _num(hours):
            names.append(name)
            paper_h.append(hours)
            small_s.append(seconds if _num(seconds) else float("nan"))
    out = []
    if names:
        f, ax = fig.plt.subplots(figsize=(8, 0.5 * len(names) + 1.4))
        y = range(len(names))
        ax.barh([v + 0.2 for v in y], [h * 3600 for h in paper_h], height=0.4, label="paper settings, per 1,000 images")
        ax.barh([v - 0.2 for v in y], small_s, height=0.4, label="small settings, whole fit (phantoms)")
        ax.set_xscale("log")
        ax.set_yticks(list(y), names, fontsize=8)
        ax.set(xlabel="seconds on the 2-core CPU (log scale)", title="Training time: paper vs small settings")
        ax.legend(fontsize=8)
        out.append(fig.save(f, f"{stem}_timing", f"Training time, ``{stem}.json``."))
    table = _list_table(["detector", "paper settings", "hours per 1,000 images", "small settings", "fit seconds"], rows,
                        widths=[18, 20, 12, 38, 12])
    return out, table


def patch_protocol_figures(fig, stem, data):
    """Validation and test AUC of each variant of a JSRT patch benchmark."""
    variants = {}
    for key in ("fanogan", "anogan"):
        block = _get(data, key)
        block = _get(block, "per_score") if isinstance(_get(block, "per_score"), dict) else block
        if isinstance(block, dict):
            for name, entry in block.items():
                if isinstance(entry, dict) and _num(entry.get("test_roc_auc")):
                    variants[name] = entry
    if not variants:
        return [], []
    baseline = _get(data, "baseline_intensity_mahalanobis")
    if isinstance(baseline, dict) and _num(baseline.get("test_roc_auc")):
        variants = {**variants, "intensity baseline": baseline}
    names = list(variants)
    f, ax = fig.plt.subplots(figsize=(8, 0.45 * len(names) + 1.4))
    y = range(len(names))
    val = [variants[n].get("validation_roc_auc") if _num(variants[n].get("validation_roc_auc")) else float("nan") for n in names]
    ax.barh([v + 0.2 for v in y], val, height=0.4, label="validation")
    ax.barh([v - 0.2 for v in y], [variants[n]["test_roc_auc"] for n in names], height=0.4, label="test")
    ax.axvline(0.5, color="0.6", linewidth=0.8)
    ax.set_yticks(list(y), names, fontsize=8)
    ax.set(xlim=(0, 1), xlabel="patch ROC AUC", title=f"JSRT patch protocol ({stem})")
    ax.legend(fontsize=8)
    rows = []
    for n in names:
        e = variants[n]
        sens = e.get("test_sensitivity_at_validation_cutoff", e.get("test_sensitivity_at_cutoff"))
        spec = e.get("test_specificity_at_validation_cutoff", e.get("test_specificity_at_cutoff"))
        rows.append([_escape(n), _cell(e.get("validation_roc_auc")) or "--", _cell(e.get("test_roc_auc")) or "--",
                     _cell(sens) if _num(sens) else "--", _cell(spec) if _num(spec) else "--"])
    table = _list_table(["variant", "validation AUC", "test AUC", "test sensitivity", "test specificity"], rows)
    return [fig.save(f, f"{stem}_auc", f"Validation and test patch ROC AUC, ``{stem}.json``.")], table


def throughput_figures(fig, stem, data):
    """Bars of every "images per second" or "ms per ..." figure of a speed benchmark."""
    found = []

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                if _num(v) and (k.endswith("images_per_s") or k == "images_per_s") and "median" not in k:
                    found.append((" / ".join(path + [k.replace("_images_per_s", "").replace("images_per_s", "")]).strip(" /"), v))
                elif isinstance(v, dict):
                    walk(v, path + [k])

    walk(data, [])
    if not found:
        return [], []
    f, ax = fig.plt.subplots(figsize=(8, 0.35 * len(found) + 1.4))
    values = [v for _, v in found]
    ax.barh(range(len(found)), values, color="tab:green")
    ax.set_yticks(range(len(found)), [n or "images_per_s" for n, _ in found], fontsize=7)
    log = min(values) > 0 and max(values) / min(values) > 50
    if log:
        ax.set_xscale("log")
    ax.set(xlabel="images (or patches) per second" + (", log scale" if log else ""),
           title=f"Throughput ({stem})")
    return [fig.save(f, f"{stem}_throughput", f"Throughput, ``{stem}.json``.")], []


def anogan_speed_figures(fig, stem, data):
    search = _get(data, "search")
    if not isinstance(search, dict):
        return [], []
    points = sorted((int(k), v["ms_per_sample"]) for k, v in search.items()
                    if k.isdigit() and isinstance(v, dict) and _num(v.get("ms_per_sample")))
    if not points:
        return [], []
    f, ax = fig.plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), "o-")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="search_batch_size", ylabel="ms per image per search step",
           title="AnoGAN latent search: batched vs one image at a time")
    return [fig.save(f, f"{stem}_search", f"Latent-search time per image and step, ``{stem}.json``.")], []


def shift_figures(fig, stem, data):
    """Test AUC per seed on the shift protocol and the random split, baseline beside."""
    rows, series = [], []
    for protocol in ("shift", "random"):
        section = _get(data, protocol)
        if not isinstance(section, dict) or not isinstance(section.get("detectors"), dict):
            continue
        baseline = _get(section, "baseline_test_roc_auc", "mean")
        for name, entry in section["detectors"].items():
            runs = entry.get("runs") if isinstance(entry, dict) else None
            if not isinstance(runs, dict):
                continue
            aucs = [r["test_roc_auc"] for r in runs.values() if isinstance(r, dict) and _num(r.get("test_roc_auc"))]
            if not aucs:
                continue
            sens = _mean([r.get("test_sensitivity_at_90_specificity") for r in runs.values() if isinstance(r, dict)])
            auc = _get(entry, "test_roc_auc")
            rows.append([protocol, _escape(name), str(len(aucs)), _cell(_get(auc, "mean")) or "--",
                         _cell(_get(auc, "std")) or "--", _cell(sens) or "--",
                         _cell(baseline) if _num(baseline) else "--"])
            series.append((f"{protocol}: {name}", aucs, baseline))
    if not rows:
        return [], []
    f, ax = fig.plt.subplots(figsize=(8, 0.45 * len(series) + 1.4))
    for i, (label, aucs, baseline) in enumerate(series):
        ax.plot(aucs, [i] * len(aucs), "o", color="tab:blue", alpha=0.7)
        if _num(baseline):
            ax.plot([baseline], [i], "|", color="tab:red", markersize=16)
    ax.axvline(0.5, color="0.6", linewidth=0.8)
    ax.set_yticks(range(len(series)), [label for label, _, _ in series], fontsize=8)
    ax.set(xlim=(0, 1), xlabel="test ROC AUC (dots: training seeds; red bar: the intensity baseline on the same films)",
           title="Pediatric acquisition shift and random split")
    figures = [fig.save(f, f"{stem}_auc_per_seed", f"Test ROC AUC per seed, ``{stem}.json``.")]
    header = ["protocol", "detector", "seeds", "test AUC mean", "sd", "sensitivity at 90 % specificity", "baseline AUC"]
    return figures, _list_table(header, rows)


#: headings of the index page, in its order; other files follow under their own name
TITLES = {
    "shift": "Acquisition shift: pediatric films of another exposure",
    "pediatric": "Pediatric pneumonia, whole images at 64 x 64",
    "jsrt_synthetic": "SyntheticAnomalyDetector on the JSRT patch protocol",
    "jsrt_fanogan": "f-AnoGAN / P-AnoGAN on the JSRT patch protocol, scaled down",
    "jsrt_anogan": "AnoGAN on the JSRT patch protocol, scaled down",
    "cpu_settings": "Paper settings against small settings on a CPU",
    "anogan_speed": "AnoGAN speed: batched latent search",
    "adversarial_speed": "One-class adversarial detector and HealthyGAN: training speed",
    "fanogan_speed": "f-AnoGAN / P-AnoGAN speed",
    "preprocessing": "Preprocessing throughput at 1024 x 1024",
}

SPECIFIC = {
    "shift": shift_figures,
    "pediatric": lambda fig, stem, data: protocol_figures(fig, stem, data, "Pediatric pneumonia, whole images"),
    "cpu_settings": cpu_figures,
    "jsrt_fanogan": patch_protocol_figures,
    "jsrt_anogan": patch_protocol_figures,
    "anogan_speed": anogan_speed_figures,
    "adversarial_speed": throughput_figures,
    "fanogan_speed": throughput_figures,
    "preprocessing": throughput_figures,
}

INDEX_HEAD = """\
.. _benchmarks:

Benchmarks
==========

The figures and tables of this section are generated when the documentation is built,
from the JSON files that the scripts of ``benchmarks/`` write to
``benchmarks/results/``: every number is read from those files, nothing is typed in.
``benchmarks/README.md`` in the repository discusses them (protocols, what the
numbers mean, what they do not show). The data sets themselves (JSRT, the pediatric
chest X-rays) are not shipped and never shown here; the figures plot numbers only.
The machine is the project's 2-core CPU unless a file says otherwise.

"""


def build_pages(app):
    results = Path(app.config.skanomaly_benchmark_results)
    out = Path(app.srcdir, "benchmarks")
    out.mkdir(exist_ok=True)
    fig = Figures(out / "figures")
    pages, summary = {}, []
    order = {stem: i for i, stem in enumerate(TITLES)}
    paths = sorted(results.glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem))
    for path in paths:
        stem = path.stem
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            logger.warning("benchmark results %s could not be read: %s", path, exc, type="skanomaly", subtype="benchmarks")
            continue
        figures, table = [], []
        if stem in SPECIFIC and isinstance(data, dict):
            try:
                figures, table = SPECIFIC[stem](fig, stem, data)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
                # A layout the headline figures do not know: the full tables still follow.
                logger.info("benchmark figures of %s skipped (%s: %s)", stem, type(exc).__name__, exc)
                figures, table = [], []
        if figures or table:
            summary += _heading(TITLES.get(stem, stem.replace("_", " ")), 1)
            protocol = data.get("protocol") if isinstance(data.get("protocol"), str) else ""
            summary += [f"{_escape(protocol)} From :ref:`{stem}.json <benchmark-{stem}>`.".strip(), ""]
            summary += table
            for figure in figures:
                summary += figure
        pages[stem] = file_page(stem, data, figures)
    for stale in out.glob("*.rst"):
        if stale.stem != "index" and stale.stem not in pages:
            stale.unlink()
    for stale in (out / "figures").glob("*.png"):
        if stale.name not in fig.written:
            stale.unlink()
    for stem, text in pages.items():
        _write_if_changed(out / f"{stem}.rst", text)
    toc = [".. toctree::", "   :maxdepth: 1", "   :caption: Every results file", "", *(f"   {s}" for s in pages), ""]
    if not pages:
        toc = ["No results file in ``benchmarks/results/``.", ""]
    _write_if_changed(out / "index.rst", INDEX_HEAD + "\n".join(summary + toc) + "\n")


def _write_if_changed(path, text):
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def setup(app):
    app.add_config_value("skanomaly_benchmark_results", "../benchmarks/results", "env")
    app.connect("builder-inited", build_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
