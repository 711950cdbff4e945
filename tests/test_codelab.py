"""The TensorFlow for Poets codelab's commands and TF-Hub retrain.py's flags, verbatim.

The seeds' command lines (googlecodelabs/tensorflow-for-poets-2 scripts/retrain.py
and scripts/label_image.py) run in a folder holding `tf_files/flower_photos` made
of the fixture images, with only `--architecture` replaced by `--tfhub_module` on
the fixture module (no network), and their frozen graph is checked against the
SavedModel the same run exported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys

import numpy as np
import pytest
from helpers import REPO, assert_bad_input, run_cli, run_subprocess

from trxsfr import cli
from trxsfr.base import contract
from trxsfr.base.config import RetrainConfig
from trxsfr.cli import codelab

# The codelab's retrain command, as the issue quotes it (mobilenet_0.50_224, 400 steps).
SEED_400 = [
    "--bottleneck_dir=tf_files/bottlenecks", "--how_many_training_steps=400",
    "--model_dir=tf_files/models/", "--learning_rate=0.005",
    "--summaries_dir=tf_files/training_summaries/mobilenet_0.50_224",
    "--output_graph=tf_files/retrained_graph.pb",
    "--output_labels=tf_files/retrained_labels.txt",
    "--architecture=mobilenet_0.50_224", "--image_dir=tf_files/flower_photos",
]
# The same with ARCHITECTURE="mobilenet_1.0_224", as the shell expands it.
SEED_4000 = [
    "--bottleneck_dir=tf_files/bottlenecks", "--how_many_training_steps=4000",
    "--model_dir=tf_files/models/mobilenet_1.0_224", "--learning_rate=0.005",
    "--summaries_dir=tf_files/training_summaries/mobilenet_0.50_224",
    "--output_graph=tf_files/retrained_graph.pb",
    "--output_labels=tf_files/retrained_labels.txt",
    "--architecture=mobilenet_1.0_224", "--image_dir=tf_files/flower_photos",
]
IMAGE = "tf_files/flower_photos/green/green_0003.jpg"
LABEL_LINE = re.compile(r"^(\S+) \(score=(\d\.\d{5})\)$")


def with_module(command, module) -> list:
    """The command with --architecture replaced by --tfhub_module (nothing else changed)."""
    return [f"--tfhub_module={module}" if a.startswith("--architecture=") else a
            for a in command]


def codelab_folder(root, fx):
    """root/tf_files/flower_photos: the fixture images, as the codelab lays them out."""
    shutil.copytree(fx["images"], root / "tf_files" / "flower_photos")
    return root


def codelab_scores(lines) -> dict:
    """label_image.py's `label (score=0.12345)` lines -> {label: score}, in printed order."""
    found = {}
    for line in lines:
        m = LABEL_LINE.match(line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def serving_default(version_dir, path) -> tuple[list, np.ndarray]:
    """(labels, probabilities) of the exported SavedModel's serving_default on a file."""
    import tensorflow as tf

    model = tf.saved_model.load(str(version_dir))
    with open(path, "rb") as f:
        out = model.signatures[contract.SIGNATURE_BYTES](
            image_bytes=tf.constant([f.read()]))
    return contract.read_labels(contract.labels_path(str(version_dir))), \
        out[contract.OUTPUT_PROBABILITIES].numpy()[0]


def assert_same_as_saved_model(printed: dict, version_dir, image) -> None:
    labels, probs = serving_default(version_dir, image)
    order = np.argsort(-probs, kind="stable")[:5]
    assert list(printed) == [labels[i] for i in order]  # the same ranking, top label first
    for i in order:
        assert abs(printed[labels[i]] - probs[i]) <= 1e-5, (labels[i], printed, probs)


# The fresh process: nothing but tf.compat.v1 (import_graph_def, a Session).
FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
v1 = tf.compat.v1
graph_def = v1.GraphDef()
with open(sys.argv[1], "rb") as f:
    graph_def.ParseFromString(f.read())
pixels = np.load(sys.argv[2])  # float32 [N, H, W, 3] in [0, 255]
graph = tf.Graph()
with graph.as_default():
    v1.import_graph_def(graph_def, name="")
with v1.Session(graph=graph) as sess:
    codelab = sess.run("final_result:0", {"input:0": (pixels - 128) / 128})
    hub = sess.run("final_result:0", {"Placeholder:0": pixels / 255})
    labels = [v.decode() for v in sess.run("trxsfr/labels:0")]
np.save(sys.argv[3], np.stack([codelab, hub]))
print(json.dumps({"ops": sorted({n.op for n in graph_def.node}),
                  "functions": len(graph_def.library.function), "labels": labels}))
"""


def test_codelab_400_steps_then_label_image(fx, tmp_path):
    """The codelab's two commands as scripts: retrain.py, then label_image.py with no
    flag but --graph and --image; the graph again in a process with only tf.compat.v1."""
    work = codelab_folder(tmp_path, fx)
    py = sys.executable
    p = run_subprocess(py, os.path.join(REPO, "retrain.py"), *with_module(SEED_400, fx["module"]),
                       cwd=work)
    assert p.returncode == 0, p.stderr[-3000:]
    version_dir = work / p.stdout.strip().splitlines()[-1]  # the last line stays the version
    assert os.path.isfile(version_dir / contract.SAVED_MODEL_FILE)
    graph = work / "tf_files" / "retrained_graph.pb"
    assert graph.is_file()
    assert (work / "tf_files" / "retrained_labels.txt").read_text() == "blue\ngreen\nred\n"
    # --output_labels was given: no <graph>.labels.txt beside the graph
    assert not os.path.exists(work / "tf_files" / "retrained_graph.labels.txt")

    lab = run_subprocess(py, os.path.join(REPO, "label_image.py"),
                         "--graph=tf_files/retrained_graph.pb", f"--image={IMAGE}", cwd=work)
    assert lab.returncode == 0, lab.stderr[-2000:]
    lines = lab.stdout.splitlines()
    assert re.fullmatch(r"Evaluation time \(1-image\): \d+\.\d{3}s", lines[0]), lines
    printed = codelab_scores(lines)
    assert len(printed) == 3 and next(iter(printed)) == "green", lines
    assert_same_as_saved_model(printed, version_dir, work / IMAGE)

    # The graph alone, in a fresh process, fed as the codelab and as TF-Hub fed it.
    import tensorflow as tf

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    fresh = run_subprocess(py, "-c", FRESH_PROCESS, graph, tmp_path / "pixels.npy",
                           tmp_path / "probs.npy")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    report = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert report["functions"] == 0 and report["labels"] == ["blue", "green", "red"]
    assert not {"VarHandleOp", "ReadVariableOp", "VariableV2"} & set(report["ops"]), report
    codelab_probs, hub_probs = np.load(tmp_path / "probs.npy")
    model = tf.saved_model.load(str(version_dir))
    expected = model.signatures[contract.SIGNATURE_IMAGES](
        images=tf.constant(pixels / 255))[contract.OUTPUT_PROBABILITIES].numpy()
    np.testing.assert_allclose(codelab_probs, expected, atol=1e-5)
    np.testing.assert_allclose(hub_probs, expected, atol=1e-5)


@pytest.fixture(scope="module")
def seed_4000(fx, tmp_path_factory):
    """The 4000-step variant, run in this process from its folder (as retrain.py does)."""
    work = codelab_folder(tmp_path_factory.mktemp("codelab4000"), fx)
    before = os.getcwd()
    os.chdir(work)
    try:
        result = run_cli("retrain", *with_module(SEED_4000, fx["module"]))
    finally:
        os.chdir(before)
    assert result.code == 0, result
    return {"work": work, "result": result, "version_dir": work / result.lines[-1],
            "graph": work / "tf_files" / "retrained_graph.pb"}


def label_image(work, *args) -> object:
    """label_image.py's command line in this process (it runs `label --format codelab`)."""
    before = os.getcwd()
    os.chdir(work)
    try:
        return run_cli("label", "--format", "codelab", *args)
    finally:
        os.chdir(before)


def test_codelab_4000_steps_then_label_image(seed_4000):
    work = seed_4000["work"]
    # a local module: TF-Hub's cache (--model_dir) is never touched
    assert not os.path.exists(work / "tf_files" / "models" / "mobilenet_1.0_224")
    r = label_image(work, "--graph=tf_files/retrained_graph.pb", f"--image={IMAGE}")
    assert r.code == 0, r
    assert_same_as_saved_model(codelab_scores(r.lines), seed_4000["version_dir"], work / IMAGE)
    steps = json.loads((seed_4000["version_dir"] / "assets" / "trxsfr.json").read_text())
    assert steps["config"]["how_many_training_steps"] == 4000
    assert steps["config"]["output_graph"] == "tf_files/retrained_graph.pb"


def test_architecture_without_network_fails_in_one_line(fx, tmp_path):
    """The verbatim command, --architecture included: one line naming the URL it tried
    and how to use a local module. A proxy that refuses makes "no network" certain."""
    work = codelab_folder(tmp_path, fx)
    env = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9",
           "NO_PROXY": "", "no_proxy": ""}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        p = run_subprocess(sys.executable, os.path.join(REPO, "retrain.py"), *SEED_400, cwd=work)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert p.returncode == 2, p
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("trxsfr: error: "), p.stderr
    assert "Traceback" not in p.stderr and "unrecognized arguments" not in p.stderr
    assert "https://tfhub.dev/google/imagenet/mobilenet_v1_050_224/feature_vector/5" in p.stderr
    assert "local SavedModel directory with --tfhub_module" in p.stderr
    assert not os.path.exists(work / "tf_files" / "retrained_graph.pb")
    assert not os.path.exists(work / "trxsfr_model")


