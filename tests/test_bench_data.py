"""`bench data` runs end to end on tiny synthetic JPEGs (the numbers go in docs, not here)."""

from __future__ import annotations

import json

from contrastive_jax import cli


def test_bench_data_prints_pipeline_rows(capsys):
    assert cli.main(["bench", "data", "--image-size", "32", "--num-examples", "64",
                     "--batches", "2", "--threads", "1", "--sources", "tfrecord", "webdataset",
                     "--no-step", "--config.train.batch_size=16"]) == 0  # fmt: skip
    rows = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [r["source"] for r in rows] == ["tfrecord", "webdataset"]
    for row in rows:
        assert row["bench"] == "data_pipeline" and row["image_size"] == 32
        assert row["examples_per_sec"] > 0 and row["mean_jpeg_kb"] > 0
        per_core = row["examples_per_sec"] / row["threads"]
        assert abs(row["examples_per_sec_per_core"] - per_core) <= 0.1
