"""The input pipeline: ONE stream over training sources (TFDS, TFRecord, webdataset, CSV/JSONL
tables) with exact resume, the per-example filters (`data/filters/`), decoding and
augmentation, tokenizers and their set-up (`tokenizer`, `tokenizer_setup`), caption rendering
(CLIPPO), labelled eval data, and the `data.*` config schema.

It imports only `datasets` and the base modules (`paths`, `registry`, `json_files`, `errors`):
models, losses and everything above read data, never the reverse (docs/architecture.md).
"""
