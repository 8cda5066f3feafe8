#!/usr/bin/env bash
# One-step set-up: the demo data (Debian's real Fashion-MNIST images), GNU Unifont (CLIPPO's
# text rendering), WordNet (CatLIP's synsets), Tesseract (the CAT filter's OCR) and the
# package with its dependencies, test tools and libtpu (for `plan`). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install_unless() {  # FILE PACKAGE: installs the apt PACKAGE when FILE is missing
  [ -f "$1" ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "$2"
}

apt_install_unless /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz dataset-fashion-mnist
# GNU Unifont glyphs: CLIPPO (configs/demo_clippo.py) renders captions with them.
apt_install_unless /usr/share/unifont/unifont.hex unifont
# WordNet 3.0's dictionary files: CatLIP (configs/demo_catlip.py) maps caption nouns to synsets.
apt_install_unless /usr/share/wordnet/data.noun wordnet-base
# Tesseract OCR and its English model: the CAT filter's text-spotting (data/filters/cat.py).
apt_install_unless /usr/bin/tesseract tesseract-ocr
apt_install_unless /usr/share/tesseract-ocr/5/tessdata/eng.traineddata tesseract-ocr-eng
# tpu: libtpu (~700 MB), so `contrastive-jax plan` and its tests compile for TPU topologies.
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,hf,catlip,tpu]"
