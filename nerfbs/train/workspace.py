"""A training run's folder: config, checkpoints, validation images, metrics and curves."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nerfbs.atomic import write_text


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def config_json(self) -> Path:
        return self.root / "config.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pth"

    def periodic(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.pth"

    def validation(self, step: int) -> Path:
        return self.root / "validation" / f"step_{step:07d}.png"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def create(self) -> None:
        (self.root / "validation").mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_config(self, config_dict: dict) -> None:
        write_text(self.config_json, json.dumps(config_dict, indent=2))

    def append_metrics(self, record: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
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
