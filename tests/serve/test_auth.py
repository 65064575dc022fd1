"""With ``serve.auth_token`` set, every route but the open ones needs the bearer token, tested
through the Ray Serve proxy (real HTTP) on every route the app has.

The routes come from the app itself, so a route added without auth (or without a request here
that exercises it) fails ``test_every_route_needs_the_token``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import requests

from afmrl.serve.api import create_api
from afmrl.serve.catalog import IndexSource
from afmrl.serve.service import SearchService

OPEN_ROUTES = {("GET", "/"), ("GET", "/healthz"), ("GET", "/openapi.json"), ("GET", "/docs"),
               ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc")}
ITEM = "auth-test/item"


def app_routes(config) -> set[tuple[str, str]]:
    """(method, path) of every route of the app as create_api builds it for ``config``."""
    service = SearchService(None, None, None, IndexSource(Path("."), Path("."), "hash", 8), config)
    api = create_api(service, Path(__file__))
    return {(method, route.path_format) for route in api.routes
            for method in (getattr(route, "methods", None) or ()) if method != "HEAD"}


def requests_by_route(app) -> dict[tuple[str, str], dict]:
    """One request per route that succeeds with the token (PUT comes before DELETE)."""
    photo = (app.image_root / "apple.jpg").read_bytes()
    return {
        ("POST", "/search"): {"json": {"text": "apple juice", "k": 3}},
        ("POST", "/search/image"): {"files": {"image": ("a.jpg", photo)}, "data": {"k": "3"}},
        ("POST", "/embed"): {"json": {"text": "apple juice"}},
        ("GET", "/index/info"): {},
        ("GET", "/items/{item_id}"): {"path": "/items/iconic/Bravo-Apple-Juice"},
        ("GET", "/items/{item_id}/image"): {"path": "/items/iconic/Bravo-Apple-Juice/image"},
        ("PUT", "/items/{item_id}"): {"path": f"/items/{ITEM}", "json": {"title": "Auth item"}},
        ("DELETE", "/items/{item_id}"): {"path": f"/items/{ITEM}"},
    }


def send(app, method: str, path: str, headers: dict, spec: dict) -> requests.Response:
    kwargs = {k: v for k, v in spec.items() if k != "path"}
    return requests.request(method, app.url + spec.get("path", path), headers=headers,
                            timeout=60, **kwargs)


def test_every_route_needs_the_token(authed_app):
    token = authed_app.config.serve.auth_token
    protected = sorted(app_routes(authed_app.config) - OPEN_ROUTES,
                       key=lambda r: (r[0] == "DELETE", r))
    sample = requests_by_route(authed_app)
    assert {r for r in protected if r not in sample} == set(), \
        "a new route: add a request for it to requests_by_route (and give it auth)"
    for method, path in protected:
        spec = sample[(method, path)]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                        {"Authorization": f"Bearer {token}x"}):
            refused = send(authed_app, method, path, headers, spec)
            assert refused.status_code == 401, (method, path, headers, refused.text)
            assert refused.json().keys() == {"error"}
            assert refused.headers["www-authenticate"] == "Bearer"
        allowed = send(authed_app, method, path, {"Authorization": f"Bearer {token}"}, spec)
        assert allowed.status_code in (200, 201, 204), (method, path, allowed.text)


@pytest.mark.parametrize("method, path", sorted(OPEN_ROUTES))
def test_only_the_page_health_and_docs_are_open(authed_app, method, path):
    assert requests.request(method, authed_app.url + path, timeout=60).status_code == 200


def test_the_open_app_needs_no_token(live_app):
    """Without serve.auth_token the same routes answer without credentials."""
    assert live_app.config.serve.auth_token is None
    response = requests.post(f"{live_app.url}/search", json={"text": "apple juice", "k": 1},
                             timeout=60)
    assert response.status_code == 200
