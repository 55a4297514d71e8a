#!/bin/sh
# Usage: install.sh VENV SOURCE
# A fresh virtual environment at VENV with ModelMora from SOURCE and its serve extra, by the
# README's own command: torch 2.13.0 first (a CPU build where the index serves one; on PyPI set
# PIP_EXTRA_INDEX_URL to PyTorch's CPU wheel index, see docs/deployment.md), then the extra.
set -eu
venv=$1
python3 -m venv "$venv"
cd "$2"
"$venv/bin/pip" install torch==2.13.0 -e '.[serve]'
