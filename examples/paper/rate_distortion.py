#!/usr/bin/env python
"""Rate against distortion on PTB: VAEs trained at several target rates (`--kl_target`), each measured by its
importance-weighted test NLL, its mutual information I(x; z) and how well its posterior means reconstruct the
test sentences, with the matching RNNLM's exact test NLL as the reference line.

    python examples/paper/rate_distortion.py --runs runs/ptb/latent_t2 runs/ptb/latent_t5 ... \
        --rnnlm runs/ptb/rnnlm_control --test_file ../shared/data/ptb/ptb.test.txt --iw_samples 500 \
        --output benchmarks/results/rate_distortion.json --markdown benchmarks/results/rate_distortion.md \
        --plot benchmarks/results/rate_distortion.png

For each run folder (a `train_scripts/train.py` output directory) the selected model `RUN/best` is evaluated with
`train_scripts/evaluate_model.py` (IW-NLL with `--iw_samples`) and `train_scripts/latent_report.py`; their JSON lands in
`RUN/eval/` and is reused when present, so evaluations can run one run at a time (several processes in parallel,
each with one `--runs` folder) and a last call with every folder only collects. `--collect_only` never evaluates.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "train_scripts"


def _run(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)


def evaluation_paths(run: Path, iw_samples: int, max_sentences: int | None = None) -> dict[str, Path]:
    folder = run / "eval"
    subset = "" if max_sentences is None else f"_first{max_sentences}"
    return {"nll": folder / f"test_iw{iw_samples}{subset}.json", "latent": folder / "latent_report.json"}


def evaluate_run(run: Path, args: argparse.Namespace, is_rnnlm: bool) -> None:
    """Write the run's evaluation JSON files that are missing."""
    paths = evaluation_paths(run, 0 if is_rnnlm else args.iw_samples, args.max_sentences)
    model = str(run / "best")
    common = ["--model_name_or_path", model, "--test_file", args.test_file]
    if not paths["nll"].is_file():
        iw = "0" if is_rnnlm else str(args.iw_samples)
        command = [sys.executable, str(SCRIPTS / "evaluate_model.py"), *common, "--iw_samples", iw]
        if args.max_sentences is not None:
            command += ["--max_sentences", str(args.max_sentences)]
        _run(command + ["--no_progress", "--output_file", str(paths["nll"])], run / "eval" / "evaluate.log")
    if not is_rnnlm and not paths["latent"].is_file():
        command = [sys.executable, str(SCRIPTS / "latent_report.py"), *common, "--output_file", str(paths["latent"])]
        command += ["--markdown_file", str(paths["latent"].with_suffix(".md"))]
        if args.trec_dir:
            command += ["--trec_dir", args.trec_dir]
        _run(command, run / "eval" / "latent_report.log")


def collect(args: argparse.Namespace) -> dict:
    rows = []
    for run in map(Path, args.runs):
        paths = evaluation_paths(run, args.iw_samples, args.max_sentences)
        if not all(p.is_file() for p in paths.values()):
            print(f"skipping {run}: evaluations missing ({', '.join(str(p) for p in paths.values())})", file=sys.stderr)
            continue
        nll, latent = (json.loads(p.read_text()) for p in (paths["nll"], paths["latent"]))
        config = json.loads((run / "best" / "training_config.json").read_text())
        rows.append(
            {
                "run": run.name,
                "kl_target": config.get("kl_target"),
                "kl": latent["kl"],
                "mutual_information": latent["mutual_information"],
                "mutual_information_ceiling": latent.get("mutual_information_ceiling"),
                "active_units": latent["active_units"],
                "latent_size": latent["latent_size"],
                "nll_iw": nll["nll_iw"],
                "nll_bound": nll["nll_bound"],
                "ppl_iw_words": nll["ppl_iw_words"],
                "bleu_greedy": latent["reconstruction_greedy"]["bleu"],
                "bleu_beam": latent[next(k for k in latent if k.startswith("reconstruction_beam"))]["bleu"],
                "distinct_reconstructions": latent["reconstruction_greedy"]["distinct_fraction"],
                "homotopy_distinct": latent["homotopy"]["distinct_fraction"],
                "probe_trec": latent.get("linear_probe_trec", {}).get("accuracy"),
            }
        )
    rows.sort(key=lambda r: r["kl"])
    rnnlm = None
    if args.rnnlm:
        path = evaluation_paths(Path(args.rnnlm), 0, args.max_sentences)["nll"]
        if path.is_file():
            rnnlm = json.loads(path.read_text())["nll_exact"]
    return {
        "iw_samples": args.iw_samples,
        "test_file": args.test_file,
        "max_sentences": args.max_sentences,
        "rnnlm_nll_exact": rnnlm,
        "runs": rows,
    }


