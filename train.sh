#!/usr/bin/env bash
# Retrain on DATA_DIR with trxsfr's defaults; the last stdout line is the new SavedModel dir.
# Usage: ./train.sh DATA_DIR [retrain flags...]   (e.g. --tfhub_module inception_v3)
# Exit codes: 0 trained and exported; 2 bad input (the message says what to fix).
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: ./train.sh DATA_DIR [retrain flags...]  (see: python3 -m trxsfr retrain --help)" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
data_dir="$1"
shift
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m trxsfr retrain --image_dir "$data_dir" "$@"
