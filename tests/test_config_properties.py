"""Property-based config overrides (Hypothesis): any ``section.key=value`` text either yields a
validated config carrying the value, or a ``ConfigError`` naming the override/key."""
import dataclasses

import pytest
from hypothesis import given, settings, strategies as st

from afmrl.config import ConfigError, load_config, reference

PROPERTY = settings(max_examples=100, deadline=None)
KNOWN_KEYS = [key for key, _, _ in reference()]
YAMLISH = st.sampled_from(["1", "-1", "0", "3e-4", "1e999", ".nan", ".inf", "-.inf", "true",
                           "null", "~", "[1, 2]", "{a: 1}", "[", "{", "'", "!!python/object:os.system",
                           "2020-01-01", "a,b", "", " ", "\x00", "&a [*a]", "*b", ": :"])
VALUE = YAMLISH | st.text(max_size=12)
KEY = st.sampled_from(KNOWN_KEYS) | st.text(alphabet="abcdeirn._", max_size=15)


@PROPERTY
@given(overrides=st.lists(st.tuples(KEY, VALUE), max_size=4))
def test_overrides_validate_or_name_what_is_wrong(overrides):
    texts = [f"{key}={value}" for key, value in overrides]
    try:
        config = load_config(None, texts)
    except ConfigError as error:
        message = str(error)
        assert any(key and key.split(".")[0] in message for key, _ in overrides) or \
            "override" in message or "unknown config key" in message, message
        return
    tree = config.to_dict()
    for key, _ in overrides:  # every accepted override is a real key of the tree
        node = tree
        for part in key.strip().split("."):
            assert part in node
            node = node[part]


@pytest.mark.parametrize("override, message", [
    ("train.lr=[", "override 'train.lr=['"),
    ("data.catalog=!!python/object/apply:os.system ['true']", "override 'data.catalog="),
    ("train.lr=.nan", "train.lr"),
    ("train.epochs=1e999", "expected an integer"),
    ("data=5", "data: expected a mapping"),
    ("data.catalog.x=1", "data.catalog: expected a string"),
    ("train..lr=1", "unknown config key"),
])
def test_bad_overrides_get_a_config_error(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_accepted_values_are_typed():
    config = load_config(None, ["train.lr=3e-4", "extract.attribute_keys=brand,size",
                                "data.max_items=null"])
    assert config.train.lr == 3e-4 and config.extract.attribute_keys == ("brand", "size")
    assert config.data.max_items is None and dataclasses.is_dataclass(config)
