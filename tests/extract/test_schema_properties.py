"""Property-based generator output for the attribute parser (Hypothesis): truncated, nested,
non-string, huge. ``parse_attributes`` never raises; what it cannot keep is named in ``error``
(bounded, so one bad row cannot bloat the table); ``attribute_text`` renders anything."""
import json
import math

from hypothesis import given, settings, strategies as st

from afmrl.extract.schema import (DEFAULT_ATTRIBUTE_KEYS, MAX_ERROR_CHARS, attribute_text,
                                  parse_attributes)

PROPERTY = settings(max_examples=100, deadline=None)
KEYS = DEFAULT_ATTRIBUTE_KEYS
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=60),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=3), max_leaves=8)
OBJECT = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), JSON_VALUE, max_size=12)


def kept_value(value) -> bool:
    return (isinstance(value, (str, int, float)) and not isinstance(value, bool)
            and not (isinstance(value, float) and not math.isfinite(value)))


@PROPERTY
@given(payload=OBJECT)
def test_every_key_is_kept_or_named_in_the_error(payload):
    parsed = parse_attributes(json.dumps(payload), KEYS)
    assert len(parsed.error) <= MAX_ERROR_CHARS
    assert set(parsed.values) <= set(KEYS)
    for key, value in payload.items():
        if key in KEYS and kept_value(value):
            continue  # kept (or deliberately empty: '', 'none', 'unknown')
        assert key not in parsed.values
        assert repr(key) in parsed.error or "more problems" in parsed.error
    assert attribute_text(parsed.values, KEYS).count(": ") == len(parsed.values)


@PROPERTY
@given(payload=OBJECT, cut=st.integers(min_value=0))
def test_truncated_output_never_raises(payload, cut):
    raw = json.dumps(payload)
    raw = raw[:cut % (len(raw) + 1)]
    parsed = parse_attributes(raw, KEYS)
    if raw != json.dumps(payload):
        try:
            json.loads(raw)
        except ValueError:
            assert not parsed.values and parsed.error.startswith("not JSON")
    assert isinstance(attribute_text(raw, KEYS), str)


@PROPERTY
@given(raw=st.text(max_size=200) | st.binary(max_size=50).map(lambda b: b.decode("latin-1")))
def test_any_text_parses_to_a_result(raw):
    parsed = parse_attributes(raw, KEYS)
    assert parsed.ok or parsed.error
    assert isinstance(attribute_text(raw, KEYS), str)


def test_ten_thousand_keys_give_a_bounded_error():
    payload = {f"k{i}": "v" for i in range(10_000)} | {"brand": "acme"}
    parsed = parse_attributes(json.dumps(payload), KEYS)
    assert parsed.values == {"brand": "acme"}
    assert "unknown key 'k0'" in parsed.error and "(+" in parsed.error
    assert len(parsed.error) <= MAX_ERROR_CHARS


def test_deep_nesting_and_non_finite_numbers_are_errors_not_crashes():
    deep = parse_attributes("[" * 100_000 + "]" * 100_000, KEYS)
    assert deep.values == {} and deep.error.startswith("not JSON")
    assert attribute_text("[" * 100_000, KEYS) == ""
    parsed = parse_attributes('{"size": NaN, "brand": Infinity, "colour": 2}', KEYS)
    assert parsed.values == {"colour": "2"}
    assert "'size' is not a finite number" in parsed.error
    nested = parse_attributes('{"brand": {"name": "acme"}}', KEYS)
    assert nested.values == {} and "'brand' is not a string" in nested.error
