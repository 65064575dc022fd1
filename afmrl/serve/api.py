"""The HTTP surface of the search app (FastAPI): routes, body limit, auth and error bodies.

Every failure a client can cause is a 4xx with ``{"error": "..."}`` saying what to send
instead; nothing a request carries can produce a 500 or take a replica down. Oversized bodies
are refused by Content-Length and, for chunked or lying uploads, by counting the stream before
anything is parsed. With ``serve.auth_token`` set, every route but the page shell, /healthz
and the API docs needs ``Authorization: Bearer <token>``.
"""
from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Annotated, Any, Callable

from fastapi import Depends, FastAPI, Form, Path as PathParam, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afmrl.data.images import ImageError
from afmrl.index.sharded import ShardUnavailable
from afmrl.serve.schemas import (EmbedRequest, EmbedResponse, ErrorResponse, Health,
                                 ImageSearchForm, IndexInfo, Item, ItemForm, ItemResponse,
                                 ItemUpdate, SearchRequest, SearchResponse, publish_limits)
from afmrl.serve.service import STORED_IMAGE_SIDE, SearchService
from afmrl.serve.validation import ITEM_ID_REGEX, MAX_ITEM_ID_CHARS, ApiError, single_values
from afmrl.utils.ray_utils import RemoteCallTimeout

log = logging.getLogger("ray.serve")

DESCRIPTION = """Fine-grained multimodal product search (AFMRL).

Search by text, by photo, or both; filter on key attributes (exact: results are the best items
that match, never a filtered top-k); let the attribute generator enrich the query (`enrich`).
Edit the catalog live with `PUT`/`DELETE /items/{item_id}` (durable across restarts).
Errors are `{"error": "..."}` with a 4xx status. The search page is at `/`.
"""
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 405, 413, 422, 503, 504)}
# The item id as the schema publishes it (the route matches any text; check_item_id decides).
ItemId = Annotated[str, PathParam(description="Catalog item id ('/'-separated segments).",
                                  json_schema_extra={"pattern": ITEM_ID_REGEX,
                                                     "maxLength": MAX_ITEM_ID_CHARS})]
IMAGE_RESPONSE = {200: {"content": {t: {} for t in ("image/jpeg", "image/png", "image/webp")},
                        "description": "The image file."}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None
                   ) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with a 413.

    The declared Content-Length is checked first; the body is then read (at most max_bytes + one
    chunk) and replayed to the app, so chunked uploads and lying headers are caught before any
    parser runs.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed() -> Message:
            return next(replay, None) or await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body over {self.max_bytes} bytes "
                                       f"(serve.max_body_bytes); send a smaller image")
        await response(scope, receive, send)


