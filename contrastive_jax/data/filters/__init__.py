"""Per-example filters of the training stream: predicates on single examples, and pre-computed
keep-lists and score tables (written by `curation/`, read here).

`apply_filters(ds, cfg, counters=...)` composes the filters enabled in `data.filters` on a
tf.data.Dataset of single decoded examples; `FilterCounters` exposes kept/dropped counts.
CiT, which selects batches with the model in training, is train/cit.py.
"""

from contrastive_jax.data.filters.apply import apply_filters, filter_steps, filters_active
from contrastive_jax.data.filters.counters import FilterCounters
from contrastive_jax.data.schema import default_filters_config

__all__ = ["FilterCounters", "apply_filters", "default_filters_config", "filter_steps",
           "filters_active"]
