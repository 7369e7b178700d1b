"""`PruningSummary` as terminal tables: with rich when it is installed, in plain aligned text otherwise."""

from __future__ import annotations

import sys
from typing import TextIO

from .summary import PruningSummary, number, ratio


def _tables(summary: PruningSummary) -> list[tuple[str, list[str], list[list[str]]]]:
    sizes = [[label, number(b), number(a), ratio(b, a)] for label, b, a in summary.size_rows()]
    titles, layers = summary.layer_rows()
    return [
        (f"{summary.model_class}: size and speed", ["", "dense", "pruned", "pruned / dense"], sizes),
        ("kept per layer (kept / dense)", ["layer", *titles], [[layer, *cells] for layer, cells in layers]),
    ]


def _plain(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    head = line(header)
    return "\n".join([title, head, "-" * len(head), *(line(row) for row in rows)])


def print_summary(summary: PruningSummary, file: TextIO | None = None, notes: list[str] | None = None) -> None:
    """Print the size/speed table and the kept-per-layer table, then `notes` (one line each).

    Args:
        summary: from `hfprune.publish.summary.summarize`.
        file: where to print (default: stdout).
        notes: lines printed after the tables.
    """
    file = file or sys.stdout
    tables = _tables(summary)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print("\n\n".join(_plain(*table) for table in tables), file=file)
    else:
        # No colours or wrapping when the output is not a terminal, so pipes and logs stay plain text.
        console = Console(file=file, width=120 if not file.isatty() else None, highlight=False)
        for title, header, rows in tables:
            table = Table(title=title, title_justify="left")
            for i, name in enumerate(header):
                table.add_column(name, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
    for note in notes or []:
        print(note, file=file)
