"""DiHT's CAT filter: complexity and action of unambiguous captions against hand labels,
text-spotting on images rendered with and without the caption's words, parse failures,
the pipeline's per-reason counters and `data cat`."""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from contrastive_jax.data.filters import cat
from contrastive_jax.data.schema import check_filters_config, default_filters_config
from contrastive_jax.errors import ConfigError, DataError


def _cfg(**kw) -> ml_collections.ConfigDict:
    cfg = default_filters_config().cat
    cfg.update(enabled=True, **kw)
    return cfg


@pytest.fixture(scope="module")
def decide():
    return cat.CatFilter(_cfg())


# (caption, complexity, action): the most attribute + relation edges at one object.
HAND_LABELLED = [
    ("a dress.", 0, False),
    ("a red dress.", 1, False),  # one attribute
    ("the dress is red.", 1, False),  # a copula's complement is an attribute too
    ("a photo of a dog.", 1, False),  # one relation (of), no verb
    ("a black and white picture of a dress.", 3, False),  # 2 attributes + 1 relation
    ("two cats sleep on a sofa.", 2, True),  # "two" + (cats, sleep on, sofa)
    ("a man rides a red bicycle.", 2, True),  # bicycle: "red" + (man, rides, bicycle)
    ("a woman is walking.", 0, True),  # an action without a second object
    ("a centered photo of a dog.", 2, False),  # a participle as an adjective: no action
]


# Participial clauses: the participle joins the noun it modifies to its verb's objects and
# to its prepositions' objects, as a finite verb joins its subject to them.
PARTICIPIAL = [
    ("a dog sleeping on a sofa.", 1, True),  # (dog, sleeping on, sofa)
    ("two boys throwing stones.", 2, True),  # boys: "two" + (boys, throwing, stones)
    ("a woman holding an umbrella.", 1, True),
    ("a man surrounded by dogs.", 1, True),  # a passive participle's agent
    ("a boy throwing a red ball to a dog.", 2, True),  # boy: ball, dog; ball: red, boy
]
# Multi-word prepositions: one relation between the words around them; the noun inside
# ("front", "top") is no object of the scene.
MULTIWORD = [
    ("a dog in front of a house.", 1, False),  # (dog, in front of, house); no "front"
    ("a cat on top of a table.", 1, False),
    ("a dog next to a car.", 1, False),
    ("a red dress next to a blue shirt.", 2, False),  # dress: red + next to shirt
    ("a man standing next to a car.", 1, True),  # both constructions at once
    ("a man riding a horse in front of a barn.", 2, True),  # man: horse, barn
]


@pytest.mark.parametrize("caption, complexity, action",
                         HAND_LABELLED + PARTICIPIAL + MULTIWORD)
def test_complexity_and_action_agree_with_hand_labels(decide, caption, complexity, action):
    result = decide(caption)
    assert (result.complexity, result.action) == (complexity, action)
    expected = None if complexity >= 1 and action else ("complexity" if complexity < 1
                                                        else "action")
    assert result.reason == expected and result.keep == (expected is None)


# Hand-ordered: each caption adds objects, attributes or relations to the one before, so
# complexity must never fall along a group. Before participles and multi-word
# prepositions were read, it fell in the first three (e.g. 2 -> 1 from "a brown dog on a
# sofa" to "a brown dog sleeping on a red sofa").
GROWING_SCENES = [
    ["a dog.", "a brown dog.", "a brown dog on a sofa.", "a brown dog sleeping on a red sofa.",
     "a small brown dog sleeping on a red sofa next to a cat."],
    ["two boys.", "two boys with stones.", "two boys throwing stones.",
     "two young boys throwing stones into a lake.",
     "two young boys throwing flat stones into a lake next to a wooden boat."],
    ["a house.", "a dog in front of a house.", "a dog sleeping in front of a house.",
     "a brown dog sleeping in front of a red house.",
     "a brown dog sleeping on a mat in front of a red house."],
    ["a man.", "a man with a bicycle.", "a man riding a red bicycle.",
     "a tall man riding a red bicycle in front of a bus.",
     "a tall man in a hat riding a red bicycle in front of a bus on a busy street."],
    ["a table.", "a cat on top of a table.", "a black cat sitting on top of a wooden table.",
     "a black cat sitting on top of a wooden table next to a vase of flowers."],
]


@pytest.mark.parametrize("group", GROWING_SCENES, ids=lambda g: g[1])
def test_complexity_never_falls_as_the_scene_grows(decide, group):
    complexity = [decide(caption).complexity for caption in group]
    assert complexity == sorted(complexity) and complexity[-1] > complexity[1], complexity


@pytest.mark.parametrize("caption", ["", "   ", "...", b"\xff\xfe"])
def test_a_caption_without_words_is_a_parse_failure(decide, caption):
    result = decide(caption)
    assert result.reason == "parse_failure" and not result.keep


