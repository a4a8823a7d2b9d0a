"""Recording benchmark tables: each benchmark owns one `## <section>` of benchmarks/RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
TITLE = "# Benchmark results\n"


def record(section: str, body: str, path: Path = RESULTS_PATH) -> None:
    """Replace the `## section` of the results file with `body` (append the section if new)."""
    text = path.read_text() if path.exists() else TITLE
    block = f"## {section}\n\n{body.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    path.write_text(text.rstrip("\n") + "\n")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
