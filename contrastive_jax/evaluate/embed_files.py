"""`contrastive-jax embed`: a model's embeddings of image files or lines of text, as .npy.

Rows are L2-normalised float32 (what the towers output), computed in batches sharded over
the mesh. `X.txt` beside `X.npy` lists the inputs in row order: the image paths (sorted)
or the texts. A NaFlex model embeds images at their own aspect ratio within a budget of
patches (`--max-num-patches`; several: one `X@N.npy` each). An image that does not decode
gets no row: it is counted, named in the log and left out of both files.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from contrastive_jax import paths as storage  # `paths`: lists of image files
from contrastive_jax.config.eval_budgets import check_flag, naflex_grid, naflex_patch
from contrastive_jax.data.labelled import data_config_for, image_files, unlabelled_files
from contrastive_jax.errors import DataError, InputNotFoundError
from contrastive_jax.evaluate.embed import batch_images, encode_images, encode_texts

log = logging.getLogger(__name__)


def _bar(total: int, unit: str):
    return tqdm.tqdm(total=total, unit=unit, dynamic_ncols=True,
                     disable=jax.process_index() != 0)


def _write(out: str, rows: np.ndarray, names: list[str]) -> dict[str, Any]:
    if jax.process_index() == 0:  # every process computed the same rows
        array = io.BytesIO()
        np.save(array, rows.astype(np.float32))
        # np.save's own rule: a name without .npy gets it appended.
        storage.write_bytes(out if out.endswith(".npy") else out + ".npy", array.getvalue())
        storage.write_text(_listing(out), "".join(f"{name}\n" for name in names))
    return {"embeddings": out, "inputs": _listing(out), "rows": int(len(rows)),
            "dim": int(rows.shape[1]) if rows.ndim == 2 else 0}


def _listing(out: str) -> str:
    return (out[:-4] if out.endswith(".npy") else out) + ".txt"


def _budget_outputs(model, out: str, budgets: Sequence[int] | None
                    ) -> list[tuple[tuple[int, int] | None, str]]:
    """((patch, budget) or None for square images, output path) per embedding run: one
    file per budget, `X@N.npy`, when several are given."""
    grid = naflex_grid(model.config.model)
    if not budgets:
        return [(None if grid is None else (naflex_patch(model.config.model), grid * grid),
                 out)]
    budgets = check_flag(budgets, model.config.model)
    if len(budgets) == 1:
        return [((naflex_patch(model.config.model), budgets[0]), out)]
    stem = out[:-4] if out.endswith(".npy") else out
    return [((naflex_patch(model.config.model), b), f"{stem}@{b}.npy") for b in budgets]


def embed_images_of(model, pattern: str, out: str, batch_size: int,
                    budgets: Sequence[int] | None = None) -> dict[str, Any]:
    """Embeds the images of a folder or glob (a NaFlex model: at each of `budgets`,
    default its table's size); returns a summary for the CLI's JSON line."""
    paths = image_files(pattern)
    runs = []
    for naflex, path in _budget_outputs(model, out, budgets):
        images = unlabelled_files(paths, data_config_for(model.config, {"kind": "files"}),
                                  f"embed {pattern!r}")
        rows, kept = [], []
        with _bar(len(paths), "img") as bar:
            for batch in images.batches(batch_size, naflex=naflex):
                valid = batch["mask"] > 0
                # The whole padded batch: one compiled shape for every batch, the last too.
                rows.append(encode_images(model.model_def, model.state, batch_images(batch),
                                          model.mesh)[valid])
                kept += [paths[i] for i in batch["index"][valid]]
                bar.update(int(valid.sum()))
        if images.undecodable:
            log.warning("embed: %d images did not decode and have no row (%s, ...)",
                        len(images.undecodable), images.describe(images.undecodable[0]))
        dim_rows = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
        runs.append({**_write(path, dim_rows, kept), "undecodable": len(images.undecodable),
                     **({"max_num_patches": naflex[1]} if naflex else {})})
    return runs[0] if len(runs) == 1 else {"runs": runs}


def read_texts(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, without their line breaks."""
    if not storage.isfile(path):
        raise InputNotFoundError(f"text file not found: {path}")
    try:
        with storage.open_file(path, "r", encoding="utf-8") as f:
            texts = [line.rstrip("\r\n") for line in f if line.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"text file {path} is not UTF-8 (byte {e.start} of a line)") from e
    if not texts:
        raise InputNotFoundError(f"{path} has no text lines")
    return texts


def embed_texts_of(model, path: str, out: str, batch_size: int) -> dict[str, Any]:
    """Embeds each line of a text file, tokenised by the model's recorded conventions."""
    texts = read_texts(path)
    max_len = model.config.data.max_len
    rows = []
    with _bar(len(texts), "text") as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            tokens = model.text_encoder.encode_batch(chunk, max_len)
            rows.append(encode_texts(model.model_def, model.state, tokens, model.mesh))
            bar.update(len(chunk))
    return _write(out, np.concatenate(rows), texts)
