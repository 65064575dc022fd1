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
    assert len(examples) == 2 * 31  # the mini subset has no train photos
    assert all(list(json.loads(e.target)) == list(KEYS) for e in examples)


def test_catalog_items_also_teach_the_typed_query_prompt(mini_catalog):
    """A text query is prompted with a title alone (serving's enrich, text-only query rows):
    each catalog item teaches that prompt too, with the target of its full prompt."""
    examples = teacher_examples(mini_catalog, KEYS)
    full = {e.item.title: e.target for e in examples if e.item.image_uri}
    typed = {e.item.title: e.target for e in examples
             if not e.item.image_uri and not e.item.text}
    catalog = mini_catalog[mini_catalog["split"] == "catalog"]
    assert set(typed) == set(full) == set(catalog["title"])
    assert typed == full


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


def test_labels_cover_the_answer_tokens_only(mini_catalog, tiny_generator):
    from afmrl.extract.sft import sft_batch
    from afmrl.models.processor import Prompter, extraction_request

    prompter = Prompter(tiny_generator, image_size=64)
    examples = teacher_examples(mini_catalog, KEYS)
    # A batch mixes prompts with an image and typed (title-only) ones, as SFT's batches do.
    examples = [e for e in examples if e.item.image_uri][:2] + \
        [e for e in examples if not e.item.image_uri][:1]
    inputs = sft_batch(prompter, examples, KEYS)
    image_pad = prompter.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids, labels, mask = inputs["input_ids"], inputs["labels"], inputs["attention_mask"]
    assert (ids == image_pad).sum() > 0
    assert (labels[ids == image_pad] == -100).all()
    for row, example in enumerate(examples):
        prompt = prompter.model_inputs(
            [prompter.chat(extraction_request(example.item, KEYS), bool(example.item.image_uri))],
            [prompter.image(example.item)],
            padding_side="right")["input_ids"][0]
        # The prompt is a prefix of prompt+answer: every prompt token is masked...
        assert ids[row, :len(prompt)].tolist() == prompt.tolist()
        assert (labels[row, :len(prompt)] == -100).all()
        # ...and every real token after it is the answer, trained on with its own id.
        answer = slice(len(prompt), int(mask[row].sum()))
        assert (labels[row, answer] == ids[row, answer]).all()
        assert prompter.tokenizer.decode(ids[row, answer]).startswith(example.target)
        assert (labels[row, int(mask[row].sum()):] == -100).all()  # right padding
