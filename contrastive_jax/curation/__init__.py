"""Offline curation of a training corpus with a trained model: exact and semantic
de-duplication (`dedup`, `kmeans`), CLIP-score and CAT keep-lists (`offline`), over the corpus
a config's sources read (`corpus`).

Drives `contrastive-jax data score` / `data dedup`; writes the keep-lists and score tables that
the per-example filters in `data/filters/` read during training. It restores models
(`checkpoints`) and embeds with `evaluate`, so it sits above both; see docs/architecture.md.
"""
