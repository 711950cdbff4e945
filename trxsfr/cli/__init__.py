"""Command line: parse flags, call the library, print results, map errors to exit codes.

The only code of trxsfr that reads flags, prints, draws progress bars and picks
exit codes: 0 success; 1 `label --min_accuracy` not reached; 2 bad input (one
line on stderr saying what to fix). One module per group of commands:
`train` (retrain, fixtures), `use` (label, report, explain), `deploy` (serve,
export-tflite, info); `common` and `process` hold what they share.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Optional, Sequence

from trxsfr.base.contract import is_tflite
from trxsfr.base.errors import TrxsfrError
from trxsfr.cli import audit, beam, deploy, process, train, use, web
from trxsfr.cli.common import EXIT_BAD_INPUT, Formatter, Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trxsfr", formatter_class=Formatter,
        description="Transfer learning for images: retrain a TF-Hub feature extractor's final "
                    "layer on your class folders, export a versioned SavedModel, label with it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train.add_retrain_parser(sub)
    use.add_label_parser(sub)
    use.add_report_parser(sub)
    use.add_explain_parser(sub)
    train.add_fixtures_parser(sub)
    beam.add_extract_parser(sub)
    deploy.add_deploy_parsers(sub)
    web.add_download_parser(sub)
    audit.add_audit_parser(sub)
    return parser


# Commands that always load TensorFlow (`info` does for a SavedModel, not for a .tflite);
# `label` and `extract` import it after their own flag checks.
_TENSORFLOW_COMMANDS = ("retrain", "explain", "fixtures", "serve", "export-tflite", "audit")


def main(argv: Optional[Sequence[str]] = None) -> int:
    process.cap_malloc_arenas()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not beam.takes_pipeline_options(args):  # otherwise they go to Apache Beam
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pipeline_args = extra
    process.quiet_tensorflow()
    if args.command in _TENSORFLOW_COMMANDS or (
            args.command == "info" and not is_tflite(args.model)):
        process.import_tensorflow_quietly()
    with process.log_to_stderr(quiet=getattr(args, "quiet", False)):
        return _run(args)


def _run(args) -> int:
    """The command, with a user's error as one line and exit code 2."""
    try:
        return args.run(args)
    except TrxsfrError as e:
        print(f"trxsfr: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("trxsfr: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk, a read-only folder...: the user's to fix, not a bug
        line = process.fixable_os_error(e)
        if line is None:
            raise
        print(f"trxsfr: error: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry_point(argv: Optional[Sequence[str]] = None) -> None:
    """The `trxsfr` command, `python -m trxsfr` and the script wrappers: `main`, then exit.

    Everything trxsfr writes is closed when `main` returns. Python's shutdown would
    then spend about a second garbage-collecting the ~400,000 objects TensorFlow's
    import leaves behind, which the OS frees anyway: frozen objects are skipped
    (atexit handlers and module teardown still run).
    """
    code = main(argv)
    gc.freeze()
    sys.exit(code)