def _image(text: str | None, size: int = 224) -> np.ndarray:
    img = Image.new("RGB", (size, size), "white" if text else (120, 140, 160))
    if text:
        ImageDraw.Draw(img).text((10, size // 2 - 16), text, fill="black",
                                 font=ImageFont.load_default(size=28))
    return np.asarray(img)


CAPTION = "a man rides a red bicycle in the park."


def test_text_spotting_drops_images_that_show_the_captions_words(decide):
    assert decide(CAPTION, _image("RED BICYCLE")).reason == "text_spotted"
    plain = decide(CAPTION, _image(None))
    assert plain.keep and plain.text_spotted is False
    other = decide(CAPTION, _image("OPEN 24 HOURS"))  # text, but not the caption's
    assert other.keep and other.text_spotted is False
    assert cat.CatFilter(_cfg(text_spotting=False))(CAPTION, _image("RED BICYCLE")).keep


def test_a_missing_tesseract_is_one_line_with_the_install(decide, monkeypatch):
    monkeypatch.setattr(cat.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="apt-get install tesseract-ocr") as e:
        decide(CAPTION, _image(None))
    assert "\n" not in str(e.value)


def test_the_pipeline_counts_each_reason_and_reads_an_image_once(decide, monkeypatch):
    import tensorflow as tf

    from contrastive_jax.data.filters import FilterCounters, apply_filters

    read, ocr_words = [], cat.ocr_words
    monkeypatch.setattr(cat, "ocr_words", lambda image, n: read.append(1) or ocr_words(image, n))

    rows = [(CAPTION, _image("RED BICYCLE")), (CAPTION, _image(None)), ("a dress.", _image(None)),
            ("a photo of a dog.", _image(None)), ("", _image(None)),
            ("two cats sleep on a sofa.", _image(None))]
    expected = [decide(c, i) for c, i in rows]
    ds = tf.data.Dataset.from_tensor_slices({
        "caption": [c for c, _ in rows], "image": np.stack([i for _, i in rows]),
        "uid": [str(k) for k in range(len(rows))], "label": np.zeros(len(rows), np.int32)})
    filters = default_filters_config()
    filters.cat.enabled = True
    counters = FilterCounters()
    read.clear()
    epochs = apply_filters(ds.repeat(2), filters, counters=counters)  # two epochs
    kept = [ex["uid"].numpy().decode() for ex in epochs]
    assert kept == [str(k) for k, r in enumerate(expected) if r.keep] * 2 == ["1", "5"] * 2
    counts = counters.as_dict()
    assert counts["filters/cat/kept"] == 4 and counts["filters/cat/dropped"] == 8
    assert {r: counts[f"filters/cat/dropped/{r}"] for r in cat.REASONS} == {
        "parse_failure": 2, "complexity": 2, "action": 2, "text_spotted": 2}
    assert len(read) == 3  # the three pairs that reach OCR, once each: decided by uid


def test_data_cat_prints_a_line_per_input_and_a_summary(tmp_path, capsys):
    from contrastive_jax import cli

    Image.fromarray(_image("RED BICYCLE")).save(tmp_path / "sign.png")
    Image.fromarray(_image("DRESS")).save(tmp_path / "dress.png")
    rows = [{"caption": CAPTION, "image": "sign.png"}, {"caption": CAPTION},
            {"caption": "a dress."}, {"caption": "a dress.", "image": "dress.png"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["data", "cat", "--input", str(path)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["keep"] for o in out[:3]] == [False, True, False]
    assert out[0]["text_spotted"] is True and out[1]["text_spotted"] is None
    assert out[2] == {"line": 3, "complexity": 0, "action": False, "text_spotted": None,
                      "keep": False, "reason": "complexity"}
    # Every check is reported although complexity already drops the pair; the reason
    # and the counts stay the first check's, as in the pipeline.
    assert out[3] == {"line": 4, "complexity": 0, "action": False, "text_spotted": True,
                      "keep": False, "reason": "complexity"}
    assert out[4]["summary"] == {"lines": 4, "kept": 1, "dropped": 3,
                                 "dropped/parse_failure": 0, "dropped/complexity": 2,
                                 "dropped/action": 0, "dropped/text_spotted": 1}
    path.write_text('{"caption": "a dog", "image": "missing.png"}\n')
    assert cli.main(["data", "cat", "--input", str(path)]) == 2
    assert "missing.png is not readable" in capsys.readouterr().err


def test_bad_thresholds_are_one_line_errors():
    filters = default_filters_config()
    filters.cat.update(enabled=True, min_complexity=-1)
    with pytest.raises(ConfigError, match=r"data\.filters\.cat\.min_complexity"):
        check_filters_config(filters)


def test_data_cat_writes_the_keep_list_of_a_configs_training_data(fake_data_dir, tmp_path,
                                                                   capsys):
    from contrastive_jax import cli

    out = tmp_path / "cat_keep.txt"
    argv = ["data", "cat", "--config", "configs/demo_siglip.py", "--keep-list", str(out),
            f"--config.data.data_dir={fake_data_dir}"]
    assert cli.main(argv) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    kept = out.read_text().split()
    assert summary["kept"] == len(kept) > 0 and len(set(kept)) == len(kept)
    assert summary["examples"] == summary["kept"] + sum(
        summary[f"dropped/{r}"] for r in cat.REASONS) and summary["dropped/action"] > 0
    with pytest.raises(SystemExit, match="needs --config"):  # the data is the config's
        cli.main(["data", "cat", "--keep-list", str(out)])
