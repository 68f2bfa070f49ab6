#!/usr/bin/env python
"""The paper's Figure 3 on PTB: the two terms of the bound (reconstruction cross entropy and KL, nats per
sentence) of the standard VAE trained at word keep rates 100/90/75/50/0 %.

    python examples/paper/word_dropout_sweep.py --config train_scripts/configs/ptb_vae_standard.yaml \
        --runs_dir runs/ptb/sweep --num_train_epochs 3 --kl_sigmoid_midpoint 1000 --kl_sigmoid_slope 0.005 \
        --output benchmarks/results/word_dropout_sweep.json --plot benchmarks/results/word_dropout_sweep.png

Each keep rate trains in its own `train_scripts/train.py` process (one torch thread) into
`RUNS_DIR/keep_<rate>`; a run whose `results.json` exists is not trained again, so the sweep resumes after an
interruption. The figures are the selected model's (best validation bound) test-set reconstruction and KL
(single-sample bound), and the same on the training split. `--report_only` rebuilds the table and plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# The paper's Figure 3 (its table of the plotted values): keep rate -> (cross entropy, KL).
PAPER = {1.0: (45.01017, 0.010358), 0.9: (40.897953, 4.665799), 0.75: (37.710022, 8.751512),
         0.5: (33.433636, 15.13052), 0.0: (34.825763, 20.906685)}  # fmt: skip


def run_name(keep: float) -> str:
    return f"keep_{keep:g}"


def train_one(args: argparse.Namespace, keep: float) -> None:
    out = Path(args.runs_dir) / run_name(keep)
    if (out / "results.json").is_file():
        return
    command = [
        sys.executable, "train_scripts/train.py", "--config", args.config, "--output_dir", str(out),
        "--word_keep_rate", str(keep), "--num_train_epochs", str(args.num_train_epochs),
        "--kl_sigmoid_midpoint", str(args.kl_sigmoid_midpoint), "--kl_sigmoid_slope", str(args.kl_sigmoid_slope),
        "--num_threads", "1", "--disable_tqdm", "true", "--evaluate_train_split", "true",
    ]  # fmt: skip
    if (out / "metrics.jsonl").is_file():
        command += ["--resume_from_checkpoint", "latest"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{run_name(keep)}.log", "a", encoding="utf-8") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def collect(args: argparse.Namespace) -> list[dict]:
    rows = []
    for keep in args.keep_rates:
        path = Path(args.runs_dir) / run_name(keep) / "results.json"
        if not path.is_file():
            continue
        res = json.loads(path.read_text())
        paper = PAPER.get(keep)
        rows.append(
            {
                "keep_rate": keep,
                "test_reconstruction": res["test_reconstruction"],
                "test_kl": res["test_kl"],
                "test_bound": res["test_loss"],
                "train_reconstruction": res.get("train_reconstruction"),
                "train_kl": res.get("train_kl"),
                "steps": res["global_step"],
                "best_step": res["best_step"],
                "paper_cross_entropy": paper[0] if paper else None,
                "paper_kl": paper[1] if paper else None,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| keep rate | test reconstruction | test KL | test bound | train reconstruction | train KL "
        "| paper cross entropy | paper KL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = ("–", "–") if r["paper_kl"] is None else (f"{r['paper_cross_entropy']:.1f}", f"{r['paper_kl']:.1f}")
        lines.append(
            f"| {r['keep_rate']:.0%} | {r['test_reconstruction']:.1f} | {r['test_kl']:.2f} | {r['test_bound']:.1f} "
            f"| {r['train_reconstruction']:.1f} | {r['train_kl']:.2f} | {paper[0]} | {paper[1]} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['keep_rate']:.0%}" for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(labels, [r["test_reconstruction"] for r in rows], "o-", label="cross entropy (ours, test)")
    ax.plot(labels, [r["test_kl"] for r in rows], "s-", label="KL divergence (ours, test)")
    paper = [r for r in rows if r["paper_kl"] is not None]
    if paper:
        pl = [f"{r['keep_rate']:.0%}" for r in paper]
        ax.plot(pl, [r["paper_cross_entropy"] for r in paper], "o--", alpha=0.5, label="cross entropy (paper)")
        ax.plot(pl, [r["paper_kl"] for r in paper], "s--", alpha=0.5, label="KL divergence (paper)")
    ax.set_xlabel("word keep rate")
    ax.set_ylabel("nats per sentence")
    ax.set_title("Figure 3 on PTB: the two terms of the bound vs word dropout")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Train the sweep's runs (unless `--report_only`) and report them; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="train_scripts/configs/ptb_vae_standard.yaml")
    parser.add_argument("--runs_dir", default="runs/ptb/sweep")
    parser.add_argument(
        "--keep_rates", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 0.9, 0.75, 0.5, 0.0]
    )
    parser.add_argument("--num_train_epochs", type=int, default=3)
    parser.add_argument("--kl_sigmoid_midpoint", type=float, default=1000)
    parser.add_argument("--kl_sigmoid_slope", type=float, default=0.005)
    parser.add_argument("--output", default="benchmarks/results/word_dropout_sweep.json")
    parser.add_argument("--plot", default="benchmarks/results/word_dropout_sweep.png")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    for keep in args.keep_rates:
        if not 0.0 <= keep <= 1.0:
            parser.error(f"--keep_rates: {keep} is not in [0, 1]")
    if not args.report_only:
        for keep in args.keep_rates:
            train_one(args, keep)
    rows = collect(args)
    if not rows:
        parser.error(f"no finished runs under {args.runs_dir}")
    table = markdown(rows)
    command = " ".join(["python", "examples/paper/word_dropout_sweep.py", *(sys.argv[1:] if argv is None else argv)])
    Path(args.output).write_text(json.dumps({"command": command, "rows": rows}, indent=2) + "\n")
    Path(args.output).with_suffix(".md").write_text(table + "\n")
    plot(rows, args.plot)
    sys.stdout.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
