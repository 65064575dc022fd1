"""Schema-driven fuzzing of the live HTTP API (Schemathesis against /openapi.json).

Every operation, positive and negative cases (schema examples, boundary coverage incl.
undeclared methods, random fuzzing), once with the bearer token and once without, through the
Ray Serve proxy. All Schemathesis checks must pass: no 5xx, status codes, content types and
bodies (error bodies too) as documented, schema-valid requests accepted and invalid ones
refused, 405 with the right ``Allow``, and no answer slower than the app's own deadline
(``ray.call_timeout_s``). The example count is bounded for CI (``AFMRL_FUZZ_EXAMPLES``, default
8 per operation and mode); ``scripts/fuzz_api.py`` runs a larger budget and prints the totals.
"""
from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode

MAX_EXAMPLES = int(os.environ.get("AFMRL_FUZZ_EXAMPLES", "8"))
REPORT = os.environ.get("AFMRL_FUZZ_REPORT")  # JSON totals per operation and status
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def api_schema(authed_app):
    schema = schemathesis.openapi.from_url(f"{authed_app.url}/openapi.json", timeout=30)
    deadline = authed_app.config.ray.call_timeout_s
    schema.config.update(base_url=authed_app.url, request_timeout=deadline + 5)
    schema.config.generation.update(
        max_examples=MAX_EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        database="none", deterministic=True)
    schema.config.checks.update(included_check_names=["all"], max_response_time=deadline)
    yield schema
    if REPORT:
        Path(REPORT).write_text(json.dumps(dict(sorted(TALLY.items())), indent=1))


@st.composite
def photos(draw, image_format: str) -> bytes:
    """What the schema's image media types mean: a real photo file of any small size."""
    size = draw(st.tuples(st.integers(1, 96), st.integers(1, 96)))
    colour = draw(st.tuples(*[st.integers(0, 255)] * 3))
    encoded = io.BytesIO()
    Image.new("RGB", size, colour).save(encoded, image_format)
    return encoded.getvalue()


for _media_type, _format in (("image/jpeg", "JPEG"), ("image/png", "PNG"),
                             ("image/webp", "WEBP")):
    schemathesis.openapi.media_type(_media_type, photos(_format))


def _tally(mode: str, case, response) -> None:
    TALLY[f"{mode} {case.operation.label} -> {response.status_code}"] += 1


def _fuzz_every_operation(schema, on_response) -> int:
    """Each operation, positive then negative cases, through Hypothesis directly (Schemathesis'
    pytest fixture loader does not run under the installed pytest). Returns the cases sent."""
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck), phases=[Phase.explicit,
                                                                        Phase.generate])
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                nonlocal sent
                sent += 1
                on_response(case)
            try:
                run()
            except Unsatisfiable:
                # An operation with no inputs (GET /healthz) has no invalid form.
                assert mode is GenerationMode.NEGATIVE, operation.label
    return sent


def test_the_api_keeps_its_schema_with_the_token(api_schema, authed_app):
    token = {"Authorization": f"Bearer {authed_app.config.serve.auth_token}"}
    sent = _fuzz_every_operation(
        api_schema, lambda case: _tally("token", case, case.call_and_validate(headers=token)))
    assert sent >= len(list(api_schema.get_all_operations()))


def test_without_the_token_only_open_routes_answer(api_schema):
    def check(case):
        response = case.call_and_validate()
        _tally("no-token", case, response)
        if case.operation.path != "/healthz" and response.status_code < 400:
            pytest.fail(f"{case.operation.label} answered {response.status_code} without a token")

    assert _fuzz_every_operation(api_schema, check) > 0
