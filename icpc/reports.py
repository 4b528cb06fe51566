"""Report files (JSON, CSV, PNG plots) written through the storage layer, so a report can land on any URL."""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Sequence

from icpc import storage


def write_json(location: str, obj: Any) -> None:
    storage.write_text(location, json.dumps(obj, indent=2))


def write_csv(location: str, rows: Sequence[dict[str, Any]]) -> None:
    """Rows (dicts with the first row's keys) as CSV with a header."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    storage.write_text(location, buf.getvalue())


def save_figure(fig, location: str, dpi: int = 120) -> None:
    """A matplotlib figure as PNG at ``location``; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    storage.write_bytes(location, buf.getvalue())
