"""Training logs: CSV files (always) and TensorBoard (when the ``tensorboard`` package is
installed). A resumed run first drops the rows written after its checkpoint."""

from __future__ import annotations

import csv
from pathlib import Path

from ovseg.fileio import atomic_path


class CSVLog:
    """Append-only CSV of dict rows with a ``step`` column; columns fixed by the first row.

    Args:
        path: the CSV file.
        resume_step: keep only the existing rows with ``step <= resume_step`` (None: start a
            new file).
    """

    def __init__(self, path: str | Path, resume_step: int | None = None):
        self.path = Path(path)
        self.fields: list[str] | None = None
        rows: list[dict] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = reader.fieldnames
                rows = [r for r in reader if int(r["step"]) <= resume_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            if self.fields:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: dict) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        extra = set(row) - set(self.fields)
        if extra:
            raise ValueError(f"{self.path}: new columns {sorted(extra)} after the header")
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            if new:
                writer.writeheader()
            writer.writerow(row)


def read_csv(path: str | Path) -> list[dict[str, float]]:
    """Rows of a log as floats (empty cells dropped)."""
    with open(path, newline="") as f:
        return [
            {k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)
        ]


class TensorBoardLog:
    """Scalars to TensorBoard under ``log_dir``; a no-op when tensorboard is not installed."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.writer = None
        else:
            self.writer = SummaryWriter(str(log_dir))

    def write(self, row: dict, prefix: str = "train") -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"{prefix}/{key}", value, int(row["step"]))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
