"""The per-step metrics CSV (``logs/part-NN/metrics.csv``), written so a kill cannot lose it.

Lightning's CSV logger appends each step's row (flushed every step here), but when a metric
appears for the first time (``tok/s`` at step 1, ``val/ppl`` at the first validation) it
truncates the file and writes it again with the wider header: a kill in between loses every row
of the launch. This writer does that rewrite beside the file and renames it over.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class AtomicHeaderWriter(ExperimentWriter):
    """Lightning's CSV writer with an all-or-nothing header rewrite (local files)."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(staged, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(staged, path)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise


class MetricsCSVLogger(CSVLogger):
    """A CSVLogger that flushes every step and rewrites its header atomically."""

    def __init__(self, save_dir: Path, name: str, version: str) -> None:
        super().__init__(save_dir, name=name, version=version, flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self) -> AtomicHeaderWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AtomicHeaderWriter(log_dir=self.log_dir)
        return self._experiment