OPEN_PATHS = frozenset({"/", "/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                        "/redoc"})
UNAUTHORIZED = ApiError(401, "missing or wrong bearer token: send "
                             "'Authorization: Bearer <serve.auth_token>'",
                        {"WWW-Authenticate": "Bearer"})


def token_matches(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


class TokenGate:
    """ASGI middleware: with a token set, every path but ``OPEN_PATHS`` needs it, checked
    before the body is read or parsed (so a route added later is closed by default and a
    client without the token learns nothing from validation errors)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", "").rstrip("/")) or "/"
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if path not in OPEN_PATHS and not token_matches(header, self.token):
                response = error_response(401, UNAUTHORIZED.message, UNAUTHORIZED.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def bearer_auth(token: str) -> Callable[..., Any]:
    """The route dependency behind TokenGate: it declares the scheme in the OpenAPI schema
    (clients and fuzzers see which routes need the token) and checks again."""
    scheme = HTTPBearer(auto_error=False, description="serve.auth_token")

    async def check(credentials: HTTPAuthorizationCredentials | None = Security(scheme)) -> None:
        if credentials is None or not token_matches(f"Bearer {credentials.credentials}", token):
            raise UNAUTHORIZED
    return check


def _validation_message(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error["loc"] if p not in ("body", "query", "path"))
        parts.append(f"{where or 'body'}: {error['msg']}")
    return "invalid request: " + "; ".join(parts)


def _install_error_handlers(api: FastAPI) -> None:
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    async def invalid(_: Request, error: RequestValidationError | ValidationError
                      ) -> JSONResponse:
        return error_response(422, _validation_message(error.errors()))

    async def bad_image(_: Request, error: ImageError) -> JSONResponse:
        return error_response(400, f"{error}; send a JPEG, PNG or WebP photo")

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 405:  # Allow: every method of every route on this path
            allowed = ", ".join(allowed_methods(api, request.scope))
            return error_response(405, f"{request.method} is not allowed here; use {allowed}",
                                  {"Allow": allowed})
        return error_response(error.status_code, str(error.detail), error.headers)

    async def unavailable(_: Request, error: Exception) -> JSONResponse:
        log.warning("backend unavailable: %s", error)
        return error_response(503, "the index is being reloaded after a failure; retry shortly")

    async def internal(_: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=error)
        return error_response(500, f"internal error ({type(error).__name__}); see the server "
                                   f"log")

    api.add_exception_handler(ApiError, api_error)
    api.add_exception_handler(RequestValidationError, invalid)
    api.add_exception_handler(ValidationError, invalid)
    api.add_exception_handler(ImageError, bad_image)
    api.add_exception_handler(HTTPException, http_error)
    api.add_exception_handler(ShardUnavailable, unavailable)
    api.add_exception_handler(RemoteCallTimeout, unavailable)
    api.add_exception_handler(Exception, internal)


def create_api(service: SearchService, page: Path) -> FastAPI:
    serve = service.config.serve
    api = FastAPI(title="afmrl search", version="1", description=DESCRIPTION, responses=ERRORS)
    if serve.auth_token:  # added first: runs after BodyLimit, before any route
        api.add_middleware(TokenGate, token=serve.auth_token)
    api.add_middleware(BodyLimit, max_bytes=serve.max_body_bytes)
    _install_error_handlers(api)
    auth = [Depends(bearer_auth(serve.auth_token))] if serve.auth_token else []

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @api.get("/", include_in_schema=False)
    async def search_page() -> HTMLResponse:
        return HTMLResponse(page.read_text())

    @api.get("/healthz", response_model=Health, summary="Liveness: the app answers and the "
             "Retriever holds the catalog")
    async def healthz() -> Health:
        return await service.health()

    @api.post("/search", response_model=SearchResponse, dependencies=auth,
              summary="Search by text and/or a server-side image path")
    async def search(body: SearchRequest, request: Request) -> SearchResponse:
        image = service.image_from_path(body.image_path) if body.image_path else None
        return await service.search(body, body.filters, image, root(request))

    @api.post("/search/image", response_model=SearchResponse, dependencies=auth,
              summary="Search by an uploaded photo (multipart), optionally with text")
    async def search_image(form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")],
                           request: Request) -> SearchResponse:
        single_values(await request.form())  # the form FastAPI parsed (cached)
        image = await service.image_from_upload(form.image)
        return await service.search(form, form.filters, image, root(request))

    @api.post("/embed", response_model=EmbedResponse, dependencies=auth,
              summary="The embedding of a text and/or image (as the index was built)")
    async def embed(body: EmbedRequest) -> EmbedResponse:
        return await service.embed(body)

    @api.get("/index/info", response_model=IndexInfo, dependencies=auth,
             summary="Items, dimension, embedder hash and shards of the served index")
    async def index_info() -> IndexInfo:
        return await service.info()

    @api.get("/items/{item_id:path}/image", dependencies=auth, response_class=FileResponse,
             responses=IMAGE_RESPONSE, summary="A catalog item's image")
    async def item_image(item_id: ItemId) -> FileResponse:
        return FileResponse(await service.item_image(item_id))

    @api.get("/items/{item_id:item_id}", response_model=Item, dependencies=auth,
             summary="One catalog item")
    async def get_item(item_id: ItemId, request: Request) -> Item:
        return await service.get_item(item_id, root(request))

    @api.put("/items/{item_id:item_id}", response_model=ItemResponse, dependencies=auth,
             responses={201: {"model": ItemResponse, "description": "Created (a new id)"}},
             summary="Add or replace a catalog item (embedded and indexed live, durable)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/ItemUpdate"}},
                 "multipart/form-data": {"schema": {"$ref": "#/components/schemas/ItemForm"}}}}})
    async def put_item(item_id: ItemId, request: Request) -> JSONResponse:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            fields = ItemForm.model_validate(single_values(form))
            image = await service.image_from_upload(fields.image, STORED_IMAGE_SIDE) \
                if fields.image is not None else None
        else:
            fields = ItemUpdate.model_validate_json(await request.body())
            image = service.image_from_path(fields.image_path, STORED_IMAGE_SIDE) \
                if fields.image_path else None
        result = await service.put_item(item_id, fields, fields.attributes, image,
                                        root(request))
        return JSONResponse(result.model_dump(), status_code=201 if result.created else 200)

    @api.delete("/items/{item_id:item_id}", status_code=204, dependencies=auth,
                summary="Remove a catalog item (durable)")
    async def delete_item(item_id: ItemId) -> None:
        await service.delete_item(item_id)

    # The models only referenced by openapi_extra must be in the schema too.
    _add_schemas(api, serve, service.keys, ItemUpdate, ItemForm)
    return api


def allowed_methods(api: FastAPI, scope: Scope) -> list[str]:
    """The methods of every route whose path matches the request's (the 405's Allow header)."""
    return sorted({method for route in api.router.routes
                   if isinstance(route, Route) and route.methods
                   and route.matches(scope)[0] is not Match.NONE for method in route.methods})


def _add_schemas(api: FastAPI, serve: Any, keys: Any, *models: type) -> None:
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = original()
            for model in models:
                schema["components"]["schemas"][model.__name__] = model.model_json_schema(
                    ref_template="#/components/schemas/{model}")
            api.openapi_schema = publish_limits(schema, serve.max_k, keys,
                                                serve.image_root is not None)
        return api.openapi_schema

    api.openapi = openapi