def test_model_dir_is_the_tfhub_cache(fx, tmp_path):
    """--model_dir is TF-Hub's cache for the run: with the module already in it, the
    verbatim command, --architecture and all, trains offline."""
    work = codelab_folder(tmp_path, fx)
    url = "https://tfhub.dev/google/imagenet/mobilenet_v1_050_224/feature_vector/5"
    cached = work / "tf_files" / "models" / hashlib.sha1(url.encode()).hexdigest()
    shutil.copytree(fx["module"], cached)
    env_before = os.environ.get("TFHUB_CACHE_DIR")
    before = os.getcwd()
    os.chdir(work)
    try:
        result = run_cli("retrain", *SEED_400[:1], "--how_many_training_steps=40",
                         *SEED_400[2:], "--quiet")
    finally:
        os.chdir(before)
    assert result.code == 0, result
    assert os.environ.get("TFHUB_CACHE_DIR") == env_before  # for the run only
    info = json.loads((work / result.lines[-1] / "assets" / "trxsfr.json").read_text())
    assert info["module"]["handle"] == "mobilenet_v1_050_224"
    assert info["config"]["tfhub_cache_dir"] == "tf_files/models/"
    assert os.path.isfile(work / "tf_files" / "retrained_graph.pb")


# ---------------------------------------------------------------- every flag parses

