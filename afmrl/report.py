"""The run report: ``runs/<run>/report.html``, one self-contained page a person can read.

It shows what the run's files and MLflow store already hold: the results table, the learning
curves (AGCL loss and per-epoch eval recall of every embedder run, RAR reward and held-out
recall per step), per-coarse-group recall of the best model and its baseline, and example test
queries with their top-5 results under both, so what training changed is visible.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from afmrl.config import AfmrlConfig
from afmrl.layout import RunLayout
from afmrl.utils.io import atomic_write_text

REPORT_FILE = "report.html"
EMBEDDER_RUNS = ("infonce", "agcl", "cit")  # nested MLflow runs of the AGCL trainings
CURVE_WORDS = ("loss", "recall", "reward", "kl", "malformed")
EXAMPLES = 8


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metric_histories(config: AfmrlConfig, parent_run_id: str | None
                     ) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run name: {metric: [(step, value)]}} for the pipeline's runs (curves only: keys with a
    loss / recall / reward / KL / malformed share and more than one point)."""
    from mlflow.tracking import MlflowClient

    from afmrl.tracking import run_tree, tracking_uri

    runs = run_tree(config)
    mine = {parent_run_id}
    for _ in range(3):  # stage runs, and the variant runs nested below the train stage
        mine |= {r["run_id"] for r in runs if r["parent"] in mine}
    client = MlflowClient(tracking_uri(config))
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run in runs:
        if parent_run_id and run["run_id"] not in mine:
            continue
        for key in run["metrics"]:
            if not any(word in key for word in CURVE_WORDS):
                continue
            history = sorted((m.step, m.value) for m in client.get_metric_history(run["run_id"],
                                                                                   key))
            if len(history) > 1:
                curves.setdefault(run["name"], {})[key] = history
    return curves


def curve_charts(curves: dict[str, dict[str, list[tuple[int, float]]]]) -> list[tuple[str, str]]:
    """(title, png data URL) per run: one panel for losses, one for recalls/rewards."""
    plt = _pyplot()
    charts = []
    for name in sorted(curves):
        metrics = curves[name]
        panels = [("loss", [k for k in metrics if "loss" in k or "kl" in k]),
                  ("recall / reward", [k for k in metrics if "loss" not in k and "kl" not in k])]
        panels = [(label, keys) for label, keys in panels if keys]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.0), squeeze=False)
        for ax, (label, keys) in zip(axes[0], panels):
            for key in sorted(keys)[:8]:
                steps, values = zip(*metrics[key])
                ax.plot(steps, values, marker="o", markersize=3, label=key)
            ax.set_xlabel("step")
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.legend(fontsize=6)
        charts.append((name, _png(fig)))
    return charts


