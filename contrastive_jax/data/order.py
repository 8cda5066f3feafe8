"""The global example order: L logical streams laid side by side in every global batch.

The data is split into `data.logical_streams` = L logical streams. Logical stream s is the
stream data/stream.py builds for "part s of L" (its files `files[s::L]`, a TFDS split's
s-th even part), with its own shuffle, mixture position and augmentation keys. Global
batch n of B examples is the concatenation, in stream order, of each stream's examples
[n * B/L, (n + 1) * B/L): row r comes from stream r // (B/L), at that stream's position
n * B/L + r % (B/L). None of this depends on the number of processes.

Process p of P (P dividing L) serves the L/P consecutive streams [p * L/P, (p + 1) * L/P);
its rows of the global batch are then exactly the contiguous block of B/P rows that
`jax.make_array_from_process_local_data` gives process p, so the global jax.Array is the
same, bit for bit, on every process count that divides L. A checkpoint records L and every
stream's position; a resume on a count that does not divide L is refused in one line.
`data.shuffle_buffer` is shared out over the L streams (`stream_shuffle_buffer`), so the
shuffle memory of a process shrinks with its share of the streams rather than growing
with L.

`data.logical_streams` = 0 (the default) means DEFAULT = 64, or for a global batch that
64 does not divide, the largest power of two that divides it (`resolve`): a run's order is
then a function of its config, seed and data on any process count that divides 64, which
is 1 to 64 hosts. A process serving several streams traces its pipeline once for all of
them (data/stream.py), and a source with fewer files than L shares each file between
streams (data/units.py), so the default costs a one-process run nothing measurable
(docs/benchmarks.md). A process count that does not divide 64 (3 hosts) gets L = 64 * P
capped by the batch, fixed by the first checkpoint. A checkpoint written before this
default (one stream per process) records its own L, which its resume keeps.
"""

from __future__ import annotations

import math

from contrastive_jax.errors import ConfigError

KEY = "data.logical_streams"
DEFAULT = 64  # divides every power-of-two host count up to 64


def resolve(configured: int, examples: int, process_count: int) -> int:
    """The logical streams of a run that starts now: `configured`, or (0) DEFAULT, or the
    largest power of two below it that divides `examples` read per step; if that does not
    split over `process_count`, gcd(examples, DEFAULT * process_count)."""
    if configured:
        return configured
    streams = math.gcd(examples, DEFAULT)
    if streams % process_count:
        streams = math.gcd(examples, DEFAULT * process_count)
    return streams


def working_counts(streams: int) -> list[int]:
    """The process counts that can serve `streams` logical streams: its divisors."""
    return [p for p in range(1, streams + 1) if streams % p == 0]


def check_count(streams: int, process_count: int) -> None:
    """ConfigError, in one line, if `process_count` processes cannot serve the order."""
    if streams % process_count:
        counts = ", ".join(map(str, working_counts(streams)))
        raise ConfigError(f"{process_count} processes cannot continue this run's data order "
                          f"exactly: its {streams} logical streams ('{KEY}') split over "
                          f"{counts} processes only")


def process_streams(streams: int, process_index: int, process_count: int) -> range:
    """The logical streams process `process_index` of `process_count` serves, in the order
    its rows hold them."""
    check_count(streams, process_count)
    per = streams // process_count
    return range(process_index * per, (process_index + 1) * per)


def check_batch(streams: int, examples: int, what: str) -> None:
    """ConfigError unless `examples` (a global batch, or the examples read so far) splits
    evenly over the logical streams."""
    if examples % streams:
        raise ConfigError(f"{what} ({examples}) must split evenly over the {streams} logical "
                          f"streams ('{KEY}')")


def stream_shuffle_buffer(shuffle_buffer: int, streams: int) -> int:
    """Each logical stream's share of `data.shuffle_buffer`, the run's whole buffer per
    source: ceil(buffer / L), at least 1. It depends on L alone, not on the process count,
    so the order stays the same on every count, and a process serving L / P streams holds
    about buffer / P examples of each source (a one-process run: the whole buffer)."""
    return max(1, -(-shuffle_buffer // streams))


def row_source(row: int, batch: int, global_batch_size: int, streams: int) -> tuple[int, int]:
    """(logical stream, its position) of row `row` of global batch `batch`."""
    chunk = global_batch_size // streams
    return row // chunk, batch * chunk + row % chunk