# Every flag of the codelab's scripts/retrain.py and TF-Hub's retrain.py, a value, and
# what it sets in trxsfr (None: no effect, the config is the bare command's).
RETRAIN_FLAGS = {
    "--image_dir": ("photos", lambda c: c.image_dir == "photos"),
    "--output_graph": ("g.pb", lambda c: c.output_graph == "g.pb"),
    "--intermediate_output_graphs_dir": ("inter",
                                         lambda c: c.intermediate_output_graphs_dir == "inter"),
    "--intermediate_store_frequency": ("100", lambda c: c.intermediate_store_frequency == 100),
    "--output_labels": ("l.txt", lambda c: c.output_labels == "l.txt"),
    "--summaries_dir": ("sums", lambda c: c.summaries_dir == "sums"),
    "--how_many_training_steps": ("500", lambda c: c.how_many_training_steps == 500),
    "--learning_rate": ("0.005", lambda c: c.learning_rate == 0.005),
    "--testing_percentage": ("20", lambda c: c.testing_percentage == 20),
    "--validation_percentage": ("15", lambda c: c.validation_percentage == 15),
    "--eval_step_interval": ("10", lambda c: c.eval_step_interval == 10),
    "--train_batch_size": ("50", lambda c: c.train_batch_size == 50),
    "--test_batch_size": ("-1", None),
    "--validation_batch_size": ("100", None),
    "--print_misclassified_test_images": ("", lambda c: c.print_misclassified_test_images),
    "--model_dir": ("tf_files/models/", lambda c: c.tfhub_cache_dir == "tf_files/models/"),
    "--bottleneck_dir": ("bn", lambda c: c.bottleneck_dir == "bn"),
    "--final_tensor_name": ("my_result", lambda c: c.final_tensor_name == "my_result"),
    "--flip_left_right": ("", lambda c: c.flip_left_right),
    "--random_crop": ("10", lambda c: c.random_crop == 10),
    "--random_scale": ("10", lambda c: c.random_scale == 10),
    "--random_brightness": ("10", lambda c: c.random_brightness == 10),
    "--architecture": ("mobilenet_0.50_224", lambda c: c.tfhub_module == "mobilenet_v1_050_224"),
    "--tfhub_module": ("https://tfhub.dev/google/imagenet/inception_v3/feature_vector/3",
                       lambda c: c.tfhub_module.endswith("inception_v3/feature_vector/3")),
    "--saved_model_dir": ("/tmp/saved_models/",
                          lambda c: c.saved_model_dir == "/tmp/saved_models/"),
    "--logging_verbosity": ("WARN", "sets trxsfr's log level"),
    "--checkpoint_path": ("/tmp/_retrain_checkpoint", None),
}


