"""Session fixtures: a tiny extractor, tiny separable class folders, one trained model.

Everything is built here, offline, once per test session.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from trxsfr import cli  # noqa: E402
from trxsfr.kit import write_fixtures  # noqa: E402

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
    """--bottleneck_dir, --saved_model_dir (tmp_path/models), --summaries_dir, all inside tmp_path."""
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


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """{'module', 'images', 'heldout'}: the `trxsfr fixtures` set."""
    return write_fixtures(str(tmp_path_factory.mktemp("fx") / "kit"))


@pytest.fixture(scope="session")
def trained(fx, tmp_path_factory):
    """One retrain run over the fixture images; its paths and CLI output."""
    work = tmp_path_factory.mktemp("trained")
    result = run_cli(
        "retrain", "--image_dir", fx["images"], "--tfhub_module", fx["module"],
        "--bottleneck_dir", work / "cache", "--saved_model_dir", work / "models",
        "--summaries_dir", work / "runs", "--output_labels", work / "labels.txt",
        "--print_misclassified_test_images", *FAST_TRAIN,
    )
    assert result.code == 0, result
    return {"result": result, "version_dir": result.lines[-1], "base": str(work / "models"),
            "cache": str(work / "cache"), "runs": str(work / "runs"), "work": work}


@pytest.fixture
def cli_run():
    return run_cli
