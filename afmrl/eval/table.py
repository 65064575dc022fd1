"""The evaluation table: rows = systems (embedders, baselines), columns = metrics, all scored on
one ``EvalSet`` by ``score_ranking``; written as JSON, Markdown, a per-coarse-group breakdown
and a bar chart, and logged to MLflow."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from afmrl.eval.protocol import (PHOTO_QUERIES_R1, TEXT_QUERIES_R1, WITHIN_GROUP_R1, EvalSet,
                                 Ranking, rank_bm25, rank_dense, rank_lexical, rank_tfidf,
                                 ranking_depth, score_by_group, score_ranking)
from afmrl.utils.io import atomic_path, atomic_write_json, atomic_write_text

# Text-only systems scored next to every embedder (``--baselines``); name -> ranker. Lexical and
# hybrid systems of afmrl.index register here too, with the same Ranking shape.
TEXT_BASELINES: dict[str, Callable[[EvalSet, int], Ranking]] = {"tfidf": rank_tfidf,
                                                                 "bm25": rank_bm25,
                                                                 "lexical": rank_lexical}
ZERO_SHOT = "zero_shot"
COLUMNS = ("recall_at_1", "recall_at_5", "recall_at_10", "map_at_10", "mrr", WITHIN_GROUP_R1,
           PHOTO_QUERIES_R1, TEXT_QUERIES_R1)
HEADERS = {"recall_at_1": "R@1", "recall_at_5": "R@5", "recall_at_10": "R@10",
           "map_at_10": "mAP@10", "mrr": "MRR", WITHIN_GROUP_R1: "within-group R@1",
           PHOTO_QUERIES_R1: "photo-query R@1", TEXT_QUERIES_R1: "text-query R@1"}


@dataclass
class EvalTable:
    """Rows of one split's evaluation; ``notes`` say what was skipped and why."""
    split: str
    ks: tuple[int, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rankings: dict[str, Ranking] = field(default_factory=dict)  # for fusing them afterwards

    def add(self, system: str, eval_set: EvalSet, ranking: Ranking) -> dict[str, Any]:
        row = {"system": system, **score_ranking(eval_set, ranking, self.ks)}
        self.rankings[system] = ranking
        self.rows.append(row)
        self.groups[system] = score_by_group(eval_set, ranking, self.ks)
        return row

    def add_model(self, system: str, model, eval_set: EvalSet,
                  gallery: np.ndarray | None = None) -> dict[str, Any]:
        """``gallery``: the gallery's embeddings if already computed (the embedding job)."""
        return self.add(system, eval_set, rank_dense(model, eval_set, ranking_depth(self.ks),
                                                     gallery=gallery))

    def add_baselines(self, eval_set: EvalSet) -> None:
        """The text baselines (skipped with a note on an image-only catalog)."""
        if eval_set.has_text:
            for name, rank in TEXT_BASELINES.items():
                self.add(name, eval_set, rank(eval_set, ranking_depth(self.ks)))
        else:
            self.notes.append(f"text baselines ({', '.join(TEXT_BASELINES)}) skipped: the "
                              f"'{self.split}' queries or the gallery have no text (image-only)")

    def columns(self) -> list[str]:
        present = {key for row in self.rows for key in row}
        return [c for c in COLUMNS if c in present]

    def markdown(self) -> str:
        columns = self.columns()
        lines = ["| system | " + " | ".join(HEADERS[c] for c in columns) + " |",
                 "|---|" + "---|" * len(columns)]
        for row in self.rows:
            cells = [_cell(row.get(c)) for c in columns]
            lines.append(f"| {row['system']} | " + " | ".join(cells) + " |")
        queries = {int(row["num_queries"]) for row in self.rows if "num_queries" in row}
        lines.append("")
        lines.append(f"split '{self.split}', {'/'.join(map(str, sorted(queries)))} queries")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def payload(self) -> dict[str, Any]:
        return {"split": self.split, "rows": self.rows, "notes": self.notes}

    def write(self, json_path: Path) -> dict[str, Path]:
        """``json_path`` plus ``.md``, ``.groups.json`` (per coarse group) and ``.png`` beside it."""
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        paths = {"json": json_path, "markdown": json_path.with_suffix(".md"),
                 "groups": json_path.with_suffix(".groups.json"),
                 "chart": json_path.with_suffix(".png")}
        atomic_write_json(paths["json"], self.payload())
        atomic_write_json(paths["groups"], self.groups)
        atomic_write_text(paths["markdown"], self.markdown() + "\n")
        self._chart(paths["chart"])
        return paths

    def _chart(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        columns = [c for c in self.columns() if c != "mrr"]
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns)), 3.6))
        width = 0.8 / max(1, len(self.rows))
        for i, row in enumerate(self.rows):
            values = [row.get(c, math.nan) for c in columns]
            ax.bar(np.arange(len(columns)) + i * width, values, width, label=row["system"])
        ax.set_xticks(np.arange(len(columns)) + width * (len(self.rows) - 1) / 2,
                      [HEADERS[c] for c in columns])
        ax.set_ylim(0, 1)
        ax.set_title(f"afmrl eval: split '{self.split}'")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)

    def log(self, tracker, paths: dict[str, Path] | None = None) -> None:
        """Every number as ``<split>/<system>/<metric>``, plus the table files as artifacts."""
        for row in self.rows:
            tracker.log_metrics({f"{self.split}/{row['system']}/{k}": v for k, v in row.items()
                                 if k != "system"})
        tracker.log_table_json(self.payload(), f"eval/{self.split}_table.json")
        for path in (paths or {}).values():
            tracker.log_artifact(path, "eval")


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"