@pytest.mark.parametrize("flag", sorted(RETRAIN_FLAGS))
def test_every_retrain_py_flag_parses(flag):
    value, check = RETRAIN_FLAGS[flag]
    base = ["retrain", "--image_dir", "imgs"]
    given = [flag] if value == "" else [f"{flag}={value}"]
    level = logging.getLogger("trxsfr").level
    try:
        bare = cli.train.retrain_config(cli.build_parser().parse_args(base))
        config = cli.train.retrain_config(cli.build_parser().parse_args(base + given))
        level_set = logging.getLogger("trxsfr").level
    finally:
        logging.getLogger("trxsfr").setLevel(level)
    if isinstance(check, str):  # the log level (and with it the progress bar), not the config
        assert level_set == logging.WARNING and config == bare
    elif check is None:
        assert config == bare  # accepted, no effect
    else:
        assert check(config), config
        assert config != bare


def test_flags_without_effect_say_so_in_one_line_each(tmp_path):
    missing = tmp_path / "no_images"
    r = run_cli("retrain", "--image_dir", missing, "--test_batch_size=-1",
                "--validation_batch_size=100", "--checkpoint_path=/tmp/_retrain_checkpoint")
    assert_bad_input(r, missing)  # the run goes on to its real problem
    warnings = [line for line in r.err.splitlines() if line.startswith("trxsfr: warning:")]
    for name in codelab.NO_EFFECT:
        mine = [line for line in warnings if f"--{name} " in line]
        assert len(mine) == 1 and "no effect" in mine[0], warnings
    assert len(warnings) == len(codelab.NO_EFFECT)
    # --logging_verbosity ERROR silences them, as it silences every warning.
    r = run_cli("retrain", "--image_dir", missing, "--test_batch_size=-1",
                "--logging_verbosity=ERROR")
    assert_bad_input(r, missing)
    assert "warning" not in r.err


