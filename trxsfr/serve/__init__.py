"""`trxsfr serve`: an add-on that serves a model base directory over TensorFlow Serving's
REST API and, with `grpc_port`, its gRPC API.

Modules, each with one job:

- `app`: the Starlette app and its routes (the API is described there), `serve(config)`;
- `grpc`: the gRPC servicers (PredictionService, ModelService), on the same event loop;
- `api`: TF Serving's rules both share: version selection, signatures, status codes;
- `rest`: TF Serving's JSON wire format: parsing and checking requests, formatting answers;
- `metrics`: the Prometheus page at /monitoring/prometheus/metrics;
- `batcher`: joins the images of concurrent requests into shared forward passes;
- `versions`: loads, warms up and hot-swaps the model versions found in the base directory;
- `connection`: each HTTP connection: header size limit, read timeouts, disconnects logged;
- `page.html`: the upload page served at `/`.

Settings are `trxsfr.base.config.ServeConfig`. Imports `trxsfr.use` and `trxsfr.base` only.
"""

from trxsfr.serve.app import serve

__all__ = ["serve"]
