#!/usr/bin/env bash
# Evaluate the newest model version on held-out class folders.
# Usage: ./test_infer_validation.sh TARGET_DIR [MODEL] [label flags...]
#   MODEL: a version dir or base dir (default: trxsfr_model, train.sh's output).
#   e.g. ./test_infer_validation.sh heldout trxsfr_model --min_accuracy 0.9
# Exit codes: 0 evaluated (and accuracy >= --min_accuracy if given); 1 below
# --min_accuracy; 2 bad input (missing folder, not a model, no images).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: ./test_infer_validation.sh TARGET_DIR [MODEL] [label flags...]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$1"
shift
model="trxsfr_model"
if [[ $# -gt 0 && "$1" != -* ]]; then
  model="$1"
  shift
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m trxsfr label --model "$model" "$target" "$@"
