"""The config groups of the data side and the checks that need no data: `data.*` with its
`filters` and `render` groups, and `train.cit`.

Loading and validating a config imports only this (no TensorFlow), so commands that never
read data, `bench step` on an accelerator host for one, run without the input stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from contrastive_jax.data.unifont import DEFAULT_FONT_PATH, GLYPH_SIZE
from contrastive_jax.errors import ConfigError

# The NaFlex batch's entries (data/naflex_stream.py), named here so that the train step
# reads them without importing the input stack: patches [b, N, p*p*C], mask [b, N], each
# image's patch grid [b, 2], and a flag per image smaller than one patch (enlarged).
NAFLEX_PATCHES, NAFLEX_MASK, NAFLEX_SHAPE = "image_patches", "image_mask", "image_shape"
NAFLEX_ENLARGED = "naflex_enlarged"


# The most patches a budget may hold per position of the model's table: 16 = a resize to
# 4x the table's side, past which the bilinear table is stretched beyond use.
MAX_BUDGET_PER_POSITION = 16


def check_budget(budget: int, key: str = "max_num_patches", grid: int | None = None) -> int:
    """A budget of patches must be a positive int (one patch at least) and, given the
    model's g x g position table, at most 16 g^2 patches."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"{key} must be a positive number of patches, got {budget!r}")
    if grid is not None and budget > MAX_BUDGET_PER_POSITION * grid * grid:
        raise ConfigError(f"{key}={budget} is more than {MAX_BUDGET_PER_POSITION}x the "
                          f"model's {grid}x{grid} position table ({grid * grid} patches)")
    return budget


