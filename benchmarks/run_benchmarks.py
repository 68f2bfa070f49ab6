#!/usr/bin/env python
"""Speed benchmarks for hf_sentence_vae: training throughput against the machine's matmul rate and a
straightforward baseline, bf16's effect on the loss, decoding throughput and memory.

    python benchmarks/run_benchmarks.py --data_dir ../shared/data --output BENCHMARKS.json   # full run (`make bench`)
    python benchmarks/run_benchmarks.py --quick                                               # smoke run, < 1 min
    python benchmarks/run_benchmarks.py --quick --tiny                                        # synthetic data, tiny model

Method. Every figure is the median over several repetitions after warm-up. Within a repetition the competing
configurations ("arms") run one after the other on the same batches (A B C A B C ...), and every ratio is computed
pair by pair within a repetition before taking the median, so load from other processes on a shared machine
affects both sides of a ratio alike. The machine's dense matmul rate is measured in each repetition too (a square
`--matmul_size` GEMM, fp32 and bf16, at each thread count), and each arm's achieved FLOP/s is divided by the rate
of its repetition. The load average is recorded beside each figure.

Training is measured exactly as `hf_sentence_vae.training.Trainer._train_step` does it: length-bucketed batches
padded to their longest sentence, the posterior and word-dropout noise of `training.step_noise`, the model's
forward with `return_logits=False`, backward, gradient clipping at 5 and the optimizer of
`training.build_optimizer` (Adam); variants change one thing each (fused Adam, bf16 autocast, torch.compile,
threads). Throughput counts target tokens: words plus end of sentence, padding excluded.

FLOPs per token count the matrix products of the encoder and decoder LSTM gates and of the output projection,
forward and backward (backward = 2x forward: gradients for inputs and for weights); the embedding lookup, the
small latent layers and elementwise work are left out. Only real (non-padding) positions count, so padding
wasted by a configuration lowers its achieved FLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the sibling modules below, when run as `python benchmarks/run_benchmarks.py`
    sys.path.insert(0, str(HERE))

from bench_decoding import bench_decoding, bench_imputation  # noqa: E402
from bench_isa import bench_isa, isa_probe  # noqa: E402
from bench_memory import bench_allocator_env, memory_probes, probe_main, run_probe  # noqa: E402
from bench_report import render_markdown  # noqa: E402
from bench_training import (  # noqa: E402
    PEER_ARMS,
    REFERENCE,
    Arm,
    bench_training,
    bf16_loss_effect,
    default_arms,
    profile_training,
    steps_for,
)
from compare_revisions import factory, load_revision  # noqa: E402
from measure import SIZES, default_data_dir, flops_of_lengths, load_data, machine_info, model_config  # noqa: E402

from hf_sentence_vae import SentenceVAEModel  # noqa: E402

SECTIONS = ("training", "memory", "allocator", "profile", "loss", "decoding", "isa", "imputation", "stream")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data_dir",
        default=default_data_dir(),
        help="folder holding ptb/ptb.{train,valid}.txt (default: $SENTENCE_VAE_DATA)",
    )
    parser.add_argument("--output", default=None, help="write the results JSON here")
    parser.add_argument("--markdown_output", default=None, help="also write the markdown tables here")
    parser.add_argument("--quick", action="store_true", help="smoke run: one size, batch 32, few repetitions")
    parser.add_argument("--tiny", action="store_true", help="synthetic corpus and tiny model (no data needed)")
    parser.add_argument("--sizes", default=None, help="comma list of " + ",".join(SIZES))
    parser.add_argument("--batch_sizes", default=None, help="training batch sizes, comma list")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare (first = default)")
    parser.add_argument("--repeats", type=int, default=None, help="measured repetitions per figure")
    parser.add_argument("--warmup", type=int, default=1, help="discarded repetitions before measuring")
    parser.add_argument("--steps", type=int, default=None, help="training steps per arm per repetition")
    parser.add_argument("--matmul_size", type=int, default=None, help="side of the square GEMM measuring the limit")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile arm")
    parser.add_argument("--no_baseline", action="store_true", help="skip the padded-to-the-longest-sentence baseline")
    parser.add_argument("--no_peer", action="store_true", help="skip the peer-style reference (peer_reference.py)")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-RSS probes (fresh processes)")
    parser.add_argument("--memory_steps", type=int, default=3)
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--loss_steps", type=int, default=None, help="steps of the fp32-vs-bf16 loss comparison")
    parser.add_argument("--loss_batch_size", type=int, default=32)
    parser.add_argument("--loss_eval_sentences", type=int, default=None, help="validation sentences evaluated")
    parser.add_argument("--env_repeats", type=int, default=None, help="alternations of the allocator comparison")
    parser.add_argument(
        "--decode_model",
        default=None,
        help="trained model folder for decoding (default: the fp32 model of the loss comparison)",
    )
    parser.add_argument("--decode_batch_sizes", default=None)
    parser.add_argument("--decode_repeats", type=int, default=None, help="measured repetitions of each decoding arm")
    parser.add_argument("--compile_sizes", default=None, help="sizes that get the torch.compile arm")
    parser.add_argument("--beams", default=None, help="beam widths besides greedy, comma list")
    parser.add_argument("--max_beam_batch", type=int, default=None, help="skip beam arms with larger batches")
    parser.add_argument("--single_sentences", type=int, default=None, help="codes decoded one by one at batch 1")
    parser.add_argument("--max_new_tokens", type=int, default=None)
    parser.add_argument("--impute_batch_size", type=int, default=None, help="sentences imputed in one call")
    parser.add_argument("--stream_sentences", type=int, default=None, help="sentences of the streamed decoding probe")
    parser.add_argument("--no_decoding", action="store_true")
    parser.add_argument(
        "--compare_rev",
        default=None,
        help="also decode with this git revision's model code (same weights), e.g. the previous release",
    )
    parser.add_argument(
        "--isa_caps",
        default="default,AVX512_CORE",
        help="ONEDNN_MAX_CPU_ISA values of the 'isa' section, one fresh process each ('default' = no cap); on an Intel "
        "CPU with AMX e.g. default,AVX512_CORE_BF16,AVX512_CORE",
    )
    parser.add_argument("--isa_repeats", type=int, default=None, help="measured repetitions in each 'isa' process")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help="comma list of the parts to run (default: all): " + ",".join(SECTIONS),
    )
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.sections = [x for x in args.sections.split(",") if x]
    for section in args.sections:
        if section not in SECTIONS:
            parser.error(f"unknown section {section!r}; choose from {','.join(SECTIONS)}")

    def pick(value, quick_value, full_value):
        return value if value is not None else (quick_value if quick else full_value)

    ints = lambda text: [int(x) for x in str(text).split(",") if x]  # noqa: E731
    args.sizes = pick(args.sizes, "tiny" if args.tiny else "peer", "tiny" if args.tiny else "peer,standard")
    args.sizes = [s for s in args.sizes.split(",") if s]
    for size in args.sizes:
        if size not in SIZES:
            parser.error(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    args.batch_sizes = ints(pick(args.batch_sizes, "32", "32,128"))
    args.threads = ints(args.threads)
    args.repeats = pick(args.repeats, 1, 5)
    args.steps = pick(args.steps, 2, 6)
    args.matmul_size = pick(args.matmul_size, 1024, 2048)
    args.compile = pick(args.compile, False, True)
    args.profile = pick(args.profile, False, True)
    args.loss_steps = pick(args.loss_steps, 2, 300)
    args.loss_eval_sentences = pick(args.loss_eval_sentences, 200, None)
    args.env_repeats = pick(args.env_repeats, 0, 3)
    args.decode_batch_sizes = ints(pick(args.decode_batch_sizes, "1,16", "1,64,512,1000"))
    args.beams = ints(pick(args.beams, "5", "5"))
    args.max_beam_batch = pick(args.max_beam_batch, 16, 64)
    args.isa_caps = [x for x in args.isa_caps.split(",") if x]
    args.isa_repeats = pick(args.isa_repeats, 1, 3)
    args.single_sentences = pick(args.single_sentences, 4, 64)
    args.decode_repeats = pick(args.decode_repeats, 1, 3)
    args.compile_sizes = [x for x in pick(args.compile_sizes, "", args.sizes[0]).split(",") if x]
    args.max_new_tokens = pick(args.max_new_tokens, 20, None)
    args.stream_sentences = pick(args.stream_sentences, 256, 100_000)
    args.impute_batch_size = pick(args.impute_batch_size, 8, 64)
    return args


def run(argv=None) -> dict[str, Any]:
    """Run the benchmarks; returns the results (also written to --output)."""
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads[0])
    results: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/run_benchmarks.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(),
        "settings": {k: v for k, v in vars(args).items() if k != "probe"},
    }
    data = load_data(args)
    results["data"] = data["info"]
    results["training"] = []
    results["profiles"] = []
    sections = args.sections

    def done(what: str) -> None:
        print(f"[{time.perf_counter() - started:.0f}s] {what} done", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="sentence_vae_bench_") as tmp:
        workdir = Path(tmp)
        corpus = data["corpora"]["train"]
        if "training" in sections:
            for size in args.sizes:
                config = model_config(data["tokenizer"], size)
                for batch_size in args.batch_sizes:
                    entry = bench_training(corpus, config, batch_size, default_arms(args, size), args)
                    entry["size"] = size
                    entry["flops_per_token"] = flops_of_lengths(config, corpus.lengths) / max(corpus.num_tokens, 1)
                    results["training"].append(entry)
                    done(f"training {size} batch {batch_size}")
        if "memory" in sections and not args.no_memory:
            probe_arms = [a for a in default_arms(args, "") if a.name in (REFERENCE, "bf16", PEER_ARMS[0], "baseline")]
            if args.quick:
                probe_arms = probe_arms[:1]
            probes = memory_probes(data, args.sizes, args.batch_sizes, probe_arms, args, workdir)
            results["training_memory"] = probes
            for probe in probes:
                for entry in results["training"]:
                    if entry["size"] == probe["size"] and entry["batch_size"] == probe["batch_size"]:
                        if probe["arm"] in entry["arms"]:
                            entry["arms"][probe["arm"]]["peak_rss_mb"] = probe.get("peak_rss_mb")
            done("memory probes")
        if "allocator" in sections and args.env_repeats and not args.no_memory:
            results["allocator_env"] = bench_allocator_env(data, args.sizes[0], args.batch_sizes, args, workdir)
            done("allocator comparison")
        if "profile" in sections and args.profile:
            batch_size = args.batch_sizes[0]
            for size in args.sizes:
                config = model_config(data["tokenizer"], size)
                arms = [Arm(REFERENCE), Arm("bf16", bf16=True)]
                if not args.no_peer:
                    arms.append(Arm(PEER_ARMS[1], peer=True, packed=False))
                for arm in arms:
                    prof = profile_training(corpus, config, batch_size, arm, steps=max(4, steps_for(batch_size, args)))
                    prof["size"] = size
                    results["profiles"].append(prof)
            done("profiles")
        trained = None
        if "loss" in sections:
            loss_config = model_config(data["tokenizer"], args.sizes[0])
            results["bf16_loss"], trained = bf16_loss_effect(data["corpora"], loss_config, args)
            done("bf16 loss comparison")
        model = None
        if args.decode_model:
            model = SentenceVAEModel.from_pretrained(args.decode_model)
            model_name = args.decode_model
            with contextlib.suppress(OSError, ValueError):
                saved = json.loads((Path(args.decode_model) / "eval_results.json").read_text())
                step = saved.get("step", saved.get("global_step"))
                if step is not None:
                    model_name += f" (training step {step})"
        elif trained is not None:
            model = trained
            model_name = f"{args.sizes[0]} size after the {args.loss_steps}-step fp32 run of the loss comparison"
        wants_model = {"decoding", "imputation", "stream", "isa"} & set(sections) and not args.no_decoding
        if wants_model and model is None:
            results["decoding_skipped"] = "no model: pass --decode_model or include the 'loss' section"
        elif wants_model:
            if "decoding" in sections:
                previous = None
                if args.compare_rev:
                    previous = factory(load_revision(args.compare_rev, workdir))(model.config)
                    previous.load_state_dict(model.state_dict())
                    previous.generation_config = copy.deepcopy(model.generation_config)
                    previous.eval()
                results["decoding"] = bench_decoding(model, args, previous)
                results["decoding"]["model"] = model_name
                results["decoding"]["compare_rev"] = args.compare_rev
                done("decoding")
            if "isa" in sections:
                model_dir = workdir / "isa_model"
                model.save_pretrained(model_dir)
                results["isa"] = bench_isa(data, args, workdir, str(model_dir))
                done("isa comparison")
            if "imputation" in sections:
                results["imputation"] = bench_imputation(model, data["corpora"]["validation"], args)
                results["imputation"]["model"] = model_name
                done("imputation")
            if "stream" in sections and not args.no_memory:
                model_dir = workdir / "decode_model"
                model.save_pretrained(model_dir)
                data["tokenizer"].save_pretrained(model_dir)
                spec = {
                    "kind": "decode_stream",
                    "model_dir": str(model_dir),
                    "sentences": args.stream_sentences,
                    "batch_size": max(args.decode_batch_sizes),
                    "max_new_tokens": args.max_new_tokens,
                    "threads": args.threads[0],
                }
                results["decoding_memory"] = run_probe(spec)
                results["decoding_memory"]["model"] = model_name
                done("streamed decoding probe")
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    markdown = render_markdown(results)
    results["markdown"] = markdown
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1, default=str) + "\n")
    if args.markdown_output:
        Path(args.markdown_output).write_text(markdown + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks (or with `--probe SPEC` one memory probe, printing its JSON); returns the exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    if "--probe" in args_list:
        spec = json.loads(args_list[args_list.index("--probe") + 1])
        result = isa_probe(spec) if spec["kind"] == "isa" else probe_main(spec)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    results = run(args_list)
    sys.stdout.write(results["markdown"] + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
