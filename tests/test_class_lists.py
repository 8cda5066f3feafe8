"""Shipped class lists and templates: lengths, entries checked against their
sources (CLIP's data/prompts.md, open_clip's zero_shot_metadata.py, clip_benchmark's
en_classnames.json, TFDS), templates, prompt sets, package data and the standard suite."""

import json
import os
import tomllib
from importlib import resources

import pytest

from contrastive_jax.errors import ConfigError
from contrastive_jax.evaluate import class_list_files as bl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENGTHS = {
    "imagenet1k": 1000, "cifar10": 10, "cifar100": 100, "food101": 101,
    "oxford_iiit_pet": 37, "flowers102": 102, "stl10": 10, "sun397": 397, "dtd": 47,
    "eurosat": 10, "gtsrb": 43, "country211": 211, "mnist": 10, "fashion_mnist": 10,
}
# (list, index) -> the name the source has there (in TFDS label order).
ENTRIES = {
    ("imagenet1k", 0): "tench", ("imagenet1k", 1): "goldfish",
    ("imagenet1k", 999): "toilet paper",
    ("cifar10", 0): "airplane", ("cifar10", 9): "truck",
    ("cifar100", 1): "aquarium fish", ("cifar100", 99): "worm",
    # TFDS sorts "cheesecake" before "cheese_plate"; CLIP's list has them the other way.
    ("food101", 0): "apple pie", ("food101", 16): "cheesecake",
    ("food101", 17): "cheese plate", ("food101", 100): "waffles",
    # TFDS (and clip_benchmark) order: the cats and dogs interleaved alphabetically.
    ("oxford_iiit_pet", 0): "Abyssinian", ("oxford_iiit_pet", 1): "American Bulldog",
    ("oxford_iiit_pet", 5): "Bengal", ("oxford_iiit_pet", 36): "Yorkshire Terrier",
    ("flowers102", 0): "pink primrose", ("flowers102", 92): "air plant",
    ("flowers102", 101): "blackberry lily",
    ("stl10", 1): "bird", ("stl10", 7): "monkey",
    ("sun397", 0): "abbey", ("sun397", 206): "jail indoor", ("sun397", 207): "jail cell",
    ("sun397", 396): "youth hostel",
    ("dtd", 0): "banded", ("dtd", 46): "zigzagged",
    ("eurosat", 0): "annual crop land", ("eurosat", 2): "brushland or shrubland",
    ("eurosat", 9): "lake or sea",
    ("gtsrb", 0): "red and white circle 20 kph speed limit",
    ("gtsrb", 42): "white circle with gray strike bar indicating no passing for trucks has "
                   "ended",
    ("country211", 0): "Andorra", ("country211", 1): "United Arab Emirates",
    ("country211", 210): "Zimbabwe",
    ("mnist", 0): "0", ("mnist", 9): "9",
    ("fashion_mnist", 0): "T-shirt/top", ("fashion_mnist", 9): "Ankle boot",
}
TEMPLATES = {  # (list) -> (count, first template)
    "imagenet1k": (80, "a bad photo of a {}."), "cifar10": (18, "a photo of a {}."),
    "cifar100": (18, "a photo of a {}."), "food101": (1, "a photo of {}, a type of food."),
    "oxford_iiit_pet": (1, "a photo of a {}, a type of pet."),
    "flowers102": (1, "a photo of a {}, a type of flower."), "stl10": (2, "a photo of a {}."),
    "sun397": (2, "a photo of a {}."), "dtd": (8, "a photo of a {} texture."),
    "eurosat": (3, "a centered satellite photo of {}."),
    "gtsrb": (3, 'a zoomed in photo of a "{}" traffic sign.'),
    "country211": (5, "a photo i took in {}."), "mnist": (1, 'a photo of the number: "{}".'),
    "fashion_mnist": (80, "a bad photo of a {}."),
}


def test_every_list_has_its_length_and_no_duplicates():
    assert set(bl.CLASS_LISTS) == set(LENGTHS)
    for name, n in LENGTHS.items():
        classes = bl.class_list(name)
        assert isinstance(classes, tuple) and len(classes) == n, name
        assert all(isinstance(c, str) and c for c in classes), name
        repeated = {c for c in classes if classes.count(c) > 1}
        # CLIP's cleaned ImageNet names repeat two (missile/projectile, sunglass/sunglasses).
        assert repeated == ({"missile", "sunglasses"} if name == "imagenet1k" else set()), name
    imagenet = bl.class_list("imagenet1k")
    assert imagenet[657] == imagenet[744] == "missile"
    assert imagenet[836] == imagenet[837] == "sunglasses"


