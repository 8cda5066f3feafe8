"""`contrastive-jax data ...`: tokenizer, demo data, TFRecord builds, scores, dedup, synset
vocabularies."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from contrastive_jax.cli.common import print_json, split_overrides


def _cmd_data_tokenizer(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.data.tokenizer import train_tokenizer_cli

    path = train_tokenizer_cli(args.input, args.out, args.vocab_size)
    print(json.dumps({"tokenizer": path}))
    return 0

def _cmd_data_prepare(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.datasets.fashion_mnist_captions import build_fashion_mnist_captions

    builder = build_fashion_mnist_captions(args.data_dir)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    print(json.dumps({"dataset": builder.name, "data_dir": builder.data_dir, "splits": splits}))
    return 0

def _cmd_data_build(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.data.build import build

    result = build(args.input, args.out, prefix=args.prefix,
                   examples_per_shard=args.examples_per_shard, root=args.root,
                   verify_images=not args.no_verify_images)  # fmt: skip
    print(json.dumps(result, sort_keys=True))
    return 0

def _cmd_data_score(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.curation.offline import score_split

    print_json(score_split(args.workdir, args.out, split=args.split, batch_size=args.batch_size,
                            step=args.step, overrides=split_overrides(extra)))
    return 0

def _cmd_data_dedup(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.curation.offline import dedup_split

    print_json(dedup_split(args.mode, args.out, workdir=args.workdir, config=args.config,
                            split=args.split, eps=args.eps, clusters=args.clusters,
                            batch_size=args.batch_size, step=args.step,
                            overrides=split_overrides(extra)))
    return 0

def _cmd_data_synsets(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.config import load_config
    from contrastive_jax.data.tokenizer_setup import synset_vocabulary

    config = load_config(args.config, split_overrides(extra))
    vocab = synset_vocabulary(config.data, args.limit)
    vocab.save(args.out)
    top = dict(zip(vocab.synsets[:10], vocab.counts[:10], strict=True))
    print_json({"synsets": args.out, "size": len(vocab.synsets), "hash": vocab.hash,
                **vocab.summary, "top": top})
    return 0


def _cmd_data_cat(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from contrastive_jax.config import apply_overrides, default_config, load_config
    from contrastive_jax.data.filters.cat import cat_file

    if (args.input is None) == (args.keep_list is None):
        raise SystemExit("error: data cat takes --input FILE.jsonl, or --config with "
                         "--keep-list OUT")
    if args.keep_list:
        from contrastive_jax.curation.offline import cat_split

        if not args.config:
            raise SystemExit("error: data cat --keep-list needs --config (the data to read)")
        print_json(cat_split(args.keep_list, args.config, split=args.split,
                             overrides=split_overrides(extra)))
        return 0
    if args.config:
        config = load_config(args.config, split_overrides(extra))
    else:
        config = default_config()
        apply_overrides(config, split_overrides(extra))
    for row in cat_file(args.input, config.data.filters.cat):
        print_json(row)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The data subcommands."""
    data = sub.add_parser("data", help="data tools").add_subparsers(dest="data_command",
                                                                      required=True)
    p = data.add_parser("tokenizer", help="train a sentencepiece model on a caption file")
    p.add_argument("--input", required=True, help="text file, one caption per line")
    p.add_argument("--out", required=True, help="output prefix: writes PREFIX.model")
    p.add_argument("--vocab-size", type=int, default=1000)
    p.set_defaults(run=_cmd_data_tokenizer)

    p = data.add_parser("prepare-demo", help="build the fashion_mnist_captions TFDS dataset")
    p.add_argument("--data-dir", default=None, help="TFDS data_dir (default ~/tensorflow_datasets)")
    p.set_defaults(run=_cmd_data_prepare)

    p = data.add_parser("build", help="convert a CSV/JSONL image table or webdataset tars to "
                        "TFRecord shards (resumable)")
    p.add_argument("--input", required=True,
                   help="a .csv/.tsv/.jsonl table (columns image, caption[, uid, label, score]) "
                        "or webdataset .tar file(s): a glob or a directory")
    p.add_argument("--out", required=True, help="output directory (a rerun resumes there)")
    p.add_argument("--prefix", default="data", help="shard names: PREFIX-00000-of-0000N")
    p.add_argument("--examples-per-shard", type=int, default=10_000, help="tables only")
    p.add_argument("--root", default="", help="image folder of a table (default: its folder)")
    p.add_argument("--no-verify-images", action="store_true",
                   help="do not decode images to drop undecodable ones at build time")
    p.set_defaults(run=_cmd_data_build)

    p = data.add_parser("score", help="write uid -> image-caption cosine under a checkpoint",
                        epilog="Score other data with --config.data.KEY=VALUE overrides.")
    p.add_argument("--workdir", required=True,
                   help="training workdir (model, tokenizer and default data)")
    p.add_argument("--out", required=True, help="score file (.npz: uids, scores)")
    p.add_argument("--split", default=None, help="default: the config's data.train_split")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(run=_cmd_data_score)

    p = data.add_parser("dedup", help="write a keep-list (uids) without duplicates",
                        epilog="Select other data with --config.data.KEY=VALUE overrides.")
    p.add_argument("--mode", required=True, choices=("exact", "semantic"))
    p.add_argument("--out", required=True, help="keep-list: one uid per line")
    p.add_argument("--workdir", default=None,
                   help="training workdir (semantic: its image embeddings)")
    p.add_argument("--config", default=None, help="exact only: configs/NAME.py for the data")
    p.add_argument("--split", default=None, help="default: the config's data.train_split")
    p.add_argument("--eps", type=float, default=0.05,
                   help="semantic: drop items with cosine > 1 - eps to an earlier one")
    p.add_argument("--clusters", type=int, default=10, help="semantic: k-means clusters")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=512)
    p.set_defaults(run=_cmd_data_dedup)

    p = data.add_parser("synsets", help="CatLIP: count the WordNet synsets the training "
                        "captions name and write the vocabulary",
                        epilog="Set data.synsets.min_count / max_size (and other data) with "
                               "--config.data.KEY=VALUE overrides.")
    p.add_argument("--config", required=True, help="configs/NAME.py: its training data")
    p.add_argument("--out", required=True, help="vocabulary file (.json)")
    p.add_argument("--limit", type=int, default=1_000_000,
                   help="captions read per source (default 1,000,000)")
    p.set_defaults(run=_cmd_data_synsets)

    p = data.add_parser("cat", help="DiHT's CAT filter on a JSONL file of captions (and "
                        "images): complexity, action, text-spotting, keep",
                        epilog="Thresholds: --config.data.filters.cat.KEY=VALUE overrides.")
    p.add_argument("--input", default=None,
                   help='.jsonl, one {"caption": ..., "image": optional path} per line')
    p.add_argument("--config", default=None,
                   help="configs/NAME.py whose data.filters.cat applies (default: defaults); "
                        "with --keep-list, also the training data to read")
    p.add_argument("--keep-list", default=None,
                   help="write the uids CAT keeps of the config's split (for "
                        "data.filters.dedup.keep_lists)")
    p.add_argument("--split", default=None, help="default: the config's data.train_split")
    p.set_defaults(run=_cmd_data_cat)
