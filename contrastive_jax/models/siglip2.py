"""SigLIP 2's training recipe (Tschannen et al. 2025) on the two-tower sigmoid model.

Three terms join the contrastive loss, each with its own switch and weight:
- `locca`: LocCa's captioning task. A decoder cross-attends to the image tower's tokens
  and predicts the caption (teacher-forced, or in parallel for `parallel_fraction` of the
  examples). LocCa's referring-expression and grounded-captioning tasks need boxes, which
  image-text data does not have: they are left out.
- `self_distill`: SILC's local-to-global consistency. The student embeds `local_views`
  random crops and matches, through a prototype head, the EMA teacher's distribution for
  the whole image (the global view: the image the sigmoid loss sees).
- `masked_prediction`: TIPS's masked prediction. The student sees the image with `ratio`
  of its patches replaced by a learned mask token and matches the teacher's per-patch
  distributions at the masked positions.

The last two start at `teacher.start_fraction` of training (the paper's 80%). Until then the
teacher is a copy of the student; from then on it is their EMA. The teacher lives in the
model's non-trained state (`TrainState.rest`, under `teacher`), so the optimizer never sees
it, it gets no gradient, and checkpoints carry it. Exports and evals use the two towers.

Config schema: two_tower's, plus

    locca.{enabled, weight, variant, width, depth, mlp_dim, num_heads, max_len,
           parallel_fraction}
    self_distill.{enabled, weight, local_views, local_scale}
    masked_prediction.{enabled, weight, ratio}
    teacher.{ema, start_fraction, head_dim, head_hidden, student_temp, teacher_temp,
             center_momentum}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from contrastive_jax.errors import ConfigError
from contrastive_jax.losses.captioning import caption_loss, cut_keeping_eos
from contrastive_jax.losses.self_distill import (
    distill_cross_entropy,
    ema,
    local_views,
    patch_mask,
)
from contrastive_jax.models import two_tower
from contrastive_jax.models.decoder import Decoder
from contrastive_jax.models.sizes import resolve_size
from contrastive_jax.models.transformer import parse_dtype
from contrastive_jax.models.two_tower import TwoTower

# The student's parts the teacher mirrors (EMA), and the params exports leave out.
TEACHER_PARTS = ("img", "distill_head", "patch_head")
TRAINING_ONLY = ("decoder", "distill_head", "patch_head", "mask_token")


def default_config() -> ml_collections.ConfigDict:
    """two_tower's schema and the recipe's four groups (defaults: the paper's where it
    states them: 80% start, 50% masked patches)."""
    base = two_tower.default_config().to_dict()
    locca = dict(enabled=True, weight=1.0, variant="mu", width=None, depth=None, mlp_dim=None,
                 num_heads=None, max_len=64, parallel_fraction=0.5)
    # local_size None: the local views are resized to the image size (DINO: 96 of 224 px).
    self_distill = dict(enabled=True, weight=1.0, local_views=8, local_scale=(0.05, 0.4),
                        local_size=None)
    masked = dict(enabled=True, weight=0.25, ratio=0.5)
    teacher = dict(ema=0.999, start_fraction=0.8, head_dim=1024, head_hidden=512,
                   student_temp=0.1, teacher_temp=0.04, center_momentum=0.9)
    return ml_collections.ConfigDict(
        dict(base, name="siglip2", locca=locca, self_distill=self_distill,
             masked_prediction=masked, teacher=teacher), type_safe=False)


class PrototypeHead(nnx.Module):
    """DINO's projection to K prototype logits (MLP, GELU), in float32."""

    def __init__(self, width: int, hidden: int, out: int, param_dtype: Any, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, param_dtype=param_dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, out, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x.astype(jnp.float32))))


class Center(nnx.Variable):
    """The teacher's running mean logits (DINO's centring): state, never trained."""


class Teacher(nnx.Module):
    """The EMA copies of the student's image tower and heads, and their centres."""

    def __init__(self, student: SigLIP2, head_dim: int):
        # Clones: the teacher starts as the student (and stays it until the start).
        self.img = nnx.clone(student.img)
        self.distill_head = _clone(student.distill_head)
        self.patch_head = _clone(student.patch_head)
        self.center = Center(jnp.zeros((head_dim,), jnp.float32))
        self.patch_center = Center(jnp.zeros((head_dim,), jnp.float32))


