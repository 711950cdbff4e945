"""Session fixtures: a tiny extractor, tiny separable class folders, one trained model.

Everything is built here, offline, once per test session.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import FAST_TRAIN, run_cli  # noqa: E402

from trxsfr.kit import write_fixtures  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def trxsfr_home(tmp_path_factory):
    """$TRXSFR_HOME for the session (LiteRT conversions of exported models, Keras builds),
    also in subprocesses: tests never write to the user's ~/.cache/trxsfr."""
    before = os.environ.get("TRXSFR_HOME")
    os.environ["TRXSFR_HOME"] = str(tmp_path_factory.mktemp("trxsfr_home"))
    yield os.environ["TRXSFR_HOME"]
    if before is None:
        os.environ.pop("TRXSFR_HOME", None)
    else:
        os.environ["TRXSFR_HOME"] = before


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
