"""What every command shares: exit codes, help formatting, output, tables, progress bars."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

EXIT_OK, EXIT_BELOW_GATE, EXIT_BAD_INPUT = 0, 1, 2


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except empty ones (None, False, []) that say nothing."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default is argparse.SUPPRESS or default == []:
            return action.help  # `is`: a default of 0 or 0.0 equals False but says something
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with trxsfr's one-line errors (exit 2) instead of a usage block; the
    sub-command parsers are of this class too (add_subparsers takes the parent's)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"trxsfr: error: {message}; see `{self.prog} --help`\n")


def out(line: str = "") -> None:
    """One line of results on stdout (progress and logs go to stderr)."""
    print(line, flush=True)


def note(line: str) -> None:
    """One line for the person on stderr, keeping stdout exactly the results."""
    print(line, file=sys.stderr, flush=True)


def table(header: Sequence, rows: Sequence[Sequence]) -> list[str]:
    """Plain-text table lines: first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]


# More skipped files than this are summarised by reason unless --verbose asks for each.
LISTED_SKIPS = 10


SKIPPED_EACH = "skipped: {path}: {reason}"
SKIPPED_SUMMARY = "skipped: {count} files, by reason (--verbose lists each):"


def skipped_lines(skipped, verbose: bool, each: str = SKIPPED_EACH,
                  summary: str = SKIPPED_SUMMARY) -> list[str]:
    """Lines naming skipped files: each one (`each.format(path=, reason=)`) when they are
    few or `verbose`; else a count per kind of reason with the first three paths."""
    if verbose or len(skipped) <= LISTED_SKIPS:
        return [each.format(path=s.path, reason=s.reason) for s in skipped]
    by_kind = {}
    for s in skipped:
        by_kind.setdefault(s.kind, []).append(s.path)
    lines = [summary.format(count=len(skipped))]
    for kind, paths in sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        more = f", ... ({len(paths) - 3} more)" if len(paths) > 3 else ""
        lines.append(f"  {len(paths)} {kind}: {', '.join(paths[:3])}{more}")
    return lines


def evaluation_lines(ev: Optional[dict], labels: list, unknown_folders) -> list[str]:
    """The folders not evaluated, then an evaluation's accuracy, per-class accuracy and
    confusion matrix, as `label` prints them (locally or from a pipeline)."""
    lines = [f"not evaluated: {folder} is not one of the model's labels ({', '.join(labels)})"
             for folder in unknown_folders]
    if not ev:
        return lines
    lines.append(f"Accuracy = {100 * ev['accuracy']:.2f}% (N={ev['count']})")
    lines.append("Per-class accuracy:")
    for label, row in ev["per_class"].items():
        if row["support"]:
            lines.append(f"  {label}: {100 * row['recall']:.2f}% (N={row['support']})")
    lines.append("Confusion matrix (rows: true, columns: predicted):")
    lines += ["  " + row for row in table(
        ["true \\ predicted"] + list(labels),
        [[label] + counts for label, counts in zip(labels, ev["confusion_matrix"])])]
    return lines


class ProgressBars:
    """The library's `on_progress(stage, done, total)` drawn as one tqdm bar per stage,
    on stderr, only when stderr is a terminal and progress is wanted."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and sys.stderr.isatty()
        self._bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            unit = {"fine-tune": "step", "download": "url"}.get(stage, "img")
            bar = self._bars[stage] = tqdm(total=total, desc=stage, unit=unit, file=sys.stderr,
                                           smoothing=0.1)
        bar.update(done)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> "ProgressBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
