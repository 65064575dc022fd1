"""Teacher attributes from catalog metadata and a short distillation run."""
import json

from afmrl.extract.schema import DEFAULT_ATTRIBUTE_KEYS as KEYS
from afmrl.extract.sft import metadata_attributes, sft_generator, teacher_examples


def test_metadata_teacher(mini_catalog):
    row = mini_catalog[mini_catalog["item_id"] == "iconic/Bravo-Apple-Juice"].iloc[0]
    values = metadata_attributes(row)
    assert values["category"] == "juice" and values["brand"] == "bravo"
    assert values["size"] == "2l" and values["flavour"] == "apple"


def test_examples_cover_catalog_items_with_schema_targets(mini_catalog):
    examples = teacher_examples(mini_catalog, KEYS)
    assert len(examples) == 31  # the mini subset has no train photos
    assert all(list(json.loads(e.target)) == list(KEYS) for e in examples)


def test_sft_lowers_the_loss_and_saves_a_loadable_model(mini_catalog, tiny_generator, tmp_path):
    from transformers import AutoModelForImageTextToText

    examples = teacher_examples(mini_catalog, KEYS)[:8]

    class LossRecorder:  # the tracker interface, recording instead of logging
        def __init__(self):
            self.values = []

        def log_metrics(self, metrics, step=None):
            self.values.append(metrics["sft_loss"])

    tracker = LossRecorder()
    out = sft_generator(tiny_generator, tmp_path / "sft", examples, KEYS, steps=30,
                        batch_size=4, lr=3e-3, tracker=tracker)
    assert tracker.values[-1] < 0.5 * tracker.values[0]
    AutoModelForImageTextToText.from_pretrained(str(out))
