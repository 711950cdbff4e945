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
        # head.write_summaries writes event files with TensorBoard's own protobuf writers.
        "tensorboard>=2.20,<2.22",
        # report/explain figures, drawn with the non-interactive Agg renderer.
        "matplotlib>=3.8,<4",
        # trxsfr serve: an ASGI app on uvicorn (httptools and uvloop make its HTTP faster).
        "starlette>=0.37,<2",
        "uvicorn>=0.30,<1",
        "httptools>=0.6,<1",
        "uvloop>=0.19,<1; sys_platform != 'win32'",
        # .tflite inference (label/info); tf.lite.Interpreter is the fallback where it has no wheel.
        "ai-edge-litert>=2.0,<3; sys_platform != 'win32'",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "scikit-learn>=1.4,<2"],
        "bench": ["scikit-learn>=1.4,<2"],
    },
    entry_points={"console_scripts": ["trxsfr=trxsfr.cli:entry_point"]},
)
