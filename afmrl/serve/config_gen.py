"""The search app's settings: its builder arguments, per-deployment Ray Serve options, and the
generated Serve config file (``serve_apps/serve_config.yaml``).

  python -m afmrl.serve.config_gen --config configs/local.yaml \\
      --generator runs/local/models/generator-rar --out serve_apps/serve_config.yaml
  serve run serve_apps/serve_config.yaml      # from the repository root
  serve deploy <file>                         # a running cluster: generate with --working-dir

Replicas, autoscaling, batching and resources come from ``deployment_options``, which the app
builder applies too, so ``serve run``/``serve deploy`` and ``afmrl serve`` start the same app.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field

from afmrl.config import REPO_ROOT, AfmrlConfig, load_config
from afmrl.layout import RunLayout
from afmrl.utils.device import REPLICA_CPUS, SERVE_SHARD_CPUS as SHARD_CPUS, serve_deployments
from afmrl.utils.io import atomic_write_text
from afmrl.utils.job import parse, parser

APP_NAME = "afmrl-search"
IMPORT_PATH = "serve_apps.search_app:build_app"


def _from_repo(path: str) -> Path:
    """Relative paths resolve against the repository root (like ``run_dir``), whatever the cwd
    of the process that builds the app (a Serve controller has its own)."""
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


class SearchAppArgs(BaseModel):
    """Arguments of ``serve_apps.search_app:build_app`` (the ``args`` of the Serve config)."""
    model_config = ConfigDict(extra="forbid")
    config_path: str | None = Field(None, description="afmrl YAML config (None: local defaults)")
    run_dir: str | None = Field(None, description="Overrides the config's run_dir.")
    index_dir: str | None = Field(None, description="Index folder (None: <run_dir>/index).")
    generator: str | None = Field(None, description="Generator folder for query enrichment "
                                  "(None: no enrichment).")
    overrides: list[str] = Field(default_factory=list, description="Dotted config overrides.")

    def resolve(self) -> tuple[AfmrlConfig, Path, str | None]:
        """(config, index folder, generator folder or None)."""
        overrides = [*self.overrides, *([f"run_dir={self.run_dir}"] if self.run_dir else [])]
        config = load_config(_from_repo(self.config_path) if self.config_path else None,
                             overrides)
        index_dir = _from_repo(self.index_dir) if self.index_dir else RunLayout.of(config).index
        generator = str(_from_repo(self.generator)) if self.generator else None
        return config, index_dir, generator


def deployment_options(config: AfmrlConfig, with_generator: bool) -> dict[str, dict[str, Any]]:
    """Ray Serve options of each deployment; resources from ``afmrl.utils.device``.

    Batched deployments accept 2 x max_batch_size requests at once (a batch only fills from
    requests the replica has accepted) and autoscale on that queue; the batch settings are a
    ``user_config`` so they change without restarting replicas.
    """
    serve = config.serve
    resources = {p.component: p.ray_options() for p in serve_deployments(config, with_generator)}
    batch = serve.max_batch_size
    batching = {"max_batch_size": batch, "batch_wait_timeout_s": serve.batch_wait_timeout_s}

    def options(name: str, max_ongoing: int, target: int, user_config: dict | None = None
                ) -> dict[str, Any]:
        return {"max_ongoing_requests": max_ongoing,
                "autoscaling_config": {"min_replicas": serve.embed_replicas,
                                       "max_replicas": serve.max_replicas,
                                       "target_ongoing_requests": target},
                "ray_actor_options": resources[name],
                **({"user_config": dict(user_config)} if user_config else {})}

    deployments = {"Embedder": options("Embedder", 2 * batch, batch, batching)}
    if with_generator:
        deployments["AttributeGenerator"] = options("AttributeGenerator", 2 * batch, batch,
                                                    batching)
    deployments["Retriever"] = options("Retriever", 32, 8)
    deployments["SearchIngress"] = options("SearchIngress", 64, 16)
    return deployments


def serve_config(config: AfmrlConfig, args: SearchAppArgs, working_dir: str | None = None
                 ) -> dict[str, Any]:
    """The Serve config (the schema ``serve deploy``/``serve run`` and RayService read)."""
    app: dict[str, Any] = {
        "name": APP_NAME, "route_prefix": "/", "import_path": IMPORT_PATH,
        "args": args.model_dump(exclude_none=True),
        "deployments": [{"name": name, **options} for name, options in
                        deployment_options(config, args.generator is not None).items()]}
    if working_dir:
        app["runtime_env"] = {"working_dir": f"local://{Path(working_dir).resolve()}"}
    return {"proxy_location": "EveryNode",
            "http_options": {"host": config.serve.host, "port": config.serve.port},
            "applications": [app]}


def main(argv: Sequence[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--index-dir", default=None, help="index folder (default: <run_dir>/index)")
    p.add_argument("--generator", default=None, help="generator folder (default: none)")
    p.add_argument("--working-dir", default=None,
                   help="repository folder on the cluster's nodes (for `serve deploy`)")
    p.add_argument("--out", default=None, help="write here (default: stdout)")
    config, args = parse(argv, __doc__, p)
    app_args = SearchAppArgs(config_path=args.config, index_dir=args.index_dir,
                             generator=args.generator, overrides=args.overrides)
    text = ("# Generated by afmrl.serve.config_gen (its docstring has the command). Do not edit:\n"
            "# regenerate; tests/serve/test_config_gen.py checks the local profile is in sync.\n"
            + yaml.safe_dump(serve_config(config, app_args, args.working_dir), sort_keys=False))
    if args.out:
        atomic_write_text(args.out, text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