def _local_size(size: Any, vit: Any) -> tuple[int, int]:
    """`self_distill.local_size` (None, int or (h, w)) as (h, w), multiples of the patch."""
    if size is None:
        return vit.image_size
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or any(not isinstance(s, int) or s <= 0 or s % p
                             for s, p in zip(pair, vit.patch, strict=True)):
        raise ConfigError(f"config key 'model.self_distill.local_size' must be a positive "
                          f"multiple of the patch size {vit.patch} (or None), got {size!r}")
    return pair


def _clone(module: nnx.Module | None) -> nnx.Module | None:
    return None if module is None else nnx.clone(module)


class SigLIP2(TwoTower):
    """Two towers trained by the sigmoid loss plus LocCa, local-to-global self-distillation
    and masked prediction (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any], *, rngs: nnx.Rngs):
        super().__init__(config, rngs=rngs)
        loc, sd = config["locca"], config["self_distill"]
        mp, tc = config["masked_prediction"], config["teacher"]
        pdt = parse_dtype(config["param_dtype"], key="model.param_dtype")
        width = resolve_size(config["image"], tower="image", with_patch=True)["width"]
        self.locca_weight = float(loc["weight"])
        self.parallel_fraction = float(loc["parallel_fraction"]) if loc["enabled"] else 0.0
        self.decoder = None if not loc["enabled"] else Decoder(
            **resolve_size(loc, tower="locca", with_patch=False),
            vocab_size=config["text"]["vocab_size"], max_len=loc["max_len"],
            memory_width=width, dtype=config["dtype"], param_dtype=config["param_dtype"],
            remat=config["remat"], scan_layers=config["scan_layers"], rngs=rngs)
        k = int(tc["head_dim"])
        self.distill_weight = float(sd["weight"]) if sd["enabled"] else 0.0
        self.masked_weight = float(mp["weight"]) if mp["enabled"] else 0.0
        self.local_views, self.local_scale = int(sd["local_views"]), tuple(sd["local_scale"])
        self.local_size = _local_size(sd["local_size"], self.img)
        self.mask_ratio_ssl = float(mp["ratio"])
        self.student_temp, self.teacher_temp = float(tc["student_temp"]), float(tc["teacher_temp"])
        self.ema, self.center_momentum = float(tc["ema"]), float(tc["center_momentum"])
        head = lambda: PrototypeHead(width, int(tc["head_hidden"]), k, pdt, rngs)  # noqa: E731
        self.distill_head = head() if sd["enabled"] else None
        self.patch_head = head() if mp["enabled"] else None
        self.mask_token = nnx.Param(jnp.zeros((width,), pdt)) if mp["enabled"] else None
        self.teacher = Teacher(self, k) if (sd["enabled"] or mp["enabled"]) else None

    def embed_with_tokens(self, images: jax.Array, text: jax.Array,
                          mask_noise: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(zimg, ztxt) as `__call__`, and the image tower's patch tokens [B, N, width]
        (LocCa's decoder reads them), from one pass of the image tower."""
        pooled, tokens = self.img(images, return_tokens=True, mask_noise=mask_noise)
        return self.embed_pooled_image(pooled), self.encode_text(text), tokens

    def recipe_losses(self, images: jax.Array, text: jax.Array, tokens: jax.Array,
                      parallel: jax.Array, distilling: jax.Array, key: jax.Array
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The weighted sum of the enabled terms and their metrics. Keys starting with "_"
        are the teacher's new centre statistics (see `update_teacher`), not metrics."""
        loss, aux = jnp.zeros((), jnp.float32), {}
        if self.decoder is not None:
            # Captions longer than the decoder's max_len are cut, keeping their EOS.
            targets = cut_keeping_eos(text, self.decoder.max_len)
            locca, cap_aux = caption_loss(self.decoder(targets, tokens, parallel), targets)
            loss = loss + self.locca_weight * locca
            aux.update(locca_loss=locca, token_accuracy=cap_aux["token_accuracy"])
        if self.teacher is not None:
            # Before the start, skip the student's extra passes and the teacher entirely.
            ssl, ssl_aux = jax.lax.cond(distilling, self._self_supervised, self._idle,
                                        images, key)
            loss = loss + ssl
            aux.update(ssl_aux)
        return loss, aux

    def _idle(self, images: jax.Array, key: jax.Array) -> tuple[jax.Array, dict]:
        """`_self_supervised`'s outputs, all zero: the cond's branch before the start."""
        del images, key
        k, aux = self.teacher.center[...].shape[0], {}
        if self.distill_head is not None:
            aux.update(distill_loss=jnp.zeros(()), _center=jnp.zeros((k,)))
        if self.patch_head is not None:
            aux.update(masked_loss=jnp.zeros(()), _patch_center=jnp.zeros((k,)))
        return jnp.zeros(()), aux

    def _self_supervised(self, images: jax.Array, key: jax.Array
                         ) -> tuple[jax.Array, dict[str, jax.Array]]:
        teacher = self.teacher
        pooled_t, tokens_t = jax.lax.stop_gradient(teacher.img(images, return_tokens=True))
        loss, aux = jnp.zeros((), jnp.float32), {}
        views_key, mask_key = jax.random.split(key)
        temps = dict(student_temp=self.student_temp, teacher_temp=self.teacher_temp)
        if self.distill_head is not None:
            b, v = images.shape[0], self.local_views
            crops = local_views(views_key, images, v, self.local_scale, self.local_size)
            student = self.distill_head(self.img(crops.reshape(b * v, *crops.shape[2:])))
            target = jax.lax.stop_gradient(teacher.distill_head(pooled_t))
            term = distill_cross_entropy(student.reshape(b, v, -1), target[:, None],
                                         teacher.center[...], **temps)
            loss = loss + self.distill_weight * term
            aux.update(distill_loss=term, _center=jnp.mean(target, axis=0))
        if self.patch_head is not None:
            masked = patch_mask(mask_key, images.shape[0], self.img.num_patches,
                                self.mask_ratio_ssl)
            _, tokens = self.img(images, return_tokens=True, replace=masked,
                                 mask_token=self.mask_token[...])
            target = jax.lax.stop_gradient(teacher.patch_head(tokens_t))
            term = distill_cross_entropy(self.patch_head(tokens), target,
                                         teacher.patch_center[...], weights=masked, **temps)
            loss = loss + self.masked_weight * term
            aux.update(masked_loss=term, _patch_center=jnp.mean(target, axis=(0, 1)))
        return loss, aux


def update_teacher(rest: dict[str, Any], params: dict[str, Any], stats: Mapping[str, Any],
                   distilling: jax.Array, model: Any) -> dict[str, Any]:
    """The state's new `teacher`: before the start a copy of the (updated) student, after
    it `ema * teacher + (1 - ema) * student`, centres moved by `center_momentum` towards
    this step's teacher means. `model`: the SigLIP2 module (its floats)."""
    teacher = dict(rest["teacher"])
    for part in TEACHER_PARTS:
        if part in teacher:
            teacher[part] = jax.tree.map(
                lambda avg, s: jnp.where(distilling, avg, s).astype(s.dtype),
                ema(teacher[part], params[part], model.ema), params[part])
    for name, stat in (("center", "_center"), ("patch_center", "_patch_center")):
        if stat in stats:
            teacher[name] = jnp.where(
                distilling, ema(teacher[name], stats[stat], model.center_momentum),
                teacher[name])
    return {**rest, "teacher": teacher}


def towers_only(model_config: ml_collections.ConfigDict,
                params: Mapping[str, Any]) -> tuple[ml_collections.ConfigDict, dict]:
    """(two_tower config, params) of a SigLIP 2 model: the towers, t and b alone, which is
    what evaluation and every export format read."""
    config = two_tower.default_config()
    for key in config.keys():
        config[key] = model_config[key]
    config.name = "two_tower"
    return config, {k: v for k, v in params.items() if k not in TRAINING_ONLY}
