"""How the benchmark scripts report: an RST table, the README block it goes into, and
the row kept in ``results/latest.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def rst_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``header`` and ``rows`` as a simple reStructuredText table, columns padded."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: Sequence[Any]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def update_readme(marker: str, text: str, intro: str = "") -> None:
    """Replace the block between README.rst's ``.. <marker>-start`` and ``-end``
    comments with ``intro`` (if any) and ``text`` as a literal block."""
    path = os.path.join(HERE, "..", "README.rst")
    with open(path, encoding="utf-8") as fh:
        readme = fh.read()
    start, end = f".. {marker}-start\n", f".. {marker}-end\n"
    if start not in readme or end not in readme:
        raise SystemExit(f"README.rst has no {marker} markers")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    block = "\n".join(("    " + line).rstrip() for line in text.splitlines())
    intro = f"\n{intro}" if intro else ""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{start}{intro}\n::\n\n{block}\n\n{end}{tail}")
    print(f"updated {os.path.normpath(path)}")


def save_row(row: dict[str, Any]) -> None:
    """Put ``row`` in ``results/latest.json`` in place of the row of its scenario."""
    path = os.path.join(HERE, "results", "latest.json")
    with open(path) as f:
        rows = json.load(f)
    rows = [r for r in rows if r.get("scenario") != row["scenario"]] + [row]
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)
        f.write("\n")