def test_entries_match_their_sources():
    for (name, i), expected in ENTRIES.items():
        assert bl.class_list(name)[i] == expected, (name, i)
    assert bl.class_list("stl10") == ("airplane", "bird", "car", "cat", "deer", "dog", "horse",
                                      "monkey", "ship", "truck")
    assert bl.class_list("mnist") == tuple(str(d) for d in range(10))


def test_templates_have_one_placeholder_and_match_their_sources():
    from contrastive_jax.evaluate.clip_templates import CLIP_80

    for name, (n, first) in TEMPLATES.items():
        templates = bl.list_templates(name)
        assert len(templates) == len(set(templates)) == n and templates[0] == first, name
        for t in templates:
            assert t.count("{}") == 1 and "{c}" not in t, (name, t)
            assert t.format("X").count("X") == 1, (name, t)  # no other braces
    assert bl.list_templates("imagenet1k") == CLIP_80  # OpenAI's 80, two copies agree


def test_each_file_names_its_source_and_the_folder_holds_data_only():
    folder = resources.files("contrastive_jax.evaluate").joinpath("class_lists")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    assert files == sorted(f"{n}.json" for n in LENGTHS)  # no __init__.py: a data folder
    for name in LENGTHS:
        data = json.loads(folder.joinpath(f"{name}.json").read_text(encoding="utf-8"))
        assert set(data) == {"source", "classes", "templates"}, name
        source = bl.list_source(name)
        assert source == data["source"] and ("github.com/" in source
                                             or "tensorflow_datasets" in source), name
    assert "open_clip" in bl.list_source("imagenet1k")
    assert "IMAGENET_CLASSNAMES" in bl.list_source("imagenet1k")
    assert "clip_benchmark" in bl.list_source("oxford_iiit_pet")


def test_json_files_are_package_data():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    data = pyproject["tool"]["setuptools"]["package-data"]
    assert "class_lists/*.json" in data["contrastive_jax.evaluate"]


def test_unknown_list_is_a_config_error_naming_the_key():
    for fn in (bl.class_list, bl.list_templates, bl.list_source):
        with pytest.raises(ConfigError, match=r"config key 'evals.tasks\[\].classes': unknown "
                                              r"class list 'imagenet21k'; known: "
                                              r"imagenet1k"):
            fn("imagenet21k")


def test_every_list_is_a_prompt_set_and_the_old_sets_remain():
    from contrastive_jax.evaluate.prompts import PROMPT_SETS, fill, get_prompts

    for name in LENGTHS:
        assert name in PROMPT_SETS and get_prompts(name) == bl.list_templates(name)
    for old in ("fashion_mnist_heldout", "class_name", "clip_80", "clip_best_7"):
        assert isinstance(get_prompts(old), tuple) and get_prompts(old)
    assert fill(get_prompts("imagenet1k")[0], "ostrich") == "a bad photo of an ostrich."


def test_standard_suite_lists_every_benchmark_with_unique_names():
    from contrastive_jax.config import load_config_file
    from contrastive_jax.evaluate.prompts import PROMPT_SETS

    config = load_config_file(os.path.join(ROOT, "configs", "suite_standard.py"))
    tasks = [dict(t) for t in config.evals.tasks]
    names = [t["name"] for t in tasks]
    assert len(names) == len(set(names)) == len(LENGTHS) + 2
    zeroshot = [t for t in tasks if t["kind"] == "zeroshot"]
    assert {t["classes"] for t in zeroshot} == set(LENGTHS)
    assert all(t["prompts"] in PROMPT_SETS for t in zeroshot)
    assert [t["name"] for t in tasks if t["kind"] == "retrieval"] == ["coco", "flickr30k"]
    try:
        from contrastive_jax.config.eval_tasks import tasks_of
    except ImportError:  # the task schema not there yet
        return
    parsed = tasks_of(config)
    assert [t["name"] for t in parsed] == names


def test_lists_load_once():
    bl.class_list("cifar10")
    hits = bl._load.cache_info().hits
    bl.class_list("cifar10")
    assert bl._load.cache_info().hits == hits + 1
