"""Evaluation: the tasks of `evals.tasks` (schema in config/eval_tasks.py) run by `runner`:
zero-shot classification, retrieval, few-shot and linear probes over any data source; image and
text embeddings; the shipped class lists (`class_lists/`) and prompt templates; the report,
confusion images and training curves.

It imports `export` (a model SPEC to a loaded model) and the packages below it; `train`,
`curation`, `bench` and `cli` call it, never the reverse (docs/architecture.md).
"""