def test_help_groups_the_compatibility_flags():
    r = run_cli("retrain", "--help")
    assert r.code == 0
    head, section = r.out.split(codelab.GROUP + ":")
    for flag in ("--architecture", "--model_dir", "--output_graph", "--final_tensor_name",
                 "--intermediate_store_frequency", "--intermediate_output_graphs_dir",
                 "--logging_verbosity", "--checkpoint_path", "--test_batch_size",
                 "--validation_batch_size"):
        assert flag in section and f"  {flag}" not in head, flag


# ---------------------------------------------------------------- graphs retrain writes

def run_in(work, *args):
    before = os.getcwd()
    os.chdir(work)
    try:
        return run_cli(*args)
    finally:
        os.chdir(before)


def test_intermediate_graphs_final_tensor_name_and_reruns(fx, tmp_path):
    work = codelab_folder(tmp_path, fx)
    command = ["retrain", "--image_dir=tf_files/flower_photos", "--tfhub_module", fx["module"],
               "--bottleneck_dir=tf_files/bottlenecks", "--summaries_dir=",
               "--output_graph=tf_files/g.pb", "--final_tensor_name=scores",
               "--intermediate_store_frequency=100",
               "--intermediate_output_graphs_dir=tf_files/inter", "--quiet"]
    r = run_in(work, *command, "--how_many_training_steps=300")
    assert r.code == 0, r
    inter = sorted(os.listdir(work / "tf_files" / "inter"))
    assert inter == ["intermediate_100.pb", "intermediate_200.pb", "intermediate_300.pb"]
    # Without --output_labels the labels go beside the graph (C++ and the apps read a file).
    assert (work / "tf_files" / "g.labels.txt").read_text() == "blue\ngreen\nred\n"
    image = str(work / IMAGE)
    scores = {}
    for name in ("g.pb", "inter/intermediate_100.pb", "inter/intermediate_300.pb"):
        out = run_cli("label", "--format", "json", "--graph", work / "tf_files" / name, image)
        assert out.code == 0, out  # the output's name ("scores") comes from the graph
        scores[name] = json.loads(out.out)["predictions"][0]["probabilities"]
    assert scores["g.pb"] == scores["inter/intermediate_300.pb"]
    assert scores["g.pb"] != scores["inter/intermediate_100.pb"]
    labels, probs = serving_default(work / r.lines[-1], image)
    np.testing.assert_allclose(scores["g.pb"], probs, atol=1e-5)

    graph_bytes = (work / "tf_files" / "g.pb").read_bytes()
    again = run_in(work, *command, "--how_many_training_steps=300")
    assert again.code == 0, again  # the same model again: the same bytes, nothing refused
    assert again.lines[-1] != r.lines[-1]
    other = run_in(work, *command, "--how_many_training_steps=250")
    line = assert_bad_input(other, "--output_graph", "tf_files/g.pb", "another model")
    assert re.search(r"exported to trxsfr_model/\d+ alone", line), line  # and said where
    assert (work / "tf_files" / "g.pb").read_bytes() == graph_bytes  # never replaced


def test_graph_destinations_checked_before_the_work(fx, tmp_path):
    work = codelab_folder(tmp_path, fx)
    base = ["retrain", "--image_dir=tf_files/flower_photos", "--tfhub_module", fx["module"],
            "--bottleneck_dir=tf_files/bottlenecks", "--quiet"]
    (work / "notes.pb").write_bytes(b"my own notes")
    r = run_in(work, *base, "--output_graph=notes.pb")
    assert_bad_input(r, "--output_graph", "notes.pb", "not a graph trxsfr wrote")
    assert (work / "notes.pb").read_bytes() == b"my own notes"
    assert not os.path.exists(work / "tf_files" / "bottlenecks")  # before any bottleneck
    (work / "folder.pb").mkdir()
    assert_bad_input(run_in(work, *base, "--output_graph=folder.pb"), "folder.pb", "is a folder")
    assert_bad_input(run_in(work, *base, "--final_tensor_name=final result"),
                     "--final_tensor_name")
    assert_bad_input(run_in(work, *base, "--final_tensor_name=input"), "--final_tensor_name")
    assert_bad_input(run_in(work, *base, "--intermediate_store_frequency=-5"),
                     "--intermediate_store_frequency")
    assert_bad_input(run_in(work, *base, "--intermediate_store_frequency=5",
                            "--learning_rate=0.01,0.1"), "--intermediate_store_frequency")
    assert_bad_input(run_in(work, *base, "--model_dir=notes.pb/models"), "--model_dir")
    assert_bad_input(run_in(work, *base, "--architecture=mobilenet_0.50_224"), "--architecture")
    r = run_in(work, *base, "--logging_verbosity=LOUD")
    assert r.code == 2 and "--logging_verbosity" in r.err
    assert not os.path.exists(work / "trxsfr_model")


