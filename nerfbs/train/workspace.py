"""A training run's folder: config, checkpoints, validation images, metrics and curves."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nerfbs.atomic import write_text


@dataclass(frozen=True)
class Workspace:
    """The paths of a training run's folder ``root`` and reading and writing its config and metrics."""

    root: Path

    @property
    def config_json(self) -> Path:
        """``<root>/config.json``: the run's config."""
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        """``<root>/checkpoints``: the checkpoint folder."""
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        """``<root>/checkpoints/latest.pth``: the newest checkpoint."""
        return self.checkpoints / "latest.pth"

    def periodic(self, step: int) -> Path:
        """The periodic checkpoint of ``step``: ``<root>/checkpoints/step_<step, 7 digits>.pth``."""
        return self.checkpoints / f"step_{step:07d}.pth"

    def validation(self, step: int) -> Path:
        """The validation image of ``step``: ``<root>/validation/step_<step, 7 digits>.png``."""
        return self.root / "validation" / f"step_{step:07d}.png"

    @property
    def metrics(self) -> Path:
        """``<root>/metrics.jsonl``: one JSON record per line."""
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        """``<root>/curves.png``: the training curves plot."""
        return self.root / "curves.png"

    def create(self) -> None:
        """Make the validation and checkpoint folders (and ``root``) if missing."""
        (self.root / "validation").mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_config(self, config_dict: dict) -> None:
        """Write the config dict to ``config.json`` (whole or not at all)."""
        write_text(self.config_json, json.dumps(config_dict, indent=2))

    def append_metrics(self, record: dict) -> None:
        """Append one record to ``metrics.jsonl``."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` in order ([] if missing); a line cut short by a crash is skipped."""
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        return rows

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records past ``after_step`` (a resumed run replays those steps)."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))
