"""Per-filter kept/dropped counters, updated in-graph by tf.data and read by the train loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

Predicate = Callable[[dict[str, tf.Tensor]], tf.Tensor]


class FilterCounters:
    """Holds one pair of int64 tf.Variables per filter; `as_dict()` gives the counts.

    Counts are of examples that reached the filter in this process since the pipeline was
    built (every epoch passes through the filters again, so they keep growing); the train
    loop sums them over processes (`distributed.summed_counters`).
    """

    def __init__(self):
        self._vars: dict[str, tuple[tf.Variable, tf.Variable]] = {}
        self._reasons: dict[str, dict[str, tf.Variable]] = {}

    def pair(self, name: str) -> tuple[tf.Variable, tf.Variable]:
        if name not in self._vars:
            # Created eagerly (outside any tf.data function), then captured as resources.
            with tf.init_scope():
                self._vars[name] = (tf.Variable(0, dtype=tf.int64, trainable=False),
                                    tf.Variable(0, dtype=tf.int64, trainable=False))
        return self._vars[name]

    def counted(self, name: str, predicate: Predicate) -> Predicate:
        """`predicate` that also adds 1 to `name`'s kept or dropped counter."""
        kept, dropped = self.pair(name)

        def wrapped(ex: dict[str, tf.Tensor]) -> tf.Tensor:
            keep = tf.convert_to_tensor(predicate(ex), tf.bool)
            keep = tf.reshape(keep, [])
            one = tf.cast(keep, tf.int64)
            updates = [kept.assign_add(one), dropped.assign_add(1 - one)]
            # Explicit dependency: tf.data could otherwise prune the unused assignments.
            with tf.control_dependencies(updates):
                return tf.identity(keep)

        return wrapped

    def counted_reasons(self, name: str, reasons: Sequence[str],
                        reason_code: Callable[[dict[str, tf.Tensor]], tf.Tensor]) -> Predicate:
        """Keeps examples whose `reason_code` is 0, counting kept / dropped and each drop
        under its reason (code k: `reasons[k - 1]`)."""
        with tf.init_scope():
            by_reason = self._reasons.setdefault(name, {
                r: tf.Variable(0, dtype=tf.int64, trainable=False) for r in reasons})

        def code_is_zero(ex: dict[str, tf.Tensor]) -> tf.Tensor:
            code = tf.reshape(tf.cast(reason_code(ex), tf.int64), [])
            updates = [v.assign_add(tf.cast(tf.equal(code, k + 1), tf.int64))
                       for k, v in enumerate(by_reason.values())]
            with tf.control_dependencies(updates):
                return tf.equal(code, 0)

        return self.counted(name, code_is_zero)

    def as_dict(self) -> dict[str, int]:
        """{"filters/<name>/kept": n, "filters/<name>/dropped": m} for every filter, and
        "filters/<name>/dropped/<reason>" for filters that give reasons."""
        out = {}
        for name, (kept, dropped) in self._vars.items():
            out[f"filters/{name}/kept"] = int(kept.numpy())
            out[f"filters/{name}/dropped"] = int(dropped.numpy())
            for reason, count in self._reasons.get(name, {}).items():
                out[f"filters/{name}/dropped/{reason}"] = int(count.numpy())
        return out
