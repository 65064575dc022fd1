"""What every job shares: argument parsing, the version check, Ray start-up and MLflow runs.

A job is ``main(argv)``: parse ``--config`` + dotted overrides into a validated config, check
versions, then call the library. Nested jobs (the pipeline calling stage jobs) reuse the
pipeline's Ray connection and log into child runs of its MLflow run.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Iterator, Sequence

from afmrl.config import AfmrlConfig, ConfigError, load_config

log = logging.getLogger("afmrl")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides: dotted keys, e.g. train.lr=3e-4 "
                                       "extract.num_actors=2 (see `afmrl config reference`).")
    p.add_argument("--config", default=None,
                   help="YAML config (default: the embedded local profile = configs/local.yaml)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config and exit")
    p.add_argument("--verbose", action="store_true",
                   help="show library logs and warnings (silenced by default)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def parse(argv: Sequence[str] | None, description: str,
          p: argparse.ArgumentParser | None = None) -> tuple[AfmrlConfig, argparse.Namespace]:
    """Parse and validate; a config error exits with status 2 and the actionable message."""
    from afmrl.utils.console import setup_console

    p = p or parser(description)
    args = p.parse_args(argv)
    setup_console(args.verbose)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        p.exit(2, f"config error: {error}\n")
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        sys.exit(0)
    from afmrl.utils.versions import check_versions

    for warning in check_versions():
        log.warning(warning)
    return config, args


@contextlib.contextmanager
def stage_run(config: AfmrlConfig, stage: str) -> Iterator["Tracker"]:
    """An MLflow run for one stage: a child of the active pipeline run, else a top-level run."""
    import mlflow

    from afmrl.tracking import Tracker

    tracker = Tracker(config)
    nested = mlflow.active_run() is not None
    with tracker.run(stage, nested=nested, tags={"afmrl.stage": stage}):
        yield tracker
