"""CIT: extract -> AGCL -> RAR -> re-extract with the improved generator -> AGCL again, as one
tracked pipeline (parent MLflow run, child per stage), resumable after a crash at any stage.

  afmrl cit --config configs/local.yaml
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python jobs/x.py` from a checkout

from afmrl.utils.job import parse  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    config, _ = parse(argv, __doc__)
    from afmrl.config import replace
    from afmrl.pipeline import Pipeline, format_results
    from afmrl.plan import join_checked

    config = replace(config, stages=("extract", "train", "rar", "cit"))
    join_checked(config)
    summary = Pipeline(config).run()
    print(format_results(summary))
    print(f"MLflow: {summary['mlflow']} (parent run {summary['parent_run_id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
