"""Orbax checkpoints of a train state: the `Checkpointer` that saves and resumes a run
(`store`), weights-only restores for evaluation, export and curation, and the checks that a
restore read what was written (`integrity`, `fingerprint`, `array_writes`).

It sits below `train`, `evaluate`, `export` and `curation`, which all restore models, and
above `config` and `models` (a workdir's config and the state's structure); see
docs/architecture.md.
"""
