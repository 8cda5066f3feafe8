"""The published recipes (configs/recipes/): every one has its published parameter count
within 1%, names the hardware and batch its paper trained on, and `bench recipes` counts FLOPs
the way the published figures do."""

import ast

import jax
import pytest

from contrastive_jax.bench.recipes import recipe_paths, recipe_row, tower_gflops
from contrastive_jax.config import load_config
from contrastive_jax.errors import ConfigError
from contrastive_jax.models.state import ModelDef
from contrastive_jax.plan.topology import parse_target

RECIPES = recipe_paths()


def test_the_recipes_are_the_published_ones():
    names = {path.rsplit("/", 1)[-1][:-3] for path in RECIPES}
    assert names == {"clip_b32", "clip_b16", "clip_l14", "siglip_b16", "siglip_l16",
                     "siglip_so400m14", "lit_b16b", "clippo_b16"}


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_has_its_published_parameter_count(path):
    # Stacked layers (scan) hold the same parameters and trace in a fraction of the time.
    config = load_config(path, ["model.scan_layers=True"])
    params, _ = jax.eval_shape(lambda: ModelDef.init(config.model, jax.random.key(0)))
    count = sum(x.size for x in jax.tree.leaves(params))
    assert count == pytest.approx(config.recipe.params_paper, rel=0.01)


@pytest.mark.parametrize("path", RECIPES)
def test_recipe_names_the_hardware_and_batch_its_paper_trained_on(path):
    """`plan` compiles for `recipe.topology_paper` at `train.batch_size` unless told otherwise:
    the paper's batch must split evenly over that target's chips (and the micro-batches), and
    a recipe whose default batch is another must say how to plan the paper's."""
    config = load_config(path)
    recipe = config.recipe
    assert recipe.hardware_paper and recipe.batch_paper, "recipe.hardware_paper, batch_paper"
    target = parse_target(recipe.topology_paper)
    per_chip, rest = divmod(recipe.batch_paper, target.chips)
    assert rest == 0 and per_chip % config.train.microbatches == 0, (target.name, per_chip)
    with open(path) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert "Trained on:" in doc  # where the hardware and batch were read
    if config.train.batch_size != recipe.batch_paper:
        assert f"--config.train.batch_size={recipe.batch_paper}" in doc


def test_bench_counts_two_flops_per_multiply_add():
    """One more B/32 encoder layer adds what its matmuls cost at 2 FLOPs per multiply-add
    (50 tokens of width 768, MLP 3072), plus < 2% of elementwise work."""
    rows = [recipe_row(load_config("configs/recipes/clip_b32.py",
                                   [f"model.image.depth={d}", f"model.text.depth={d}"]),
                       "clip_b32") for d in (1, 2)]
    n, d, mlp = 50, 768, 3072
    layer = 2 * n * (4 * d * d + 2 * d * mlp) + 2 * 2 * n * n * d
    assert (rows[1]["image_gflops"] - rows[0]["image_gflops"]) * 1e9 == pytest.approx(
        layer, rel=0.02)
    for row in rows:
        assert row["gflops"] == pytest.approx(row["image_gflops"] + row["text_gflops"],
                                              abs=0.011)
        assert row["params"] == row["image_params"] + row["text_params"] + 1  # + t_log
        assert row["gflops_ratio"] == pytest.approx(row["gflops"] / 14.78, abs=1e-3)
        # As run, the class token's query alone goes through the last block: the other 49
        # positions' q and output projections, MLP and attention rows are not computed.
        skipped = 2 * (n - 1) * (2 * d * d + 2 * d * mlp) + 2 * 2 * (n - 1) * n * d
        assert (row["image_gflops"] - row["image_gflops_run"]) * 1e9 == pytest.approx(
            skipped, abs=2e7)
        assert row["text_gflops_run"] < row["text_gflops"]  # the EOS position alone, too


def test_scanned_layers_count_the_work_of_every_layer():
    """XLA's cost analysis counts a scan's body once; the model FLOPs that `plan`'s roofline
    and MFU take must not shrink by the depth when layers are scanned."""
    small = ["model.image.depth=2", "model.text.depth=2"]
    unrolled, scanned = (tower_gflops(load_config("configs/recipes/clip_b32.py",
                                                  [*small, f"model.scan_layers={scan}"]))
                         for scan in (False, True))
    assert scanned == pytest.approx(unrolled, rel=1e-6)
    assert unrolled["image_run"] > 1.0  # one B/32 layer is ~0.7 GFLOPs


def test_a_config_without_published_figures_is_refused():
    with pytest.raises(ConfigError, match="not a recipe.*recipe.params_paper"):
        recipe_row(load_config("configs/demo_siglip.py"), "configs/demo_siglip.py")
