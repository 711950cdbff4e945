"""Smoke test of the benchmark's MobileNet-V2 extractor (the benchmark itself: python -m trxsfr.bench)."""

import numpy as np
import pytest


@pytest.mark.slow
def test_mobilenet_v2_fixture_gives_content_carrying_features(tmp_path):
    from trxsfr import modules
    from trxsfr.mobilenet_fixture import FEATURE_DIM, build_mobilenet_v2_extractor, \
        calibration_images

    path = build_mobilenet_v2_extractor(str(tmp_path / "mnv2"), image_size=64, seed=0)
    extractor = modules.load(path)  # hub.load, as retrain does
    assert extractor.image_size == (64, 64)
    assert extractor.dim == FEATURE_DIM

    images = calibration_images(6, 64, seed=123)
    features = extractor(images).numpy()
    assert features.shape == (6, FEATURE_DIM) and features.dtype == np.float32
    assert 0.1 <= float(np.mean(features)) <= 3.0  # not Keras' vanishing 1e-12
    # Content survives the depth: different pictures give clearly different vectors.
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert cos[np.triu_indices(6, 1)].min() < 0.98
    again = extractor(images).numpy()
    np.testing.assert_allclose(features, again, rtol=1e-5, atol=1e-6)