# ---------------------------------------------------------------- label_image.py's flags

def probabilities(result) -> list:
    assert result.code == 0, result
    return json.loads(result.out)["predictions"][0]["probabilities"]


def test_label_image_flags_on_a_graph(seed_4000, tmp_path):
    graph, image = seed_4000["graph"], seed_4000["work"] / IMAGE
    default = probabilities(run_cli("label", "--format", "json", "--graph", graph, image))
    # TF-Hub's input, fed as TF's label_image.py fed it (its defaults mean 0, std 255).
    hub = probabilities(run_cli("label", "--format", "json", "--graph", graph, image,
                                "--input_layer=Placeholder"))
    explicit = probabilities(run_cli("label", "--format", "json", "--graph", graph, image,
                                     "--input_layer=Placeholder:0", "--input_mean=0",
                                     "--input_std=255", "--output_layer=final_result",
                                     "--input_height=32", "--input_width=32"))
    np.testing.assert_allclose(hub, default, atol=1e-5)
    assert hub == explicit
    off = probabilities(run_cli("label", "--format", "json", "--graph", graph, image,
                                "--input_mean=0", "--input_std=1"))
    assert not np.allclose(off, default, atol=1e-3)  # the normalisation flags are used
    assert_bad_input(run_cli("label", "--graph", graph, image, "--input_height=224"),
                     "--input_height 224", "32x32")
    assert_bad_input(run_cli("label", "--graph", graph, image, "--input_layer=images"),
                     "'images'", "input, Placeholder")
    assert_bad_input(run_cli("label", "--graph", graph, image, "--output_layer=nope"), "nope")
    assert_bad_input(run_cli("label", "--graph", graph, image, "--input_std=0"), "--input_std")


