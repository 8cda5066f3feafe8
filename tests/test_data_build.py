"""`data build`: tables and tars -> TFRecord shards, stable uids, resume, one-line errors."""

from __future__ import annotations

import csv
import json
import os

import pytest
import tensorflow as tf
from test_data_sources import jpeg, write_tar

from contrastive_jax import cli
from contrastive_jax.data import records
from contrastive_jax.data.build import BuildError, build


def read_shards(out_dir: str) -> list[dict]:
    files = sorted(f for f in os.listdir(out_dir) if f.endswith(".tfrecord"))
    ds = tf.data.TFRecordDataset([os.path.join(out_dir, f) for f in files])
    return [{k: v.numpy() for k, v in records.parse_example(x).items()} for x in ds]


@pytest.fixture()
def table(tmp_path):
    """6 rows: 4 good, one missing image, one empty caption."""
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(6):
        if i != 2:
            (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg())
        rows.append({"image": f"img/{i}.jpg", "caption": "" if i == 4 else f"photo {i}",
                     "label": i})  # fmt: skip
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image", "caption", "label"])
        writer.writeheader()
        writer.writerows(rows)
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_table_build_round_trip_and_stable_uids(table):
    out = str(table / "out")
    result = build(str(table / "pairs.csv"), out, examples_per_shard=2, progress=False)
    assert result["shards"] == 3 and result["examples"] == 4
    assert result["skipped"]["missing_file"] == 1 and result["skipped"]["empty_caption"] == 1
    assert sorted(os.listdir(out)) == [f"data-0000{i}-of-00003.tfrecord"
                                       for i in range(3)] + ["data.manifest.json"]
    got = read_shards(out)
    assert [int(r["label"]) for r in got] == [0, 1, 3, 5]
    assert [r["caption"] for r in got] == [b"photo 0", b"photo 1", b"photo 3", b"photo 5"]
    assert got[0]["image_bytes"] == (table / "img" / "0.jpg").read_bytes()
    again = read_shards(build(str(table / "pairs.jsonl"), str(table / "out2"),
                              examples_per_shard=2, progress=False)["out"].rsplit("/", 1)[0])
    assert [r["caption"] for r in again] == [r["caption"] for r in got]
    rebuilt = build(str(table / "pairs.csv"), str(table / "out3"), examples_per_shard=3,
                    progress=False)  # fmt: skip
    uids = [r["uid"] for r in read_shards(rebuilt["out"].rsplit("/", 1)[0])]
    assert uids == [r["uid"] for r in got] and len(set(uids)) == 4


def test_interrupted_build_resumes(table):
    out = table / "out"
    build(str(table / "pairs.csv"), str(out), examples_per_shard=2, progress=False)
    first = {f: (out / f).read_bytes() for f in os.listdir(out) if f.endswith(".tfrecord")}
    # An interruption in shard 2: its partial temp file exists, the manifest lacks it.
    last = "data-00002-of-00003.tfrecord"
    (out / last).rename(out / f"{last}.tmp")
    manifest = json.loads((out / "data.manifest.json").read_text())
    del manifest["shards"][last]
    (out / "data.manifest.json").write_text(json.dumps(manifest))
    result = build(str(table / "pairs.csv"), str(out), examples_per_shard=2, progress=False)
    assert result["resumed_shards"] == 2 and result["examples"] == 4
    assert {f: (out / f).read_bytes() for f in first} == first
    assert not (out / f"{last}.tmp").exists()
    with pytest.raises(BuildError, match="another input or layout"):
        build(str(table / "pairs.csv"), str(out), examples_per_shard=5, progress=False)


def test_tar_build_one_shard_per_tar(tmp_path, capsys):
    for t in range(2):
        write_tar(str(tmp_path / f"w-{t}.tar"), [
            (f"s{t}{i}", {"jpg": jpeg(), "txt": f"cat {t} {i}".encode(),
                          "json": json.dumps({"uid": f"id{t}{i}", "score": 0.5}).encode()})
            for i in range(2)])  # fmt: skip
    assert cli.main(["data", "build", "--input", str(tmp_path / "w-*.tar"), "--out",
                     str(tmp_path / "out"), "--prefix", "web"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["shards"] == 2 and result["examples"] == 4
    got = read_shards(str(tmp_path / "out"))
    assert [r["uid"] for r in got] == [b"id00", b"id01", b"id10", b"id11"]
    assert all(abs(r["score"] - 0.5) < 1e-6 for r in got)
    assert cli.main(["data", "build", "--input", str(tmp_path / "none-*.tar"), "--out",
                     str(tmp_path / "o2")]) == 2  # fmt: skip
    assert "no tar shard matches" in capsys.readouterr().err
