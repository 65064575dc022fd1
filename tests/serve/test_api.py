"""The search API over real HTTP (Ray Serve proxy -> ingress -> Embedder/Retriever/Generator)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from fastapi.testclient import TestClient

from afmrl.config import load_config
from afmrl.serve.api import create_api
from afmrl.serve.catalog import Catalog, IndexSource
from afmrl.serve.enrich import enriched_text
from afmrl.serve.service import SearchService


def jpeg(app) -> bytes:
    return (app.image_root / "apple.jpg").read_bytes()


def call(app, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, app.url + path, timeout=60, **kwargs)


def search(app, **body) -> requests.Response:
    return call(app, "POST", "/search", json=body)


def ids(response: requests.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["hits"]]


def assert_error(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    return response.json()["error"]


def test_text_search_returns_ranked_items_with_images(live_app):
    response = search(live_app, text="apple juice", k=5)
    body = response.json()
    assert len(ids(response)) == 5
    scores = [hit["score"] for hit in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    # Enriched by default (the app has a generator): the generated attributes join the text.
    keys = live_app.config.extract.attribute_keys
    assert body["query_attributes"]
    assert body["query_text"] == enriched_text("apple juice", body["query_attributes"], keys)
    hit = body["hits"][0]
    assert isinstance(hit["group_id"], int) and hit["title"] and hit["attributes"]
    image = call(live_app, "GET", hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"


def test_filtered_search_equals_filtering_the_full_ranking(live_app):
    total = call(live_app, "GET", "/index/info").json()["items"]
    full = search(live_app, text="orange juice", k=total).json()["hits"]
    assert len(full) == total
    for filters, k in (({"category": "juice"}, 3), ({"colour": "red"}, 2),
                       ({"category": "juice", "flavour": "apple"}, 10),
                       ({"brand": "tropicana"}, 10), ({"colour": "no such colour"}, 5)):
        expected = [h["item_id"] for h in full
                    if all(h["attributes"].get(key) == value for key, value in filters.items())]
        assert ids(search(live_app, text="orange juice", k=k, filters=filters)) == expected[:k]
    # Values are compared normalised, like stored attributes.
    assert ids(search(live_app, text="orange juice", k=3, filters={"category": " JUICE "})) == \
        ids(search(live_app, text="orange juice", k=3, filters={"category": "juice"}))


def test_enrich_embeds_the_query_with_its_generated_attributes(live_app):
    keys = live_app.config.extract.attribute_keys
    by_text = search(live_app, text="apple juice", k=3, enrich=True)
    by_photo = call(live_app, "POST", "/search/image", files={"image": ("a.jpg", jpeg(live_app))},
                    data={"k": "3", "enrich": "true"})
    for response, text in ((by_text, "apple juice"), (by_photo, "")):
        body = response.json()
        assert len(ids(response)) == 3
        assert set(body["query_attributes"]) <= set(keys)
        assert body["query_text"] == enriched_text(text, body["query_attributes"], keys)
    assert by_text.json()["query_attributes"]  # the generator learnt typed queries' prompt


def test_image_search_by_upload_and_by_path(live_app):
    upload = call(live_app, "POST", "/search/image", files={"image": ("a.jpg", jpeg(live_app))},
                  data={"k": "4", "filters": '{"category": "juice"}'})
    assert len(ids(upload)) == 4
    assert all(h["attributes"]["category"] == "juice" for h in upload.json()["hits"])
    by_path = search(live_app, image_path="apple.jpg", k=4, filters={"category": "juice"})
    assert ids(by_path) == ids(upload)  # same pixels, same query


@pytest.mark.parametrize("path", ["../outside.jpg", "escape.jpg", "/etc/passwd", "missing.jpg",
                                  "nul\x00byte.jpg"])
def test_image_paths_outside_the_image_root_are_refused(live_app, path):
    message = assert_error(search(live_app, image_path=path), 404)  # like a missing file
    assert str(live_app.image_root) not in message


def test_corrupt_images_are_client_errors(live_app):
    assert_error(call(live_app, "POST", "/search/image",
                      files={"image": ("x.jpg", b"\x89PNG garbage")}), 400)
    assert_error(search(live_app, image_path="corrupt.jpg"), 400)
    assert_error(call(live_app, "POST", "/search/image", files={"image": ("x.jpg", b"")}), 400)


@pytest.mark.parametrize("body", [
    {"txt": "milk"},                                   # unknown field
    {"text": "milk", "k": 0}, {"text": "milk", "k": 101}, {"text": "milk", "k": "many"},
    {"text": "   "}, {},                                # empty query
    {"text": "milk", "filters": {"shape": "round"}},   # unknown attribute key
    {"text": "milk", "filters": {"colour": " "}},
    {"text": "milk", "filters": ["colour"]},
])
def test_bad_search_requests_are_422(live_app, body):
    assert_error(search(live_app, **body), 422)


def test_bad_multipart_and_json_bodies_are_4xx(live_app):
    assert_error(call(live_app, "POST", "/search", data=b"{not json",
                      headers={"Content-Type": "application/json"}), 422)
    assert_error(call(live_app, "POST", "/search/image", data={"text": "milk"}), 422)
    assert_error(call(live_app, "POST", "/search/image", files={"image": ("a.jpg", jpeg(live_app))},
                      data={"filters": "{oops"}), 422)
    assert_error(call(live_app, "POST", "/search/image", files={"image": ("a.jpg", jpeg(live_app))},
                      data={"bogus": "1"}), 422)
    assert_error(call(live_app, "GET", "/no/such/route"), 404)


def test_oversized_bodies_are_413_by_length_and_by_stream(live_app):
    limit = live_app.config.serve.max_body_bytes
    big = b"\0" * (limit + 1)
    assert_error(call(live_app, "POST", "/search/image", files={"image": ("big.jpg", big)}), 413)

    def chunks():  # chunked transfer: no Content-Length to check
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    assert_error(call(live_app, "POST", "/search", data=chunks(),
                      headers={"Content-Type": "application/json"}), 413)
    assert call(live_app, "GET", "/healthz").json()["status"] == "ok"


def test_put_and_delete_items_live_and_durably(live_app):
    item = {"title": "Violet plum nectar", "text": "A test item.", "group_id": 9001,
            "coarse_group": "Juice", "attributes": {"colour": "Purple", "category": "juice"}}
    created = call(live_app, "PUT", "/items/test/plum-nectar", json=item)
    assert created.status_code == 201 and created.json()["created"]
    assert created.json()["item"]["attributes"] == {"colour": "purple", "category": "juice"}
    replaced = call(live_app, "PUT", "/items/test/plum-nectar", json={**item, "group_id": 9002})
    assert replaced.status_code == 200 and not replaced.json()["created"]
    photo = call(live_app, "PUT", "/items/test/photo-only",
                 files={"image": ("p.jpg", jpeg(live_app))},
                 data={"attributes": '{"colour": "purple"}'})
    assert photo.status_code == 201, photo.text
    image = call(live_app, "GET", photo.json()["item"]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"

    purple = search(live_app, text="plum nectar", k=5, filters={"colour": "purple"})
    assert ids(purple) == ["test/plum-nectar", "test/photo-only"]
    assert purple.json()["hits"][0]["group_id"] == 9002
    assert call(live_app, "GET", "/items/test/plum-nectar").json()["title"] == item["title"]

    # What a new replica loads (0-CPU shards: the running app holds the cluster's CPUs).
    restarted = Catalog(live_app.index_dir, live_app.config.ray, shard_cpus=0)
    try:
        assert restarted.get("test/plum-nectar")["group_id"] == 9002
        assert restarted.get("test/photo-only")["image_uri"]
    finally:
        restarted.index.shutdown()

    assert call(live_app, "DELETE", "/items/test/plum-nectar").status_code == 204
    assert_error(call(live_app, "DELETE", "/items/test/plum-nectar"), 404)
    assert_error(call(live_app, "GET", "/items/test/plum-nectar"), 404)
    assert ids(search(live_app, text="plum nectar", k=5, filters={"colour": "purple"})) == \
        ["test/photo-only"]
    restarted = Catalog(live_app.index_dir, live_app.config.ray, shard_cpus=0)
    try:
        assert restarted.get("test/plum-nectar") is None
    finally:
        restarted.index.shutdown()


@pytest.mark.parametrize("path, body, status", [
    ("/items/bad%20id", {"title": "x"}, 422),
    ("/items/a/image", {"title": "x"}, 405),                 # the image URL: GET only
    ("/items/ok", {"title": ""}, 422),                       # neither title nor image
    ("/items/ok", {"title": "x", "attributes": {"shape": "round"}}, 422),
    ("/items/ok", {"title": "x", "price": 3}, 422),
    ("/items/ok", {"title": "x", "image_path": "escape.jpg"}, 404),
    ("/items/ok", {"title": "x", "image_path": "corrupt.jpg"}, 400),
])
def test_bad_item_updates_are_refused(live_app, path, body, status):
    assert_error(call(live_app, "PUT", path, json=body), status)


def test_item_images_are_only_catalog_images(live_app):
    assert call(live_app, "GET", "/items/iconic/Bravo-Apple-Juice/image").status_code == 200
    assert_error(call(live_app, "GET", "/items/etc/passwd/image"), 404)
    assert_error(call(live_app, "GET", f"/items/{live_app.image_root}/apple.jpg/image"), 404)


def test_embed_matches_the_index(live_app):
    info = call(live_app, "GET", "/index/info").json()
    body = call(live_app, "POST", "/embed", json={"text": "apple juice",
                                                  "image_path": "apple.jpg"}).json()
    assert body["dim"] == info["dim"] == len(body["embedding"])
    assert body["model_hash"] == info["model_hash"]
    assert np.linalg.norm(body["embedding"]) == pytest.approx(1.0, abs=1e-4)
    assert_error(call(live_app, "POST", "/embed", json={"text": ""}), 422)


def test_index_info_health_and_docs(live_app):
    info = call(live_app, "GET", "/index/info").json()
    assert len(info["shards"]) == live_app.config.index.num_shards
    assert sum(s["items"] for s in info["shards"]) == info["items"]
    assert call(live_app, "GET", "/healthz").json() == {"status": "ok", "items": info["items"]}
    paths = call(live_app, "GET", "/openapi.json").json()["paths"]
    assert {"/search", "/search/image", "/embed", "/items/{item_id}", "/items/{item_id}/image",
            "/index/info", "/healthz"} <= set(paths)
    assert set(paths["/items/{item_id}"]["put"]["requestBody"]["content"]) == \
        {"application/json", "multipart/form-data"}
    assert call(live_app, "GET", "/docs").status_code == 200


def test_bearer_token_guards_every_data_route():
    """The auth dependency rejects before any backend is called, so no Ray is needed."""
    config = load_config(None, ["serve.auth_token=s3cret"])
    service = SearchService(None, None, None, IndexSource(Path("."), Path("."), "hash", 8), config)
    client = TestClient(create_api(service, Path(__file__)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response = client.post("/search", json={"text": "milk"}, headers=headers)
        assert response.status_code == 401 and "error" in response.json()
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/index/info", headers=headers).status_code == 401
        assert client.delete("/items/x", headers=headers).status_code == 401
    authorised = client.post("/search", json={"text": "milk", "k": 0},
                             headers={"Authorization": "Bearer s3cret"})
    assert authorised.status_code == 422  # past auth, stopped by validation
    assert client.get("/").status_code == 200


def test_a_text_only_index_refuses_photos_with_a_reason(model_cache, tmp_path):
    """The embedder of a text-only catalog has no image tower: a photo query is a 400 that
    says so, before any backend is called (no Ray needed), and text still gets past it."""
    import io

    from PIL import Image

    from afmrl.models.embedders import build_embedder, save_embedder

    config = load_config(None, ["models.text_tower=tiny"])
    embedder = save_embedder(build_embedder(config.models, model_cache, with_images=False),
                             tmp_path / "embedder")
    service = SearchService(None, None, None, IndexSource(tmp_path, embedder, "hash", 8), config)
    client = TestClient(create_api(service, Path(__file__)), raise_server_exceptions=False)
    photo = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(photo, "JPEG")
    for response in (client.post("/search/image", files={"image": ("a.jpg", photo.getvalue())}),
                     client.put("/items/new", files={"image": ("a.jpg", photo.getvalue())},
                                 data={"title": "red"})):
        assert response.status_code == 400, response.text
        assert "no image tower" in response.json()["error"]
    # Text passes the check and reaches the (absent) backend: a 500, not the image refusal.
    text = client.post("/search", json={"text": "milk"})
    assert "no image tower" not in text.text
