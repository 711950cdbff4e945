"""trxsfr's benchmarks: run from the repository root, not installed with the package.

    python -m benchmarks.bench [--quick]        # issue 3: throughput, warm reruns, memory,
                                                # accuracy; one JSON document on stdout
    python -m benchmarks.bench_serve [--quick]  # issue 5: `serve` against the raw forward pass
    python -m benchmarks.bench_serve --tflite-table  # size, accuracy, latency per quantization
    python -m benchmarks.bench_augment [--quick]     # issue 6: cached augmentation
    python -m benchmarks.bench_audit [--quick]       # issue 26: planted faults the audit finds,
                                                     # warm audit against cold extraction

`mobilenet_fixture` builds the MobileNet-V2 extractor (fixed random weights,
offline) they share. They use trxsfr's public API only (`trxsfr.retrain`, the
`trxsfr` command, the public names of its documented modules) and read every
figure from returned values, the models' metadata (`trxsfr.base.contract.read_info`)
or `--format json` output, never from log lines. scikit-learn (`pip install -e
'.[bench]'`) is needed by `bench`'s linear reference. docs/PERFORMANCE.md has
the measurements and what they mean.
"""
