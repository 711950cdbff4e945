#!/usr/bin/env python3
"""TF label_image.py's successor: `python label_image.py --graph MODEL --image FILE`.

MODEL is a frozen graph (`retrained_graph.pb` from `retrain.py --output_graph`, or
one TF's retrain.py wrote; label_image.py's --labels, --input_layer, --input_mean, ...
apply to it), a SavedModel directory or a .tflite. Prints the codelab's
`Evaluation time (1-image): ...` and `label (score=...)` lines; all of `trxsfr
label`'s flags work too (e.g. `--format text` for evaluation output).
"""

import sys

from trxsfr.cli import entry_point

if __name__ == "__main__":
    entry_point(["label", "--format", "codelab", *sys.argv[1:]])