def render_markdown(results: dict) -> str:
    reference = results["rnnlm_nll_exact"]
    subset = results.get("max_sentences")
    scope = "the whole test file" if subset is None else f"the first {subset} test sentences"
    lines = [
        f"NLL on {scope} (latent figures on the whole file). "
        f"IW-NLL with k={results['iw_samples']}; RNNLM (same recipe, no z): exact test NLL "
        + ("n/a" if reference is None else f"{reference:.2f}"),
        "",
        "| target rate | KL | MI | active units | test IW-NLL | vs RNNLM | bound | BLEU greedy / beam | distinct "
        "reconstructions | homotopy distinct | TREC probe |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        delta = "" if reference is None else f"{r['nll_iw'] - reference:+.2f}"
        probe = "" if r["probe_trec"] is None else f"{r['probe_trec']:.1f} %"
        lines.append(
            f"| {r['kl_target']} | {r['kl']:.2f} | {r['mutual_information']:.2f} | {r['active_units']} / "
            f"{r['latent_size']} | {r['nll_iw']:.2f} | {delta} | {r['nll_bound']:.2f} | {r['bleu_greedy']:.1f} / "
            f"{r['bleu_beam']:.1f} | {100 * r['distinct_reconstructions']:.1f} % | "
            f"{100 * r['homotopy_distinct']:.1f} % | {probe} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    kl = [r["kl"] for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(kl, [r["nll_iw"] for r in runs], marker="o", label="VAE, IW-NLL")
    if results["rnnlm_nll_exact"] is not None:
        axes[0].axhline(results["rnnlm_nll_exact"], color="gray", linestyle="--", label="RNNLM, exact NLL")
    axes[0].set_ylabel("test NLL (nats / sentence)")
    axes[0].legend()
    axes[1].plot(kl, [r["bleu_greedy"] for r in runs], marker="o", label="greedy")
    axes[1].plot(kl, [r["bleu_beam"] for r in runs], marker="s", label="beam")
    axes[1].set_ylabel("reconstruction BLEU")
    axes[1].legend()
    axes[2].plot(kl, [r["mutual_information"] for r in runs], marker="o", label="I(x; z)")
    axes[2].plot(kl, kl, color="gray", linestyle=":", label="MI = KL")
    ceilings = {r["mutual_information_ceiling"] for r in runs if r.get("mutual_information_ceiling") is not None}
    if len(ceilings) == 1:  # the estimator cannot exceed log N (N test sentences)
        axes[2].axhline(ceilings.pop(), color="gray", linestyle="--", label="estimator's ceiling, log N")
    axes[2].set_ylabel("mutual information (nats)")
    axes[2].legend()
    for axis in axes:
        axis.set_xlabel("rate: KL (nats / sentence)")
    fig.suptitle("Rate against distortion, PTB test set")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="training output folders (each with best/)")
    parser.add_argument("--rnnlm", default=None, help="the matching RNNLM's training output folder")
    parser.add_argument("--test_file", required=True)
    parser.add_argument("--iw_samples", type=int, default=500)
    parser.add_argument(
        "--max_sentences", type=int, default=None, help="measure the NLLs on the first N test sentences only"
    )
    parser.add_argument("--trec_dir", default=None, help="TREC folder for the linear probe")
    parser.add_argument("--collect_only", action="store_true", help="only gather existing evaluations")
    parser.add_argument("--output", default=None, help="JSON of the table")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if args.iw_samples < 1:
        parser.error(f"--iw_samples must be >= 1, got {args.iw_samples}")
    if args.max_sentences is not None and args.max_sentences < 1:
        parser.error(f"--max_sentences must be >= 1, got {args.max_sentences}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.collect_only:
        for run in args.runs:
            evaluate_run(Path(run), args, is_rnnlm=False)
        if args.rnnlm:
            evaluate_run(Path(args.rnnlm), args, is_rnnlm=True)
    results = collect(args)
    text = render_markdown(results)
    sys.stdout.write(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.plot and results["runs"]:
        plot(results, Path(args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
