"""Curated-data filters: per-example predicates, pre-computed keep-lists and scores, CiT.

`apply_filters(ds, cfg, counters=...)` composes the filters enabled in `data.filters` on a
tf.data.Dataset of single decoded examples; `FilterCounters` exposes kept/dropped counts.
"""

from contrastive_jax.data.schema import default_filters_config
from contrastive_jax.filters.apply import apply_filters, filter_steps, filters_active
from contrastive_jax.filters.counters import FilterCounters

__all__ = ["FilterCounters", "apply_filters", "default_filters_config", "filter_steps",
           "filters_active"]
