"""The train step: a pure function from (state, batch) to (new state, metrics)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from contrastive_jax.data.schema import NAFLEX_MASK, NAFLEX_PATCHES, NAFLEX_SHAPE
from contrastive_jax.losses import LossFn, loss_from_config
from contrastive_jax.models.naflex import NaFlexImages
from contrastive_jax.models.state import ModelDef, TrainState
from contrastive_jax.objectives import StepSettings, objective_of
from contrastive_jax.objectives.draws import flip_noise, parallel_draw
from contrastive_jax.parallel.mesh import batch_sharding, compiler_options, replicated
from contrastive_jax.train.grad_cache import grad_cache_value_and_grad
from contrastive_jax.train.lock import lock_patterns, merge_params, split_params

__all__ = ["NONFINITE", "StepFn", "flip_noise", "jit_train_step", "make_train_step",
           "parallel_draw", "train_step_from_config"]
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

    What the step trains is the objective of `model_def.name` (objectives/): its loss
    terms of the batch, the batch keys and per-step draws it wants, the options below it
    refuses (ValueError), and its update of the model's other state after the step.

    With a `mesh`, the batch and the embeddings are pinned to the batch axes: with sharded
    params, XLA's propagation could otherwise move activations onto the params' layout.
    `microbatches` > 1 computes the same gradient with GradCache (train/grad_cache.py),
    holding one micro-batch's activations; `mesh` keeps each micro-batch sharded.

    `lock`: regexes of locked param paths (train/lock.py). The gradient is taken with
    respect to the trainable sub-dict only and the optimizer state covers only it; the
    locked params enter as constants, so no backward pass is built for them.
    `cached_image_embeddings`: the batch holds "image_embedding" [B, D] (the locked image
    tower's output, precomputed) instead of "image"; the image tower is not run.
    `masked`: FLIP masking on (the model's `image.mask_ratio`). The mask noise, and every
    draw the objective wants, come from `seed` and the state's step, so a resumed run
    draws exactly as an unbroken one. `distill_from`: the step from which SigLIP 2's
    self-supervised terms run. `mixup` = (probability, image_share, beta): ZeroVL's
    coin-flipping mixup (losses/mixup.py).
    """
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    if cached_image_embeddings and microbatches > 1:
        raise ValueError("cached image embeddings do not combine with microbatches > 1")
    lock = tuple(lock)
    objective = objective_of(model_def.name)
    objective.check_step(microbatches=microbatches, mixup=mixup is not None,
                         cached_image_embeddings=cached_image_embeddings,
                         labels_as_positives=labels_as_positives)

    def split_batch(x: jax.Array) -> jax.Array:
        return x if mesh is None else jax.lax.with_sharding_constraint(x, batch_sharding(mesh))

    settings = StepSettings(model_def, loss_fn, labels_as_positives, cached_image_embeddings,
                            seed, distill_from, mixup, split_batch)
    wanted = objective.batch_keys(settings)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        batch = naflex_images(batch)
        if missing := [k for k in wanted if k not in batch]:
            raise ValueError(f"the {objective.kind} step reads batch keys {wanted}; this "
                             f"batch lacks {missing}")
        size = batch["text"].shape[0]  # cached embeddings come without "image"
        if masked:
            batch = {**batch, "mask_noise": flip_noise(seed, state.step, size,
                                                       model_def.image_patches)}
        batch = {**batch, **objective.example_draws(settings, state.step, size)}
        batch = {k: split_batch(v) for k, v in batch.items()}
        draws = objective.step_draws(settings, state.step)
        trainable, locked = split_params(state.params, lock)
        constant = jax.lax.stop_gradient(locked)

        def loss_of(trainable_params):
            model = model_def.bind(merge_params(trainable_params, constant), state.rest)
            return objective.loss(model, batch, state.step, draws, settings)

        if microbatches > 1:
            labels = batch["label"] if labels_as_positives else None
            (loss, (aux, t, b)), grads = grad_cache_value_and_grad(
                model_def, loss_fn, trainable, state.rest, batch["image"], batch["text"],
                labels, microbatches, mesh, locked=constant, mask_noise=batch.get("mask_noise"))
            aux = {"t": t, "b": b, **aux}
        else:
            (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
        # Statistics for `after_step` ride in aux under "_" names; they are not metrics.
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
        rest = objective.after_step(state.rest, params, stats, state.step, settings)
        rest = state.rest if rest is None else if_finite(rest, state.rest)
        new_state = state.replace(step=state.step + 1, params=params, rest=rest,
                                  opt_state=if_finite(opt_state, state.opt_state))
        return new_state, metrics

    return train_step


def naflex_images(batch: Batch) -> Batch:
    """A NaFlex stream's batch (data/naflex_stream.py: patches, mask, grid shapes) with
    its image as the NaFlexImages the tower reads; any other batch as it is."""
    if NAFLEX_PATCHES not in batch:
        return batch
    rest = {k: v for k, v in batch.items()
            if k not in (NAFLEX_PATCHES, NAFLEX_MASK, NAFLEX_SHAPE)}
    return {**rest, "image": NaFlexImages(batch[NAFLEX_PATCHES], batch[NAFLEX_MASK],
                                          batch[NAFLEX_SHAPE])}


def jit_train_step(step_fn: StepFn, shardings: TrainState, mesh: Mesh) -> StepFn:
    """Compiles the step for the mesh; the old state's buffers are donated to the new one.
    FSDP on TPU compiles without windowed einsum (parallel/mesh.py `compiler_options`)."""
    return jax.jit(
        step_fn,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=0,
        compiler_options=compiler_options(mesh),
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
