#!/usr/bin/env python
"""Speed of the working tree's model code against another git revision's, side by side in one process.

    python benchmarks/compare_revisions.py --rev HEAD --data_dir ../shared/data --decode_model runs/ptb/vae_standard/best

The revision's remote-code closure (configuration, modeling, decoding, latent) is read with `git show` into a
temporary package; both implementations start from the same weights and train on the same batches (the training
loop's step, as in run_benchmarks.py), alternating A B A B; ratios are taken pair by pair (wall-clock and process
CPU time) and the losses of the two are compared step by step. Decoding decodes the same prior samples with both
and checks that the sequences agree.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_training import Arm, TrainState, batch_plan, representative_batches, steps_for  # noqa: E402
from measure import SEED, default_data_dir, load_average, load_data, machine_info, median, model_config  # noqa: E402

from hf_sentence_vae import SentenceVAEModel  # noqa: E402

REPO = HERE.parent

CLOSURE = ("configuration_sentence_vae", "modeling_sentence_vae", "decoding", "latent")
# Loaded where the revision has them: the model's other remote-code modules, and imputation (compared too) with what
# it imports.
OPTIONAL = ("kernels", "generation_settings", "tokenization_sentence_vae_fast", "data", "imputation")


def load_revision(rev: str, folder: Path):
    """Import the model code of `rev` as the package `sentence_vae_rev`."""
    package = folder / "sentence_vae_rev"
    package.mkdir()
    for name in CLOSURE + OPTIONAL:
        shown = subprocess.run(
            ["git", "show", f"{rev}:hf_sentence_vae/{name}.py"], cwd=REPO, capture_output=True, text=True
        )
        if shown.returncode != 0 and name in CLOSURE:
            raise SystemExit(f"git show {rev}:hf_sentence_vae/{name}.py failed: {shown.stderr}")
        if shown.returncode == 0:
            (package / f"{name}.py").write_text(shown.stdout)
    (package / "__init__.py").write_text(
        "from .configuration_sentence_vae import SentenceVAEConfig\nfrom .modeling_sentence_vae import SentenceVAEModel\n"
    )
    sys.path.insert(0, str(folder))
    return importlib.import_module("sentence_vae_rev")


def factory(package):
    def make(config):
        fields = config.to_diff_dict()
        for key in ("transformers_version", "model_type", "architectures", "auto_map", "dtype"):
            fields.pop(key, None)
        return package.SentenceVAEModel(package.SentenceVAEConfig(**fields))

    return make


def compare_training(data, package, args) -> list[dict]:
    corpus = data["corpora"]["train"]
    results = []
    for size in args.sizes:
        config = model_config(data["tokenizer"], size)
        for batch_size in args.batch_sizes:
            steps = steps_for(batch_size, args)
            picks = representative_batches(batch_plan(corpus, batch_size, Arm("x")), corpus.lengths, steps)
            states = {}
            for precision in args.precisions:
                arm = Arm(precision, bf16=precision == "bf16", fused_adam=args.fused_adam)
                states[("rev", precision)] = TrainState(arm, config, corpus, model_factory=factory(package))
                states[("work", precision)] = TrainState(arm, config, corpus)
            runs = {key: [] for key in states}
            for rep in range(args.warmup + args.repeats):
                for key, state in states.items():
                    load = load_average()
                    wall, cpu = time.perf_counter(), time.process_time()
                    tokens = sum(state.step(idx, rep * steps + i) for i, idx in enumerate(picks))
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    if rep >= args.warmup:
                        runs[key].append({"wall": tokens / wall, "cpu": tokens / cpu, "load": load})
            for precision in args.precisions:
                work, rev = runs[("work", precision)], runs[("rev", precision)]
                losses_work = states[("work", precision)].losses
                losses_rev = states[("rev", precision)].losses
                results.append(
                    {
                        "size": size,
                        "batch_size": batch_size,
                        "precision": precision,
                        "fused_adam": args.fused_adam,
                        "rev_tokens_per_second": median(r["wall"] for r in rev),
                        "work_tokens_per_second": median(r["wall"] for r in work),
                        "speedup": median(a["wall"] / b["wall"] for a, b in zip(work, rev)),
                        "speedup_cpu_time": median(a["cpu"] / b["cpu"] for a, b in zip(work, rev)),
                        "max_abs_loss_difference": max(abs(a - b) for a, b in zip(losses_work, losses_rev)),
                        "load_median": median(r["load"] for r in work + rev),
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr)
    return results


def _generate(model, **kwargs):
    """`generate` of either revision, returning an output with `.sequences` and `.sequences_scores`: revisions whose
    `generate` takes `input_ids` return bare ids unless asked for the output, earlier ones always returned it."""
    if "input_ids" in inspect.signature(model.generate).parameters:
        kwargs["return_dict_in_generate"] = True
    return model.generate(**kwargs)


@torch.no_grad()
def compare_decoding(package, args) -> list[dict]:
    work = SentenceVAEModel.from_pretrained(args.decode_model).eval()
    rev = factory(package)(work.config)
    rev.load_state_dict(work.state_dict())
    rev.generation_config = copy.deepcopy(work.generation_config)  # the saved decoding defaults (e.g. suppress_tokens)
    rev.eval()
    largest = max(args.decode_batch_sizes + [args.single_sentences])
    codes = work.sample_prior(largest, generator=torch.Generator().manual_seed(SEED))
    results = []
    for beams in (1, 5, 15):
        for batch in args.decode_batch_sizes:
            if beams > 1 and batch > args.max_beam_batch:
                continue
            count = args.single_sentences if batch == 1 else batch
            timings = {"rev": [], "work": []}
            outputs = {}
            for _ in range(args.decode_repeats):
                for name, model in (("rev", rev), ("work", work)):
                    start = time.perf_counter()
                    outputs[name] = [
                        _generate(model, latent=codes[i : i + batch], num_beams=beams) for i in range(0, count, batch)
                    ]
                    timings[name].append(count / (time.perf_counter() - start))
            same = all(torch.equal(a.sequences, b.sequences) for a, b in zip(outputs["rev"], outputs["work"]))
            score_diff = max(
                float((a.sequences_scores - b.sequences_scores).abs().max())
                for a, b in zip(outputs["rev"], outputs["work"])
            )
            results.append(
                {
                    "decoding": "greedy" if beams == 1 else f"beam{beams}",
                    "batch_size": batch,
                    "rev_sentences_per_second": statistics.median(timings["rev"]),
                    "work_sentences_per_second": statistics.median(timings["work"]),
                    "speedup": statistics.median(a / b for a, b in zip(timings["work"], timings["rev"])),
                    "same_sequences": same,
                    "max_abs_score_difference": score_diff,
                    "load": load_average(),
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr)
    return results


@torch.no_grad()
def compare_imputation(package, data, args) -> list[dict]:
    """`imputation.impute` of both (each with its own decoding code) on the same validation sentences."""
    import numpy as np

    from hf_sentence_vae.imputation import impute, suffix_unknown_mask

    try:
        rev_impute = importlib.import_module("sentence_vae_rev.imputation").impute
    except ImportError:
        return []
    work = SentenceVAEModel.from_pretrained(args.decode_model).eval()
    rev = factory(package)(work.config)
    rev.load_state_dict(work.state_dict())
    rev.generation_config = copy.deepcopy(work.generation_config)  # the saved decoding defaults (e.g. suppress_tokens)
    rev.eval()
    corpus = data["corpora"]["validation"]
    chosen = np.random.default_rng(SEED).choice(len(corpus), 64, replace=False)
    chosen = chosen[np.argsort(corpus.lengths[chosen], kind="stable")]
    results = []
    for batch in (1, 64):
        picks = chosen if batch > 1 else chosen[:: 64 // 8]
        timings = {"rev": [], "work": []}
        outputs = {}
        for _ in range(args.decode_repeats):
            for name, model, fn in (("rev", rev, rev_impute), ("work", work, impute)):
                start = time.perf_counter()
                outputs[name] = []
                for i in range(0, len(picks), batch):
                    b = corpus.batch(picks[i : i + batch])
                    out = fn(model, b["input_ids"], b["attention_mask"], suffix_unknown_mask(b["attention_mask"], 0.2))
                    outputs[name].append(out.input_ids)
                timings[name].append(len(picks) / (time.perf_counter() - start))
        same = all(torch.equal(a, b) for a, b in zip(outputs["rev"], outputs["work"]))
        results.append(
            {
                "decoding": "impute (ICM 3 x beam 5)",
                "batch_size": batch,
                "rev_sentences_per_second": statistics.median(timings["rev"]),
                "work_sentences_per_second": statistics.median(timings["work"]),
                "speedup": statistics.median(a / b for a, b in zip(timings["work"], timings["rev"])),
                "same_sequences": same,
                "max_abs_score_difference": 0.0,
                "load": load_average(),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def render(results: dict) -> str:
    lines = [f"Command: `{results['command']}`  ", f"Compared: working tree vs `{results['rev']}`.", ""]
    if results["training"]:
        lines.append(
            "| size | batch | precision | tokens/s rev | tokens/s work | x (wall) | x (CPU time) | max loss diff | load |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for r in results["training"]:
            lines.append(
                f"| {r['size']} | {r['batch_size']} | {r['precision']} | {r['rev_tokens_per_second']:,.0f} "
                f"| {r['work_tokens_per_second']:,.0f} | {r['speedup']:.2f} | {r['speedup_cpu_time']:.2f} "
                f"| {r['max_abs_loss_difference']:.1e} | {r['load_median']:.1f} |"
            )
        lines.append("")
    if results["decoding"]:
        lines.append("| decoding | batch | sentences/s rev | sentences/s work | x | same sequences | max score diff |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in results["decoding"]:
            lines.append(
                f"| {r['decoding']} | {r['batch_size']} | {r['rev_sentences_per_second']:,.1f} "
                f"| {r['work_sentences_per_second']:,.1f} | {r['speedup']:.2f} | {r['same_sequences']} "
                f"| {r['max_abs_score_difference']:.1e} |"
            )
    return "\n".join(lines)


def compare(argv: Sequence[str] | None = None) -> dict:
    """Compare the working tree with `--rev` as the arguments say; returns the results (also written to --output)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", default="HEAD")
    parser.add_argument(
        "--data_dir", default=default_data_dir(), help="folder holding ptb/ (default: $SENTENCE_VAE_DATA)"
    )
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--sizes", default="standard")
    parser.add_argument("--batch_sizes", default="32,128")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--fused_adam", action="store_true", help="fused Adam in both (default: the training loop's)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode_model", default=None, help="trained model folder (decoding is skipped without)")
    parser.add_argument("--decode_batch_sizes", default="1,64,512")
    parser.add_argument("--max_beam_batch", type=int, default=64)
    parser.add_argument("--single_sentences", type=int, default=32)
    parser.add_argument("--decode_repeats", type=int, default=3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.sizes = args.sizes.split(",")
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    args.precisions = args.precisions.split(",")
    args.decode_batch_sizes = [int(x) for x in args.decode_batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    results = {
        "command": " ".join(["python", "benchmarks/compare_revisions.py", *(sys.argv[1:] if argv is None else argv)]),
        "rev": subprocess.run(
            ["git", "rev-parse", "--short", args.rev], cwd=REPO, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine_info(),
    }
    with tempfile.TemporaryDirectory(prefix="sentence_vae_rev_") as tmp:
        package = load_revision(args.rev, Path(tmp))
        data = load_data(args)
        results["training"] = compare_training(data, package, args) if args.repeats else []
        results["decoding"] = compare_decoding(package, args) if args.decode_model else []
        if args.decode_model:
            results["decoding"] += compare_imputation(package, data, args)
    results["markdown"] = render(results)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1) + "\n")
    sys.stdout.write(results["markdown"] + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; returns the exit status."""
    compare(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
