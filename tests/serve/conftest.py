"""One live search app for the serve tests: Ray, a small real index (mini grocery catalog,
untrained embedder), the tiny generator briefly distilled on the catalog's typed queries, and the
Serve app on a free port, started once for the package and shut down after its last test."""
from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import ray

from afmrl.config import DEFAULT_SHARED_DATA, AfmrlConfig, load_config

GROCERY = DEFAULT_SHARED_DATA / "grocery_store"
APPLE_JUICE = ("dataset/iconic-images-and-descriptions/Packages/Juice/Bravo-Apple-Juice/"
               "Bravo-Apple-Juice_Iconic.jpg")


@dataclass(frozen=True)
class LiveApp:
    url: str
    config: AfmrlConfig
    index_dir: Path
    image_root: Path  # holds apple.jpg, corrupt.jpg and escape.jpg (a symlink out of it)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _image_root(root: Path) -> Path:
    """Request images: a real one, a corrupt one, and a symlink to a real image outside."""
    images = root / "images"
    images.mkdir(parents=True)
    shutil.copy(GROCERY / APPLE_JUICE, images / "apple.jpg")
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    outside = root / "outside.jpg"
    shutil.copy(GROCERY / APPLE_JUICE, outside)
    (images / "escape.jpg").symlink_to(outside)
    return images


@pytest.fixture(scope="package")
def ray_session() -> Iterator[None]:
    """Ray for the serve tests; a cluster another test package already started is reused and
    left to its owner (never `ray stop`: it kills other users' clusters)."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, namespace="afmrl-test-serve")
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="package")
def serve_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="package")
def image_root(serve_root) -> Path:
    return _image_root(serve_root)


@pytest.fixture(scope="package")
def serve_config(serve_root, image_root) -> AfmrlConfig:
    return load_config(None, [
        f"run_dir={serve_root}", "models.text_tower=tiny", "index.num_shards=2",
        "ray.call_timeout_s=60", f"serve.port={_free_port()}",
        "serve.embed_replicas=2", "serve.max_replicas=2", f"serve.image_root={image_root}",
        f"serve.max_body_bytes={2 * 1024 * 1024}"])


@pytest.fixture(scope="package")
def index_dir(ray_session, serve_config, serve_root) -> Path:
    """The sample index (live updates by the app land in its journal)."""
    from afmrl.serve.sample import sample_index

    return sample_index(serve_config, serve_root / "sample")


def typed_query_generator(config: AfmrlConfig, root: Path) -> Path:
    """The tiny generator distilled (about 30 s) on the sample catalog's title-only prompts, the
    prompt a typed query gets: it writes schema-complete JSON with values in the catalog's words
    ("apple juice" -> category juice, about 70 tokens inside the default extract.max_tokens), so
    enrichment has attributes to embed and show. An undistilled one never closes the JSON and
    enrichment yields {}."""
    from afmrl.data import grocery_catalog
    from afmrl.extract.sft import sft_generator, teacher_examples
    from afmrl.models.tiny import build_tiny_generator
    from afmrl.serve.sample import MINI_ITEMS

    keys = config.extract.attribute_keys
    catalog = grocery_catalog(config.data.root, MINI_ITEMS)
    typed = [e for e in teacher_examples(catalog, keys) if not e.item.image_uri
             and not e.item.text]
    return sft_generator(build_tiny_generator(root / "generator-base", seed=0),
                         root / "generator", typed, keys, steps=300,
                         image_size=config.data.image_size)


@pytest.fixture(scope="package")
def live_app(serve_config, index_dir, image_root, serve_root) -> Iterator[LiveApp]:
    from ray import serve

    from afmrl.serve.launch import launch

    generator = typed_query_generator(serve_config, serve_root)
    url = launch(serve_config, index_dir, generator, blocking=False)
    try:
        yield LiveApp(url, serve_config, index_dir, image_root)
    finally:
        serve.shutdown()


POSTGRES_BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL server (Debian's `postgresql` package, which `.ci/run` installs):
    a fresh cluster in a temporary folder on a free port, stopped and deleted afterwards. As
    root it runs as the `postgres` user (the server refuses to run as root)."""
    import os
    import subprocess
    import tempfile

    if not POSTGRES_BINARIES:
        pytest.fail("PostgreSQL is not installed: `apt-get install -y postgresql` (as .ci/run "
                    "does); the live-update tests need a real server")
    bin_dir = POSTGRES_BINARIES[-1]
    as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="afmrl-pg-"))
    if as_server_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_server_user, *args], check=True, capture_output=True, timeout=120)

    pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "afmrl", "-A", "trust", "-E", "UTF8")
    pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
       "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql+psycopg://afmrl@127.0.0.1:{port}/postgres"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


AUTH_TOKEN = "test-token-s3cret"
AUTHED_PREFIX = "/authed"


@pytest.fixture(scope="package")
def authed_app(live_app) -> LiveApp:
    """The live app's backends behind a second ingress that needs ``serve.auth_token``, served
    by the same Serve proxy under /authed: auth is tested over real HTTP without a second index
    or model (the ingress holds handles to the first app's Embedder, Retriever and generator)."""
    import dataclasses

    from ray import serve

    from afmrl.serve.catalog import IndexSource
    from afmrl.serve.config_gen import APP_NAME
    from afmrl.serve.launch import wait_healthy
    from serve_apps.search_app import SearchIngress

    config = dataclasses.replace(live_app.config, serve=dataclasses.replace(
        live_app.config.serve, auth_token=AUTH_TOKEN))
    handles = [serve.get_deployment_handle(name, app_name=APP_NAME)
               for name in ("Embedder", "Retriever", "AttributeGenerator")]
    ingress = SearchIngress.options(num_replicas=1, autoscaling_config=None,
                                    ray_actor_options={"num_cpus": 0})
    serve.run(ingress.bind(*handles, IndexSource.read(live_app.index_dir), config),
              name="afmrl-authed", route_prefix=AUTHED_PREFIX, blocking=False)
    url = live_app.url + AUTHED_PREFIX
    wait_healthy(url, config.serve, config.ray.call_timeout_s)
    return LiveApp(url, config, live_app.index_dir, live_app.image_root)
