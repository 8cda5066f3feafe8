"""SIGTERM to exit on the demo: starts `contrastive-jax train` on configs/demo_siglip.py,
sends SIGTERM after the first logged step (step 50), and prints one JSON line with the
seconds from the signal to "checkpoint saved" and to the process's exit.

    python benchmarks/sigterm_exit.py --workdir /tmp/sigterm_demo [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="emptied first")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir of the demo data")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "contrastive_jax.cli", "train", "--config",
           "configs/demo_siglip.py:steps=2000", "--workdir", args.workdir,
           "--config.train.progress_bar=False", "--config.train.checkpoint_every=100000"]
    if args.data_dir:
        cmd.append(f"--config.data.data_dir={args.data_dir}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(args.workdir, "metrics.jsonl")
    while proc.poll() is None and not (os.path.exists(metrics) and os.path.getsize(metrics)):
        time.sleep(0.05)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    saved = None
    for line in proc.stderr:
        if "checkpoint saved" in line and saved is None:
            saved = time.monotonic() - signalled
    proc.wait()
    print(json.dumps({"seconds_to_saved": saved and round(saved, 2),
                      "seconds_to_exit": round(time.monotonic() - signalled, 2),
                      "returncode": proc.returncode}))


if __name__ == "__main__":
    main()
