"""The train step: a pure function from (state, batch) to (new state, metrics)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from contrastive_jax.losses import LossFn, loss_from_config
from contrastive_jax.losses import mixup as zerovl
from contrastive_jax.models.siglip2 import update_teacher
from contrastive_jax.parallel.mesh import batch_sharding, replicated
from contrastive_jax.train.grad_cache import grad_cache_value_and_grad
from contrastive_jax.train.lock import lock_patterns, merge_params, split_params
from contrastive_jax.train.state import ModelDef, TrainState

Batch = dict[str, jax.Array]
# The step's metric that flags a dropped update (train/nonfinite.py counts them).
NONFINITE = "train/nonfinite"
StepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]


def make_train_step(
    model_def: ModelDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    labels_as_positives: bool = False,
    microbatches: int = 1,
    mesh: Mesh | None = None,
    lock: Sequence[str] = (),
    cached_image_embeddings: bool = False,
    seed: int = 0,
    masked: bool = False,
    distill_from: int = 0,
    mixup: tuple[float, float, float] | None = None,
) -> StepFn:
    """Builds the (unjitted) step. Batch: image [B,H,W,C], text [B,L], label [B].

    With a `mesh`, the batch and the embeddings are pinned to the batch axes: with sharded
    params, XLA's propagation could otherwise move activations onto the params' layout.
    `microbatches` > 1 computes the same gradient with GradCache (train/grad_cache.py),
    holding one micro-batch's activations; `mesh` keeps each micro-batch sharded.

    `lock`: regexes of locked param paths (train/lock.py). The gradient is taken with
    respect to the trainable sub-dict only and the optimizer state covers only it; the
    locked params enter as constants, so no backward pass is built for them.
    `cached_image_embeddings`: the batch holds "image_embedding" [B, D] (the locked image
    tower's output, precomputed) instead of "image"; the image tower is not run.
    `masked`: FLIP masking on (the model's `image.mask_ratio`). The mask noise, and a
    captioner's parallel-prediction draw, come from `seed` and the state's step, so a
    resumed run draws exactly as an unbroken one.

    A captioning model (`model_def.objective`, e.g. CapPa) trains on its own caption loss
    of (image, text), a classifying one (CatLIP) on its synset loss of (image, synset ids
    in "text"); `loss_fn` and t / b are not used then. A SigLIP 2 model adds its
    recipe's terms to the contrastive loss; its self-supervised terms run from step
    `distill_from`, and its EMA teacher (in `state.rest`) is updated after each step.
    `mixup` = (probability, image_share, beta): ZeroVL's coin-flipping mixup
    (losses/mixup.py), drawn from `seed` and the step.
    """
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    if cached_image_embeddings and microbatches > 1:
        raise ValueError("cached image embeddings do not combine with microbatches > 1")
    lock = tuple(lock)
    captioning = model_def.objective == "captioning"
    siglip2 = model_def.objective == "siglip2"
    classifying = model_def.objective == "classification"  # CatLIP: "text" = synset ids
    if (captioning or siglip2 or classifying) and (microbatches > 1 or cached_image_embeddings):
        raise ValueError(f"a {model_def.objective} model takes neither micro-batches nor "
                         "cached images")
    if mixup is not None and (captioning or siglip2 or classifying or microbatches > 1
                              or labels_as_positives or cached_image_embeddings):
        raise ValueError("mixup takes a two-tower contrastive step on images and pairs")

    def split_batch(x: jax.Array) -> jax.Array:
        return x if mesh is None else jax.lax.with_sharding_constraint(x, batch_sharding(mesh))

    def embed(model, batch: Batch) -> tuple[jax.Array, jax.Array]:
        if cached_image_embeddings:
            return batch["image_embedding"], model.encode_text(batch["text"])
        return model(batch["image"], batch["text"], batch.get("mask_noise"))

    def objective(model, batch: Batch, step: jax.Array,
                  mix: jax.Array | None) -> tuple[jax.Array, dict]:
        if captioning:
            return model.caption_loss(batch["image"], batch["text"], batch["parallel"],
                                      batch.get("mask_noise"))
        if classifying:
            return model.classification_loss(batch["image"], batch["text"],
                                             batch.get("mask_noise"))
        if siglip2:
            zimg, ztxt, tokens = model.embed_with_tokens(batch["image"], batch["text"],
                                                         batch.get("mask_noise"))
            zimg, ztxt = split_batch(zimg), split_batch(ztxt)
        elif mix is not None:  # (image alpha, text alpha, target alpha)
            images = zerovl.with_partner(batch["image"], mix[0])
            zimg, ztxt = map(split_batch, model(images, batch["text"], batch.get("mask_noise"),
                                                text_mix=mix[1]))
        else:
            zimg, ztxt = map(split_batch, embed(model, batch))
        t, b = model.temperature(), model.bias()
        labels = batch["label"] if labels_as_positives else None
        if mix is None:
            loss, aux = loss_fn(zimg, ztxt, t, b, labels)
        else:
            loss, aux = zerovl.mixed_loss(loss_fn, zimg, ztxt, t, b, mix[2])
            aux = {**aux, "mixup_alpha": mix[2]}
        aux = {"t": t, "b": b, **aux}
        if siglip2:
            extra, extra_aux = model.recipe_losses(
                batch["image"], batch["text"], tokens, batch["parallel"],
                step >= distill_from, _step_key(seed, _VIEWS_STREAM, step))
            loss, aux = loss + extra, {**aux, **extra_aux}
        return loss, aux

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        size = batch["text"].shape[0]  # cached embeddings come without "image"
        if masked:
            batch = {**batch, "mask_noise": flip_noise(seed, state.step, size,
                                                       model_def.image_patches)}
        if captioning or siglip2:
            batch = {**batch, "parallel": parallel_draw(seed, state.step, size,
                                                        model_def.parallel_fraction)}
        batch = {k: split_batch(v) for k, v in batch.items()}
        mix = None if mixup is None else zerovl.draw(
            _step_key(seed, _MIXUP_STREAM, state.step), *mixup)
        trainable, locked = split_params(state.params, lock)
        constant = jax.lax.stop_gradient(locked)

        def loss_of(trainable_params):
            model = model_def.bind(merge_params(trainable_params, constant), state.rest)
            return objective(model, batch, state.step, mix)

        if microbatches > 1:
            labels = batch["label"] if labels_as_positives else None
            (loss, (aux, t, b)), grads = grad_cache_value_and_grad(
                model_def, loss_fn, trainable, state.rest, batch["image"], batch["text"],
                labels, microbatches, mesh, locked=constant, mask_noise=batch.get("mask_noise"))
            aux = {"t": t, "b": b, **aux}
        else:
            (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        # SigLIP 2's teacher statistics ride in aux under "_" names; they are not metrics.
        stats = {k: aux.pop(k) for k in [k for k in aux if k.startswith("_")]}
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        new_trainable = optax.apply_updates(trainable, updates)
        # Per top-level part (img, txt, heads, t_log, b): which part drives the clip.
        part_norms = {part: optax.global_norm(g) for part, g in grads.items()}
        grad_norm = jnp.sqrt(sum(n * n for n in part_norms.values()))  # the clip's norm
        # A non-finite loss or gradient drops the whole update (params and optimizer
        # state), on device: the state stays finite, so no checkpoint can hold a NaN.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if_finite = functools.partial(jax.tree.map,
                                      lambda new, old: jnp.where(finite, new, old))
        metrics = {
            "train/loss": loss,
            "train/grad_norm": grad_norm,
            **{f"train/grad_norm/{part}": norm for part, norm in part_norms.items()},
            NONFINITE: (~finite).astype(jnp.int32),  # 1: this step's update was dropped
            # t, b, pos_logit, neg_logit, and whatever else the objective reports.
            **{f"train/{name}": value for name, value in aux.items()},
        }
        params = merge_params(if_finite(new_trainable, trainable), locked)
        rest = state.rest
        if siglip2 and "teacher" in rest:
            rest = if_finite(update_teacher(rest, params, stats, state.step >= distill_from,
                                            model_def.abstract), rest)
        new_state = state.replace(step=state.step + 1, params=params, rest=rest,
                                  opt_state=if_finite(opt_state, state.opt_state))
        return new_state, metrics

    return train_step


def _step_key(seed: int, stream: int, step: jax.Array) -> jax.Array:
    # A key of (seed, stream, step) alone: a resumed run draws exactly as an unbroken one.
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), step)


def flip_noise(seed: int, step: jax.Array, batch_size: int, patches: int) -> jax.Array:
    """[B, patches] uniform noise of FLIP's mask at `step`: a function of (seed, step)
    alone, and with partitionable threefry the same numbers on any mesh."""
    return jax.random.uniform(_step_key(seed, _FLIP_STREAM, step), (batch_size, patches))


def parallel_draw(seed: int, step: jax.Array, batch_size: int, fraction: float) -> jax.Array:
    """[B] bool: the examples a captioner predicts in parallel at `step` (CapPa)."""
    return jax.random.uniform(_step_key(seed, _PARALLEL_STREAM, step), (batch_size,)) < fraction


# Keep the step's draws apart from each other and from the init key of the same seed.
_FLIP_STREAM, _PARALLEL_STREAM, _VIEWS_STREAM, _MIXUP_STREAM = 0xF11F, 0xCA99A, 0x5E1F, 0x313C


def jit_train_step(step_fn: StepFn, shardings: TrainState, mesh: Mesh) -> StepFn:
    """Compiles the step for the mesh; the old state's buffers are donated to the new one."""
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
    )


def train_step_from_config(config: ml_collections.ConfigDict, mesh: Mesh,
                           tx: optax.GradientTransformation, shardings: TrainState, *,
                           model_def: ModelDef | None = None, masked: bool = True) -> StepFn:
    """THE config-to-step wiring, for the loop, `bench step` and the tests: the loss of
    `loss.*` (`loss.positives=labels` included), the model of `model`, the LiT locks of
    `train.locked`, `train.microbatches`, `train.embedding_cache`, FLIP's
    `model.image.mask_ratio` (`masked=False`: the unmasked step of `train.unmask_from`),
    SigLIP 2's `model.teacher.start_fraction` of `train.steps`, ZeroVL's `train.mixup`;
    jitted for `mesh` with the state's `shardings`. `model_def`: the caller's ModelDef of
    `config.model`, if any."""
    mask = masked and config.model.image.get("mask_ratio", 0.0) > 0
    teacher = config.model.get("teacher")
    start = 0 if teacher is None else int(round(teacher.start_fraction * config.train.steps))
    mix = config.train.mixup
    mixup = (mix.probability, mix.image_share, mix.beta) if mix.enabled else None
    step = make_train_step(
        ModelDef(config.model) if model_def is None else model_def, tx,
        loss_from_config(config, mesh),
        labels_as_positives=config.loss.positives == "labels",
        microbatches=config.train.microbatches, mesh=mesh,
        lock=lock_patterns(config.train.locked),
        cached_image_embeddings=config.train.embedding_cache.enabled,
        seed=config.seed, masked=mask, distill_from=start, mixup=mixup)
    return jit_train_step(step, shardings, mesh)
