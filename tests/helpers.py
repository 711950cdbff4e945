"""Plain helpers the tests share: run the CLI in-process or as a subprocess, check a
bad-input exit, read an exported model. Fixtures stay in conftest.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess

import numpy as np

from trxsfr import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_TRAIN = ["--how_many_training_steps", "200", "--quiet"]


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    @property
    def lines(self):
        return self.out.splitlines()

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


def run_cli(*args) -> CliResult:
    """cli.main in this process, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_bad_input(result, *needles) -> str:
    """Exit 2, no traceback, exactly one `trxsfr: error:` line naming every needle."""
    assert result.code == 2, result
    assert "Traceback" not in result.err, result
    errors = [line for line in result.err.splitlines() if line.startswith("trxsfr: error:")]
    assert len(errors) == 1, result
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


def subprocess_env() -> dict:
    """This environment with the checkout first on PYTHONPATH."""
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_subprocess(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def dests(tmp_path, models="models") -> list:
    """--bottleneck_dir, --saved_model_dir (tmp_path/models) and --summaries_dir in tmp_path."""
    return ["--bottleneck_dir", tmp_path / "cache", "--saved_model_dir", tmp_path / models,
            "--summaries_dir", tmp_path / "runs"]


def mark_older_preprocessing(metadata_path) -> None:
    """Rewrite a model's trxsfr.json (or a .tflite's sidecar) as if an older trxsfr, with
    other preprocessing, had exported it."""
    with open(metadata_path, encoding="utf-8") as f:
        meta = json.load(f)
    meta["preprocessing"] = "decode_image-bilinear-antialias-v1"
    with open(metadata_path, "w", encoding="utf-8") as f:
        json.dump(meta, f)


def exported_variables(version_dir):
    """(weights, bias) of an exported model's new layer, as NumPy arrays."""
    import tensorflow as tf

    m = tf.saved_model.load(version_dir)
    return m.weights.numpy(), m.bias.numpy()


def write_label_free_set(root, per_class, classes=("blue", "green", "red"), seed=0) -> str:
    """`root/<class>/noise_<i>.jpg`: pure-noise images, the same ones in every class folder.

    A model gives each image one label, right in one folder at most, so its accuracy here is
    at most 1 / len(classes) whatever it learnt: a gate above that fails for certain.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(per_class):
        image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
        for name in classes:
            os.makedirs(os.path.join(root, name), exist_ok=True)
            image.save(os.path.join(root, name, f"noise_{i:04d}.jpg"), quality=90)
    return str(root)