def strip_labels(graph, to, batch=None):
    """A copy of a graph without trxsfr's constants, as TF's retrain.py wrote them;
    with `batch`, its input takes only batches of that size (as TF-slim's MobileNets)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef.FromString(graph.read_bytes())
    kept = [n for n in graph_def.node if n.name not in (contract.GRAPH_LABELS, contract.GRAPH_INFO)]
    del graph_def.node[:]
    graph_def.node.extend(kept)
    for node in graph_def.node:
        if batch and node.name == contract.GRAPH_INPUT:
            node.attr["shape"].shape.dim[0].size = batch
    to.parent.mkdir(parents=True, exist_ok=True)
    to.write_bytes(graph_def.SerializeToString())
    return to


def test_labels_of_a_graph_without_its_own(seed_4000, tmp_path):
    graph = strip_labels(seed_4000["graph"], tmp_path / "tf" / "retrained_graph.pb")
    image = seed_4000["work"] / IMAGE
    assert_bad_input(run_cli("label", "--graph", graph, image), "no labels", "--labels")
    labels = tmp_path / "labels.txt"
    labels.write_text("blue\ngreen\nred\n")
    r = run_cli("label", "--format", "codelab", "--graph", graph, "--labels", labels, image)
    assert r.code == 0 and next(iter(codelab_scores(r.lines))) == "green", r
    (tmp_path / "tf" / "retrained_labels.txt").write_text("blue\ngreen\nred\n")  # beside it
    r = run_cli("label", "--format", "codelab", "--graph", graph, image)
    assert r.code == 0 and next(iter(codelab_scores(r.lines))) == "green", r
    labels.write_text("blue\ngreen\n")
    assert_bad_input(run_cli("label", "--graph", graph, "--labels", labels, image),
                     "2 labels", "3 scores")
    # A graph that takes one image per run still labels a folder.
    one = strip_labels(seed_4000["graph"], tmp_path / "one" / "retrained_graph.pb", batch=1)
    (tmp_path / "one" / "retrained_labels.txt").write_text("blue\ngreen\nred\n")
    folder = run_cli("label", "--format", "json", "--graph", one, seed_4000["work"] / "tf_files"
                     / "flower_photos" / "green")
    whole = run_cli("label", "--format", "json", "--graph", seed_4000["graph"],
                    seed_4000["work"] / "tf_files" / "flower_photos" / "green")
    assert folder.code == 0 and whole.code == 0, (folder, whole)
    np.testing.assert_allclose([p["probabilities"] for p in json.loads(folder.out)["predictions"]],
                               [p["probabilities"] for p in json.loads(whole.out)["predictions"]],
                               atol=1e-6)
    # The graph's own labels win over a --labels file that says otherwise (with a warning).
    r = run_cli("label", "--format", "codelab", "--graph", seed_4000["graph"], "--labels",
                labels, image)
    assert r.code == 0 and "differs from the model's own labels" in r.err, r


def test_graph_evaluates_a_folder_as_the_saved_model(seed_4000, fx):
    graph = run_cli("label", "--format", "json", "--graph", seed_4000["graph"], fx["heldout"])
    saved = run_cli("label", "--format", "json", "--model", seed_4000["version_dir"],
                    fx["heldout"])
    assert graph.code == 0 and saved.code == 0, (graph, saved)
    g, s = json.loads(graph.out), json.loads(saved.out)
    assert g["evaluation"]["accuracy"] == s["evaluation"]["accuracy"] >= 0.9
    np.testing.assert_allclose([p["probabilities"] for p in g["predictions"]],
                               [p["probabilities"] for p in s["predictions"]], atol=1e-5)


def test_bad_graph_files(seed_4000, tmp_path, fx):
    image = seed_4000["work"] / IMAGE
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xfe not a graph")
    assert_bad_input(run_cli("label", "--graph", junk, image), "junk.pb", "not a frozen GraphDef")
    assert_bad_input(run_cli("label", "--graph", tmp_path / "missing.pb", image),
                     "missing.pb", "does not exist")
    (tmp_path / "dir.pb").mkdir()
    assert_bad_input(run_cli("label", "--graph", tmp_path / "dir.pb", image), "is a folder")


def test_label_image_flags_on_a_saved_model_say_they_do_nothing(seed_4000):
    r = run_cli("label", "--format", "codelab", "--graph", seed_4000["version_dir"],
                seed_4000["work"] / IMAGE, "--input_mean=127.5", "--input_std=127.5")
    assert r.code == 0, r
    warnings = [line for line in r.err.splitlines() if line.startswith("trxsfr: warning:")]
    assert len(warnings) == 1 and "--input_mean, --input_std have no effect" in warnings[0]
    # A SavedModel's saved_model.pb given as the graph is that SavedModel.
    r = run_cli("label", "--format", "codelab", "--graph",
                seed_4000["version_dir"] / contract.SAVED_MODEL_FILE, seed_4000["work"] / IMAGE)
    assert r.code == 0 and next(iter(codelab_scores(r.lines))) == "green", r


def test_config_defaults_are_the_flags_defaults():
    args = cli.build_parser().parse_args(["retrain", "--image_dir", "x"])
    config = cli.train.retrain_config(args)
    for name in ("output_graph", "intermediate_store_frequency", "intermediate_output_graphs_dir",
                 "final_tensor_name", "tfhub_cache_dir"):
        assert getattr(config, name) == getattr(RetrainConfig, name)
