"""TF Serving's API rules that its REST and gRPC sides share, with its error words and codes.

Which loaded version a model spec names (`select`), which signature a Predict or a
Classify request may run (`predict_signature`, `classification_signature`), and the
status of a model's versions (`version_status`). Errors are `BadRequest`s carrying
the gRPC code TF Serving gives (its `ServerCore`, `predict_util.cc`, `classifier.cc`
and `get_model_status_impl.cc`), and the HTTP status its REST API maps that code to,
except where trxsfr's REST API answered otherwise before (noted).
"""

from __future__ import annotations

from typing import Optional

from trxsfr.base.contract import (
    CLASSIFY_OUTPUTS,
    INPUT_EXAMPLES,
    SIGNATURE_BYTES,
    SIGNATURE_CLASSIFY,
)
from trxsfr.serve.rest import PREDICT_INPUTS, BadRequest
from trxsfr.serve.versions import LoadedVersion, Snapshot



def select(snap: Snapshot, version_labels: dict, served: str, name: str,
           version: Optional[int] = None, label: Optional[str] = None) -> LoadedVersion:
    """The loaded version a model spec (name, and version or label) names.

    Raises:
        BadRequest: no name (INVALID_ARGUMENT), another model or a version not loaded
            (NOT_FOUND), an unknown label (TF Serving: INVALID_ARGUMENT; 404 over REST,
            as trxsfr answered it before).
    """
    if not name:
        raise BadRequest("ModelSpec has no name specified.")
    if name != served:
        raise BadRequest(f"Servable not found for request: Latest({name}); this server "
                         f"serves model \"{served}\"", 404)
    if version is not None:
        lv = snap.by_version.get(version)
        if lv is None:
            loaded = ", ".join(str(v) for v in sorted(snap.by_version)) or "none"
            raise BadRequest(f"Servable not found for request: Specific({name}, {version}) "
                             f"(versions served: {loaded})", 404)
        return lv
    if label is not None:
        if label not in version_labels:
            raise BadRequest(f"Unrecognized servable version label: {label}", 404,
                             "INVALID_ARGUMENT")
        lv = snap.by_version.get(version_labels[label])
        if lv is None:
            raise BadRequest(f"version label {label} points at version "
                             f"{version_labels[label]}, which is not loaded", 404)
        return lv
    if snap.latest is None:
        raise BadRequest(f"Servable not found for request: Latest({name})", 404)
    return snap.latest


def predict_signature(lv: LoadedVersion, name: str) -> tuple[str, str]:
    """(signature, its input's name) a Predict request runs; "" is serving_default.

    Raises:
        BadRequest: FAILED_PRECONDITION for a signature the model does not have, as TF
            Serving answers (its REST API: 400).
    """
    name = name or SIGNATURE_BYTES
    if name not in lv.signature_defs or name not in PREDICT_INPUTS:
        raise BadRequest(f"Serving signature key \"{name}\" not found. (This model has "
                         f"{_names(lv)}.)", code="FAILED_PRECONDITION")
    return name, PREDICT_INPUTS[name]


def classification_signature(lv: LoadedVersion, name: str) -> str:
    """The signature a Classify request runs ("" is serving_default), checked as TF Serving
    checks it: one input keyed "inputs", one or two outputs among "classes" and "scores".

    Raises:
        BadRequest: INVALID_ARGUMENT, TF Serving's words, and what to ask instead.
    """
    name = name or SIGNATURE_BYTES
    sig = lv.signature_defs.get(name)
    hint = (f" Classify runs signature \"{SIGNATURE_CLASSIFY}\" of this model: set "
            f"signature_name to it." if SIGNATURE_CLASSIFY in lv.signature_defs else
            f" This model has no classification signature (it was exported before trxsfr "
            f"wrote one, \"{SIGNATURE_CLASSIFY}\"): use Predict, or export it again.")
    if sig is None:
        raise BadRequest(f"No signature was found with the name: {name}.{hint}")
    inputs, outputs = sig.get("inputs", {}), sig.get("outputs", {})
    if len(inputs) != 1:
        raise BadRequest(f"Expected one input Tensor.{hint}")
    if len(outputs) not in (1, 2):
        raise BadRequest(f"Expected one or two output Tensors, found {len(outputs)}.{hint}")
    if INPUT_EXAMPLES not in inputs or name != SIGNATURE_CLASSIFY \
            or not set(outputs) <= set(CLASSIFY_OUTPUTS):
        raise BadRequest(f"signature \"{name}\" is not a classification signature of a trxsfr "
                         f"model.{hint}")
    return name


def version_status(snap: Snapshot, version_labels: dict, served: str, name: str,
                   version: Optional[int] = None, label: Optional[str] = None) -> list:
    """The versions whose status a GetModelStatus request asks for, highest first.

    Raises:
        BadRequest: NOT_FOUND, TF Serving's words, for another model or a version not
            loaded; as `select` for a label.
    """
    if name != served:
        raise BadRequest(f"Could not find any versions of model {name}", 404)
    if version is not None and version not in snap.by_version:
        raise BadRequest(f"Could not find version {version} of model {name}", 404)
    if version is None and label is None:
        if not snap.by_version:
            raise BadRequest(f"Could not find any versions of model {name}", 404)
        return sorted(snap.by_version.values(), key=lambda lv: -lv.version)
    return [select(snap, version_labels, served, name, version, label)]


def _names(lv: LoadedVersion) -> str:
    names = [n for n in lv.signature_defs if n in PREDICT_INPUTS]
    return "signatures " + ", ".join(f"\"{n}\"" for n in sorted(names))