def group_chart(groups: dict[str, list[dict[str, Any]]], systems: Sequence[str]) -> str | None:
    """Recall@1 per coarse group for ``systems`` (grouped bars)."""
    systems = [s for s in systems if s in groups]
    if not systems:
        return None
    plt = _pyplot()
    names = [g["coarse_group"] or str(g["coarse_group_id"]) for g in groups[systems[0]]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(names)), 3.4))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        values = [g.get("recall_at_1", np.nan) for g in groups[system]]
        ax.bar(np.arange(len(values)) + i * width, values, width, label=system)
    ax.set_xticks(np.arange(len(names)) + width * (len(systems) - 1) / 2, names, rotation=60,
                  ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("R@1")
    ax.set_title("Recall@1 per coarse group (test)", fontsize=10)
    ax.legend(fontsize=7)
    return _png(fig)


def _thumbnail(image: Any, side: int = 88) -> str:
    from afmrl.data.images import load_image

    if image is None:
        return ""
    picture = load_image(image, side) if isinstance(image, str) else image.copy()
    picture = picture.convert("RGB")
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def pick_examples(query_products: np.ndarray, count: int = EXAMPLES, seed: int = 0) -> list[int]:
    """``count`` query positions from as many different products as possible (seeded)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(query_products))
    first_of_product = {}
    for position in order:
        first_of_product.setdefault(int(query_products[position]), int(position))
    picked = list(first_of_product.values())[:count]
    rest = [int(p) for p in order if int(p) not in picked]
    return picked + rest[:count - len(picked)]


def example_rows(config: AfmrlConfig, catalog: pd.DataFrame, models: dict[str, tuple[Path, str]]
                 ) -> list[dict[str, Any]]:
    """Example test queries with each model's top-5: {query, product, results: {model: [...]}}.
    ``models`` maps a display name to (embedder folder, attribute tag of its eval set)."""
    import dataclasses

    from afmrl.eval.protocol import rank_dense
    from afmrl.eval.run import labelled_eval_set
    from afmrl.models.embedders import load_embedder

    titles = dict(zip(catalog["item_id"], catalog["title"]))
    examples: list[dict[str, Any]] = []
    for name, (embedder, tag) in models.items():
        full = labelled_eval_set(config, catalog, "test", tag)
        positions = pick_examples(full.query_products)
        subset = dataclasses.replace(full, queries=[full.queries[p] for p in positions],
                                     query_products=full.query_products[positions],
                                     query_coarse=full.query_coarse[positions])
        indices, scores = rank_dense(load_embedder(embedder), subset, depth=5)
        for row, position in enumerate(positions):
            if len(examples) <= row:
                query = full.queries[position]
                examples.append({"image": _thumbnail(query.image), "text": query.text,
                                 "product": int(full.query_products[position]), "results": {}})
            examples[row]["results"][name] = [
                {"title": titles.get(full.gallery_item_ids[i], full.gallery_item_ids[i]),
                 "image": _thumbnail(full.gallery[i].image),
                 "score": float(s), "correct": bool(full.gallery_products[i] ==
                                                    full.query_products[position])}
                for i, s in zip(indices[row], scores[row]) if i >= 0]
    return examples


def _results_html(results: dict[str, Any]) -> str:
    from afmrl.eval.table import COLUMNS, HEADERS

    rows = results.get("rows", [])
    columns = [c for c in COLUMNS if any(c in r for r in rows)]
    head = "".join(f"<th>{HEADERS[c]}</th>" for c in columns)
    body = "".join(
        "<tr><td>" + html.escape(str(r["system"])) + "</td>" +
        "".join(f"<td>{r[c]:.3f}</td>" if isinstance(r.get(c), (int, float)) else "<td>-</td>"
                for c in columns) + "</tr>" for r in rows)
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in results.get("notes", []))
    return f"<table><tr><th>system</th>{head}</tr>{body}</table>{notes}"


def _examples_html(examples: list[dict[str, Any]]) -> str:
    blocks = []
    for example in examples:
        columns = []
        for name, hits in example["results"].items():
            cards = "".join(
                f"<figure class='{'hit' if h['correct'] else 'miss'}'>"
                f"<img src='{h['image']}' alt=''><figcaption>{html.escape(h['title'])}<br>"
                f"{h['score']:.3f}</figcaption></figure>" for h in hits)
            columns.append(f"<div class=model><b>{html.escape(name)}</b><div>{cards}</div></div>")
        query = f"<img src='{example['image']}' alt='query'>" if example["image"] else ""
        text = html.escape(example["text"]) or "(photo only)"
        blocks.append(f"<div class=example><div class=query>{query}<p>{text}</p></div>"
                      + "".join(columns) + "</div>")
    return "".join(blocks)


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}td:first-child,th:first-child{text-align:left}.note{color:#666;font-size:90%}
img.chart{max-width:100%;border:1px solid #eee;margin:4px 0}.example{display:flex;gap:16px;
border-top:1px solid #ddd;padding:8px 0}.query{width:110px;font-size:80%}.model div{display:flex;
gap:4px}figure{margin:0;width:92px;font-size:70%;text-align:center;border:3px solid transparent}
figure.hit{border-color:#3a3}figure.miss{border-color:#eee}figure img{width:88px;height:88px;
object-fit:contain}"""


def build_report(config: AfmrlConfig, catalog: pd.DataFrame) -> Path:
    """Write ``runs/<run>/report.html`` from the run's results, MLflow metrics and embedders."""
    from afmrl.eval.run import trained

    layout = RunLayout.of(config)
    state = json.loads(layout.pipeline_state.read_text()) if layout.pipeline_state.is_file() \
        else {"stages": {}, "parent_run_id": None}
    results = json.loads(layout.results.read_text()) if layout.results.is_file() else {}
    groups_file = layout.results.with_suffix(".groups.json")
    groups = json.loads(groups_file.read_text()) if groups_file.is_file() else {}
    scores = {r["system"]: r.get("recall_at_1", -1.0) for r in results.get("rows", [])}
    candidates = [t for t in ("cit", "agcl") if trained(layout, t)]
    best = max(candidates, key=lambda t: scores.get(t, -1.0)) if candidates else None
    baseline = "infonce" if trained(layout, "infonce") else None
    attribute_tag = {"cit": "rar" if layout.attributes("rar").is_dir() else "sft",
                     "agcl": "sft", "infonce": "sft"}
    models = {f"{t} ({'best' if t == best else 'baseline'})":
              (layout.embedder(t), attribute_tag[t] if layout.attributes("sft").is_dir()
               else None)
              for t in (best, baseline) if t is not None}
    examples = example_rows(config, catalog, models) if models else []
    charts = curve_charts(metric_histories(config, state.get("parent_run_id")))
    groups_png = group_chart(groups, [s for s in (best, baseline) if s])
    timings = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in state["stages"].items())
    parts = [
        f"<h1>afmrl run report: {html.escape(layout.root.name)}</h1>",
        f"<p>profile <b>{html.escape(config.profile)}</b>, catalog "
        f"<b>{html.escape(str(config.data.catalog))}</b>; stages: {html.escape(timings)}</p>",
        "<h2>Results (test split)</h2>",
        _results_html(results) if results else "<p>no results table yet</p>",
        "<h2>Learning curves</h2>",
        "".join(f"<img class=chart src='{png}' alt='{html.escape(name)}'>"
                for name, png in charts) or "<p>no curves logged yet</p>",
        "<h2>Recall@1 per coarse group</h2>",
        f"<img class=chart src='{groups_png}' alt='per-group recall'>" if groups_png
        else "<p>no per-group results yet</p>",
        f"<h2>{len(examples)} example test queries: top-5 per model</h2>",
        "<p class=note>green border: the query's product</p>",
        _examples_html(examples),
    ]
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>afmrl report "
            f"{html.escape(layout.root.name)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    path = layout.root / REPORT_FILE
    atomic_write_text(path, page)
    return path
