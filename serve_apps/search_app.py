"""AFMRL product search as a Ray Serve application.

  serve run serve_apps/serve_config.yaml          # from the repository root
  afmrl serve --config configs/local.yaml          # the same app via afmrl.serve.launch

Deployments: ``Embedder`` (dynamic batching), ``AttributeGenerator`` (query enrichment; only
with a generator), ``Retriever`` (sharded FAISS index + items + live-update log) and
``SearchIngress`` (the FastAPI HTTP API and search page). The logic lives in ``afmrl.serve``.
"""
# No `from __future__ import annotations`: Serve validates builder args against the *runtime*
# annotation of build_app (a string annotation would hand it a plain dict).
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ray import serve
from ray.serve import Application

from afmrl.config import AfmrlConfig, ServeConfig
from afmrl.models import embedders
from afmrl.models.embedders import EmbedInput
from afmrl.serve.api import create_api
from afmrl.serve.catalog import Catalog, IndexSource
from afmrl.serve.config_gen import SHARD_CPUS, SearchAppArgs, deployment_options
from afmrl.serve.enrich import query_attributes, query_engine
from afmrl.serve.service import SearchService
from afmrl.utils.device import serve_deployment, torch_device

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
DEFAULT_BATCHING = ServeConfig()


def _set_batching(method: Any, user_config: dict[str, Any]) -> None:
    method.set_max_batch_size(user_config["max_batch_size"])
    method.set_batch_wait_timeout_s(user_config["batch_wait_timeout_s"])


@serve.deployment(name="Embedder")
class Embedder:
    """The embedder of the index (refused if its files changed since the index was built)."""

    def __init__(self, source: IndexSource, config: AfmrlConfig) -> None:
        device = torch_device(serve_deployment(config, "Embedder"))  # before any loading
        self.model = embedders.load_embedder(source.check_embedder(), device)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        _set_batching(self.embed, user_config)

    @serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                 batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s)
    async def embed(self, inputs: list[EmbedInput]) -> list[np.ndarray]:
        return list(embedders.embed(self.model, inputs))


@serve.deployment(name="AttributeGenerator")
class AttributeGenerator:
    """The generator writing a query's attributes (greedy, under the extraction schema)."""

    def __init__(self, generator: str, config: AfmrlConfig) -> None:
        self.engine = query_engine(
            generator, config, str(torch_device(serve_deployment(config, "AttributeGenerator"))))
        self.keys = config.extract.attribute_keys

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        _set_batching(self.attributes, user_config)

    @serve.batch(max_batch_size=DEFAULT_BATCHING.max_batch_size,
                 batch_wait_timeout_s=DEFAULT_BATCHING.batch_wait_timeout_s)
    async def attributes(self, queries: list[tuple[str, Image.Image | None]]
                         ) -> list[dict[str, str]]:
        return query_attributes(self.engine, queries, self.keys)


Retriever = serve.deployment(name="Retriever")(Catalog)


@serve.deployment(name="SearchIngress")
@serve.ingress()
class SearchIngress(SearchService):
    def __serve_build_asgi_app__(self):
        return create_api(self, PAGE)


def search_app(config: AfmrlConfig, index_dir: str | Path, generator: str | None
               ) -> Application:
    """The application graph for an index folder (and an optional generator folder)."""
    source = IndexSource.read(index_dir)
    options = deployment_options(config, generator is not None)
    embedder = Embedder.options(**options["Embedder"]).bind(source, config)
    retriever = Retriever.options(**options["Retriever"]).bind(source.index_dir, config.ray,
                                                               SHARD_CPUS,
                                                               config.serve.update_store,
                                                               config.retrieval)
    attributes = AttributeGenerator.options(**options["AttributeGenerator"]).bind(
        generator, config) if generator else None
    return SearchIngress.options(**options["SearchIngress"]).bind(
        embedder, retriever, attributes, source, config)


def build_app(args: SearchAppArgs) -> Application:
    """The typed application builder named by serve_config.yaml."""
    return search_app(*args.resolve())
