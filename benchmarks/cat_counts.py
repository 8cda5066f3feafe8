"""The CAT filter's kept / dropped counts (per reason) on a TFDS caption dataset, through
the pipeline's own filter code (`filters.apply_filters` with `data.filters.cat` on). Prints
one JSON object per dataset.

    python benchmarks/cat_counts.py --datasets fashion_mnist_captions fashion_mnist_captions_noisy

Text-spotting runs Tesseract once per image that passes complexity and action (~0.1 s each
on one core), so `--limit` bounds the examples read.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion_mnist_captions"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--limit", type=int, default=0, help="examples per dataset; 0: all")
    parser.add_argument("--no-text-spotting", action="store_true")
    args = parser.parse_args()

    from contrastive_jax.data.filters import FilterCounters, apply_filters
    from contrastive_jax.data.schema import default_filters_config
    from contrastive_jax.datasets.catalogue import get_builder

    filters = default_filters_config()
    filters.cat.update(enabled=True, text_spotting=not args.no_text_spotting)
    for name in args.datasets:
        ds = get_builder(name, args.data_dir).as_dataset(split=args.split, shuffle_files=False)
        if args.limit:
            ds = ds.take(args.limit)
        counters = FilterCounters()
        start = time.perf_counter()
        for _ in apply_filters(ds, filters, counters=counters).as_numpy_iterator():
            pass
        counts = {k.removeprefix("filters/cat/"): v for k, v in counters.as_dict().items()}
        print(json.dumps({"dataset": name, "split": args.split, **counts,
                          "text_spotting": filters.cat.text_spotting,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
