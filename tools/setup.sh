#!/usr/bin/env bash
# One-step set-up: the demo data (Debian's real Fashion-MNIST images) and the package with
# its dependencies and test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,hf]"
