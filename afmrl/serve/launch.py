"""Start the search app on the connected Ray cluster and wait until it answers over HTTP.

Used by ``jobs/serve.py`` and the pipeline's serve stage. ``serve.run`` returns once every
deployment is running; the app is ready for clients only when the HTTP proxy routes to it, so
``launch`` also waits for ``GET /healthz`` (with a deadline: a hang is a bug).
"""
from __future__ import annotations

import logging
import shlex
import time
from pathlib import Path

import requests

from afmrl.config import AfmrlConfig, ServeConfig
from afmrl.layout import RunLayout
from afmrl.serve.config_gen import APP_NAME

log = logging.getLogger("afmrl")


def default_generator(layout: RunLayout) -> Path | None:
    """The best generator a run has: RL-improved (rar), else distilled (sft), else none."""
    return next((p for p in (layout.generator_rar, layout.generator_sft) if p.is_dir()), None)


def base_url(serve: ServeConfig) -> str:
    host = "127.0.0.1" if serve.host in ("0.0.0.0", "::") else serve.host
    return f"http://{host}:{serve.port}"


def wait_healthy(url: str, serve: ServeConfig, timeout_s: float) -> None:
    headers = {"Authorization": f"Bearer {serve.auth_token}"} if serve.auth_token else {}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/healthz", headers=headers, timeout=5)
            if response.ok:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as error:
            last = type(error).__name__
        time.sleep(0.5)
    raise TimeoutError(f"the search app at {url} was not healthy within {timeout_s:g}s "
                       f"({last}); see the Serve logs under the Ray session folder")


def curl_example(url: str, serve: ServeConfig) -> str:
    auth = " -H 'Authorization: Bearer $AFMRL_TOKEN'" if serve.auth_token else ""
    body = shlex.quote('{"text": "apple juice", "k": 5}')
    return f"curl -s -X POST {url}/search -H 'Content-Type: application/json'{auth} -d {body}"


def wait_for_interrupt() -> None:
    """Block until Ctrl-C / SIGTERM, which raise here (``afmrl.utils.console`` handler, put
    back in case a library replaced it)."""
    from afmrl.utils.console import install_interrupt_handler

    install_interrupt_handler()
    while True:
        time.sleep(3600)


def stop_serving(stop_ray: bool) -> None:
    """Shut the search app down and, with ``stop_ray``, the local cluster this process started
    (never other clusters: no `ray stop`)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        serve.shutdown()
    except Exception as error:  # noqa: BLE001 - Serve never started or is already gone
        log.info("search app: %s", type(error).__name__)
    if stop_ray:
        ray.shutdown()


def wait_until_interrupted(stop_ray: bool = False) -> None:
    """Keep the driver (and a local cluster it started) alive until Ctrl-C, then stop Serve."""
    try:
        wait_for_interrupt()
    except KeyboardInterrupt:
        log.info("stopping the search app")
        stop_serving(stop_ray)


def launch(config: AfmrlConfig, index_dir: str | Path, generator_path: str | Path | None,
           blocking: bool) -> str:
    """Deploy the app (replacing a running one of the same name); returns its base URL."""
    import ray.cloudpickle
    from ray import serve

    from serve_apps import search_app as app

    # Replicas import deployment classes by module name, and serve_apps is not an installed
    # package: ship the app module by value so replicas start whatever the driver's cwd.
    ray.cloudpickle.register_pickle_by_value(app)
    serve.start(http_options={"host": config.serve.host, "port": config.serve.port})
    serve.run(app.search_app(config, index_dir, str(generator_path) if generator_path else None),
              name=APP_NAME, route_prefix="/", blocking=False)
    url = base_url(config.serve)
    wait_healthy(url, config.serve, config.ray.call_timeout_s)
    log.info("search app ready at %s", url)
    if blocking:
        wait_until_interrupted()
    return url