def token_batch_sizes(budgets: Sequence[int], tokens_per_batch: int, unit: int) -> list[int]:
    """Global images per batch at each budget with token-budget batching: open_clip's rule
    (`NaFlexBatchScheduler`, by timm's `calculate_naflex_batch_size` with rounding "floor"),
    tokens_per_batch / budget rounded down to a multiple of `unit` (what the logical
    streams, the mesh's batch shards and GradCache's micro-batches all divide). A budget
    that leaves no whole unit is a ConfigError (open_clip would take one image)."""
    sizes = [tokens_per_batch // budget // unit * unit for budget in budgets]
    for budget, size in zip(budgets, sizes, strict=True):
        if not size:
            raise ConfigError(f"config key 'data.naflex.tokens_per_batch' "
                              f"({tokens_per_batch}) holds no batch at budget {budget}: "
                              f"batch sizes are multiples of {unit} (the logical streams, "
                              f"batch shards and micro-batches), so it needs at least "
                              f"{budget * unit}")
    return sizes


FILTER_NAMES = ("basic", "dedup", "score", "metaclip", "cat")  # data.filters
KEEP_MODES = ("topk", "threshold")  # train.cit.keep


def default_data_config() -> ml_collections.ConfigDict:
    """Every data key with its default; config validation rejects keys not listed here."""
    return ml_collections.ConfigDict(
        {
            "dataset": "fashion_mnist_captions",  # TFDS name
            "data_dir": None,  # None -> TFDS default (~/tensorflow_datasets)
            "train_split": "train",
            "eval_split": "test",
            "image_key": "image",
            "text_key": "caption",
            "label_key": "label",  # None or "" -> labels are -1
            "image_size": 28,  # resized when the stored size differs
            "value_range": (-1.0, 1.0),
            "flip": False,  # random horizontal flip (train only)
            "shuffle_buffer": 10_000,  # per logical stream
            # The global example order's logical streams (data/order.py): a run resumes
            # exactly on any process count dividing it. 0: 64, or the largest power of two
            # dividing a smaller batch.
            "logical_streams": 0,
            "max_len": 16,  # text tokens per caption, EOS included
            # True / "unicode", "ascii" (A-Z only: big_vision's tf.strings.lower) or False.
            "lowercase": True,
            # How ids fill max_len (data/text_conventions.py). eos: "sticky" keeps EOS last
            # when truncating, "yes" appends it before truncating, "none" adds none.
            # pad_id != 0 needs model.text.pool="final" (big_vision's SigLIP: pad 1 = EOS).
            "pad_id": 0,
            "eos": "sticky",
            "tokenizer": {"path": None, "vocab_size": 1000},  # path None -> train on captions
            # Non-empty: train on these sources instead of `dataset` (see data/sources.py),
            # e.g. ({"kind": "tfrecord", "pattern": "/data/shards/*.tfrecord", "weight": 1},).
            "sources": (),
            # ZeroVL's debiased sampling: each batch comes whole from one source, drawn by
            # weight, so a batch's negatives share one dataset's biases (Cui et al. 2022).
            "debiased_sampling": False,
            "channels": 3,  # sources: decoded image channels
            "cycle_length": 16,  # sources: files read in parallel (interleaved)
            # sources: augmentations (Fini et al. 2023, "Improved baselines for VLP").
            "augment": {
                "inception_crop": False,
                "crop_area": (0.05, 1.0),  # fraction of the image a crop covers
                "crop_aspect": (3 / 4, 4 / 3),
                "color_jitter": 0.0,  # SimCLR strength; 0 disables
                "grayscale": 0.0,  # probability
                "word_deletion": 0.0,  # EDA: probability of dropping each word
                "word_swaps": 0,  # EDA: random word swaps per caption
            },
            "filters": default_filters_config(),  # see data/filters/
            "render": default_render_config(),  # CLIPPO: captions rendered as images
            # CatLIP: captions become the ids of their nouns' WordNet synsets
            # (data/synsets.py). path None -> built from the training captions into the
            # workdir; hash "" -> any vocabulary, else it must be this one.
            "synsets": {"enabled": False, "path": None, "hash": "", "min_count": 500,
                        "max_size": 0},
            # NaFlex training (data/naflex_stream.py, needs model.image.naflex=True): each
            # image at its own aspect ratio, patchified to a budget of patches drawn per
            # step from `budgets` by `weights` (default equal). Empty: square images.
            # tokens_per_batch > 0: a step's batch holds tokens_per_batch // budget images.
            "naflex": {"budgets": (), "weights": (), "tokens_per_batch": 0},
        }
    )


def default_filters_config() -> ml_collections.ConfigDict:
    """The `data.filters` group: every filter off by default."""
    return ml_collections.ConfigDict({
        "order": FILTER_NAMES,  # the enabled ones run in this order
        "basic": {
            "enabled": False,
            # 0 disables a bound.
            "min_words": 0, "max_words": 0, "min_chars": 0, "max_chars": 0,
            "min_image_side": 0, "max_aspect_ratio": 0.0,  # long side / short side
            "languages": (),  # py3langid codes, e.g. ("en",); empty: no language check
        },
        # Keep-lists written by `contrastive-jax data dedup`; an example must be in all.
        "dedup": {"enabled": False, "keep_lists": ()},
        # Score file written by `contrastive-jax data score`: keep score >= threshold, or
        # the top fraction (set exactly one).
        "score": {"enabled": False, "path": "", "threshold": None, "top_fraction": None},
        "metaclip": {
            "enabled": False,
            "entries_file": "",  # one entry per line; "" -> the dataset's class names
            "t": 20_000,  # per-entry cap of the balancing
            "counts_path": "",  # entry-count json, written by the first run; "" -> recount
            "lowercase": False,
        },
        # DiHT's Complexity, Action, Text-spotting filter (data/filters/cat.py): the paper's C1,
        # action required, OCR'd words of >= 3 characters matched against the caption.
        "cat": {"enabled": False, "min_complexity": 1, "require_action": True,
                "text_spotting": True, "min_text_chars": 3},
    })


def check_basic_bounds(cfg: ml_collections.ConfigDict) -> None:
    """The `data.filters.basic` bounds: 0 disables one, negatives are errors."""
    for key in ("min_words", "max_words", "min_chars", "max_chars", "min_image_side",
                "max_aspect_ratio"):
        if cfg[key] < 0:
            raise ConfigError(f"config key 'data.filters.basic.{key}' must be >= 0")
    if cfg.max_aspect_ratio and cfg.max_aspect_ratio < 1:
        raise ConfigError("config key 'data.filters.basic.max_aspect_ratio' must be >= 1 "
                          "(0 disables it)")


def filter_order(cfg: ml_collections.ConfigDict) -> list[str]:
    """`data.filters.order`, checked against the filters and the enabled ones."""
    order = list(cfg.order)
    unknown = [name for name in order if name not in FILTER_NAMES]
    if unknown or len(set(order)) != len(order):
        raise ConfigError(f"config key 'data.filters.order' must list distinct filters of "
                          f"{', '.join(FILTER_NAMES)}; got {order}")
    missing = [name for name in FILTER_NAMES if cfg[name].enabled and name not in order]
    if missing:
        raise ConfigError(f"config key 'data.filters.order' lacks enabled filter(s) {missing}")
    return order


def check_filters_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks the `data.filters` keys that need no file; ConfigError names the key."""
    filter_order(cfg)
    if cfg.basic.enabled:
        check_basic_bounds(cfg.basic)
    score = cfg.score
    if score.enabled and (score.threshold is None) == (score.top_fraction is None):
        raise ConfigError("config group 'data.filters.score' needs exactly one of 'threshold' "
                          "and 'top_fraction'")
    if cfg.metaclip.enabled and cfg.metaclip.t <= 0:
        raise ConfigError("config key 'data.filters.metaclip.t' must be positive")
    for key in ("min_complexity", "min_text_chars"):
        value = cfg.cat[key]
        if cfg.cat.enabled and (not isinstance(value, int) or isinstance(value, bool)
                                or value < 0):
            raise ConfigError(f"config key 'data.filters.cat.{key}' must be an integer >= 0")


def default_render_config() -> ml_collections.ConfigDict:
    """`data.render`: captions become images of the data's image size (CLIPPO)."""
    return ml_collections.ConfigDict(dict(
        enabled=False,  # True: the batch's "text" is a rendered image, not token ids
        font_path=DEFAULT_FONT_PATH,  # GNU Unifont .hex (Debian/Ubuntu package `unifont`)
        font_size=16,  # glyph height in px: 16 / k (k = 1, 2, 4, 8, 16) or a multiple of 16
        max_lines=0,  # 0: as many as fit
        foreground=0,  # ink intensity, 0..255 (CLIPPO: black text ...)
        background=255,  # ... on white)
        channels=1,  # the grey rendering is repeated over this many channels
        text_pair_fraction=0.0,  # share of training pairs made text/text (see pipeline)
    ))


def canvas_scale(image_size: int, font_size: int) -> tuple[int, int, int]:
    """(native canvas side, downscale factor, upscale factor) for a square image."""
    if font_size <= 0:
        raise ConfigError(f"config key 'data.render.font_size' must be positive, got "
                          f"{font_size}")
    if font_size < GLYPH_SIZE:
        down = GLYPH_SIZE // font_size
        if GLYPH_SIZE % font_size:
            raise ConfigError(f"config key 'data.render.font_size': font_size {font_size} must "
                              "divide 16 or be a multiple of 16")
        return image_size * down, down, 1
    up = font_size // GLYPH_SIZE
    if font_size % GLYPH_SIZE or image_size % up:
        raise ConfigError(f"config key 'data.render.font_size': font_size {font_size} must "
                          f"divide 16 or be a multiple of 16 that divides 16 * image_size "
                          f"({image_size})")
    return image_size // up, 1, up


def default_cit_config() -> ml_collections.ConfigDict:
    """The `train.cit` group."""
    return ml_collections.ConfigDict({
        "enabled": False,
        "oversample": 4,  # k: candidates per step = k * train.batch_size
        "keep": "topk",  # or "threshold"
        "threshold": 0.0,  # "threshold" mode: cosine a candidate needs to pass
        "refresh_every": 100,  # steps between recomputing the metadata embeddings
        "metadata": "",  # file, one entry per line; "" -> class names of data.dataset
    })


def check_cit_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks the `train.cit` keys; ConfigError names the key."""
    if cfg.keep not in KEEP_MODES:
        raise ConfigError(f"config key 'train.cit.keep' must be one of {KEEP_MODES}, "
                          f"got {cfg.keep!r}")
    if cfg.oversample < 1 or cfg.refresh_every < 1:
        raise ConfigError("config keys 'train.cit.oversample' and 'train.cit.refresh_every' "
                          "must be >= 1")
