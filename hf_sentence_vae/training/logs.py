"""What a training run records: `metrics.jsonl` (one JSON record per logged step or evaluation), experiment
trackers, and the training curves (the paper's Figure 2).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


def empty_window() -> dict[str, float]:
    """The running sums of a training record (kept in the trainer state, so a resumed run logs the same)."""
    return {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "tokens": 0, "n": 0}


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record to `metrics.jsonl`."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_records(path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint's step (they will be produced again)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a record torn by the interruption
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def check_trackers(report_to: str) -> None:
    """Raise a `ValueError` unless the tracker `--report_to` names (or, for `all`, at least one) is installed:
    Accelerate would only warn and train without logging."""
    from accelerate.tracking import get_available_trackers

    available = sorted(str(getattr(t, "value", t)) for t in get_available_trackers())
    if report_to == "all" and not available:
        raise ValueError(
            "--with_tracking found no experiment tracker installed: install the train extra (it brings tensorboard) "
            "or name one with --report_to"
        )
    if report_to != "all" and report_to not in available:
        raise ValueError(
            f"--with_tracking --report_to {report_to}: {report_to} is not installed (installed: {available or 'none'}); "
            f"pip install {report_to} (tensorboard comes with the train extra: pip install -e '.[train]')"
        )


def plot_training(metrics_path: Path, output_path: Path) -> Path | None:
    """The paper's Figure 2 from a run: KL weight and unweighted KL over steps, plus the validation bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if "kl_weight" in r]
    evals = [r for r in records if "validation_loss" in r]
    if not train:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    steps = [r["step"] for r in train]
    top.plot(steps, [r["kl"] for r in train], color="tab:blue", label="KL term value (unweighted)")
    top.set_ylabel("KL (nats / sentence)")
    twin = top.twinx()
    twin.plot(steps, [r["kl_weight"] for r in train], color="tab:orange", label="KL term weight")
    twin.set_ylabel("KL weight")
    twin.set_ylim(0, 1.05)
    lines = top.get_lines() + twin.get_lines()
    top.legend(lines, [line.get_label() for line in lines], loc="center right")
    top.set_title("KL cost annealing (cf. Bowman et al. 2016, Figure 2)")
    if evals:
        bottom.plot([r["step"] for r in evals], [r["validation_loss"] for r in evals], marker="o", label="bound")
        bottom.plot([r["step"] for r in evals], [r["validation_kl"] for r in evals], marker=".", label="KL part")
        bottom.legend()
    bottom.set_ylabel("validation -ELBO (nats / sentence)")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(output_path, dpi=120)
    plt.close(fig)
    return output_path


__all__ = [
    "CURVES_FILE",
    "METRICS_FILE",
    "append_record",
    "check_trackers",
    "empty_window",
    "plot_training",
    "truncate_records",
]
