"""trxsfr: transfer learning for images on a laptop CPU."""

from setuptools import find_packages, setup

setup(
    name="trxsfr",
    version="0.1.0",
    description=(
        "Retrain a TF-Hub image feature extractor's final layer on your own "
        "class folders and export a versioned SavedModel for TF Serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["trxsfr", "trxsfr.*"]),
    # serve's upload page, read with importlib.resources.
    package_data={"trxsfr.serve": ["page.html"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-hub>=0.16.1,<0.17",
        # tensorflow_hub imports tf_keras at import time; keep it matched to TF.
        "tf-keras>=2.21,<2.22",
        "numpy>=1.26,<3",
        # train/tuning.py runs its small matrix products on one BLAS thread.
        "threadpoolctl>=3.1,<4",
        "pillow>=10,<13",
        "tqdm>=4.66,<5",
        # download / label on URLs: redirects, timeouts, streaming with a size cap, TLS and
        # a connection pool whose connect step checks the address (base/web.py).
        "httpx>=0.27,<1",
        # head.write_summaries writes event files with TensorBoard's own protobuf writers.
        "tensorboard>=2.20,<2.22",
        # report/explain figures, drawn with the non-interactive Agg renderer.
        "matplotlib>=3.8,<4",
        # trxsfr serve: an ASGI app on uvicorn (httptools and uvloop make its HTTP faster).
        "starlette>=0.37,<2",
        "uvicorn>=0.30,<1",
        "httptools>=0.6,<1",
        "uvloop>=0.19,<1; sys_platform != 'win32'",
        # trxsfr serve --grpc_port: TF Serving's gRPC API with the servicer base classes and
        # protos Google ships (matched to TensorFlow's version; it requires tensorflow, which
        # is here anyway), on grpcio's asyncio server.
        "tensorflow-serving-api>=2.21,<2.22",
        "grpcio>=1.60,<2",
        # serve's /monitoring/prometheus/metrics.
        "prometheus-client>=0.20,<1",
        # .tflite inference (label/info); tf.lite.Interpreter is the fallback where it has no wheel.
        "ai-edge-litert>=2.0,<3; sys_platform != 'win32'",
    ],
    extras_require={
        # import-linter checks the rooms' import rules (tests/test_layout.py).
        "test": ["pytest>=8,<10", "scikit-learn>=1.4,<2", "import-linter>=2.1,<3"],
        "bench": ["scikit-learn>=1.4,<2"],
        # `trxsfr extract` and `label --runner` (Apache Beam pipelines). 2.77 installs beside
        # tensorflow 2.21 on Python 3.10-3.12 (its protobuf<7 meets TF's >=6.31.1; pip then
        # picks protobuf 6.33). Not Beam's `tensorflow-hub` extra (it pins hub < 0.16) nor
        # tfx_bsl: trxsfr's own model handler needs neither.
        "beam": ["apache-beam>=2.77,<2.78"],
        # `trxsfr audit`'s confident learning; it brings scikit-learn, scipy and pandas
        # (about 200 MB), which the rest of trxsfr does without.
        "audit": ["cleanlab>=2.9,<3"],
    },
    entry_points={"console_scripts": ["trxsfr=trxsfr.cli:entry_point"]},
)
