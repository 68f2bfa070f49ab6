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
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from baseline import StraightforwardVAE, straightforward_batches  # noqa: E402

from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel, build_tokenizer  # noqa: E402
from hf_sentence_vae.data import TokenizedCorpus, bucketed_batches  # noqa: E402
from hf_sentence_vae.rate_control import KLSchedule  # noqa: E402
from hf_sentence_vae.training import TrainingConfig, bound_metrics, build_optimizer, evaluate_bound, step_noise  # noqa: E402

SEED = 42
# Decoding is timed greedy (and the beam widths named), whatever a model's generation_config prefers.
GREEDY = dict(num_beams=1, do_sample=False, suppress_tokens=None)
MAX_GRAD_NORM = 5.0  # the training loop's default --max_grad_norm

# Model sizes: the paper's standard PTB VAE (Table 11) and the 512-unit LSTMs of its Section 5 (embedding and z
# kept from Table 11, which Section 5 does not give); "tiny" is for smoke tests.
SIZES: dict[str, dict[str, int]] = {
    "standard": dict(embedding_size=353, encoder_hidden_size=191, decoder_hidden_size=191, latent_size=13),
    "hidden512": dict(embedding_size=353, encoder_hidden_size=512, decoder_hidden_size=512, latent_size=13),
    "tiny": dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4),
}


# --------------------------------------------------------------------------- machine and measurement helpers
def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def rss_mb() -> float:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set size: VmHWM (unlike ru_maxrss, not inherited from the forking parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def machine_info() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "isa": [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "default_num_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OMP_", "MKL_", "MALLOC_"))},
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def matmul_rate(dtype: torch.dtype, size: int, reps: int = 2) -> tuple[float, float]:
    """Dense matmul rate in GFLOP/s of wall-clock and of process CPU time: medians of `reps` timed
    (size x size) @ (size x size) products."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    wall, cpu = [], []
    for _ in range(reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.mm(a, b)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    flops = 2 * size**3 / 1e9
    return flops / statistics.median(wall), flops / max(statistics.median(cpu), 1e-9)


def flops_of_lengths(config: SentenceVAEConfig, lengths: np.ndarray) -> float:
    """Matmul FLOPs of one training step on sentences of these lengths (ids incl. <bos> and <eos>): LSTM gates
    and output projection, forward plus backward (= 3x forward), real positions only."""
    e, he, hd, z, v = (
        config.embedding_size,
        config.encoder_hidden_size,
        config.decoder_hidden_size,
        config.latent_size,
        config.vocab_size,
    )
    lengths = np.asarray(lengths, dtype=np.float64)
    encoder = 0.0
    if config.latent_size > 0:
        encoder = 2 * 4 * he * (e + he) * (2 if config.bidirectional_encoder else 1) * lengths.sum()
    decoder_in = e + (z if config.latent_injection == "initial_state_and_inputs" else 0)
    decoder = (2 * 4 * hd * (decoder_in + hd) + 2 * hd * v) * (lengths - 1).sum()
    return 3.0 * (encoder + decoder)


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------- data
def default_data_dir() -> Path:
    env = os.environ.get("SENTENCE_VAE_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def synthetic_lines(num: int, vocab: int, seed: int) -> list[str]:
    """PTB-like lengths (2-30 words), Zipfian word frequencies; for smoke runs without data."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1)
    probs = (1.0 / ranks) / (1.0 / ranks).sum()
    lengths = np.clip(rng.normal(12, 6, num).round().astype(int), 2, 30)
    return [" ".join(f"w{i}" for i in rng.choice(vocab, n, p=probs)) for n in lengths]


def load_data(args) -> dict[str, Any]:
    """Tokenizer and corpora (train, validation) as `TokenizedCorpus`es."""
    start = time.perf_counter()
    if args.tiny:
        lines = {"train": synthetic_lines(2000, 60, 0), "validation": synthetic_lines(200, 60, 1)}
        source = "synthetic (--tiny)"
    else:
        folder = Path(args.data_dir) / "ptb"
        lines = {}
        for split, name in (("train", "ptb.train.txt"), ("validation", "ptb.valid.txt")):
            path = folder / name
            if not path.is_file():
                raise SystemExit(f"missing {path}: pass --data_dir (the folder holding ptb/) or --tiny")
            lines[split] = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        source = str(folder)
    tokenizer = build_tokenizer(lines["train"])
    corpora = {
        split: TokenizedCorpus.from_lists(tokenizer(text)["input_ids"], tokenizer.pad_token_id)
        for split, text in lines.items()
    }
    train = corpora["train"]
    return {
        "tokenizer": tokenizer,
        "corpora": corpora,
        "info": {
            "source": source,
            "vocab_size": len(tokenizer),
            "train_sentences": len(train),
            "train_target_tokens": train.num_tokens,
            "mean_length_ids": float(train.lengths.mean()),
            "max_length_ids": int(train.lengths.max()),
            "load_seconds": round(time.perf_counter() - start, 2),
        },
    }


def model_config(tokenizer, size: str) -> SentenceVAEConfig:
    return SentenceVAEConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        unk_token_id=tokenizer.unk_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **SIZES[size],
    )


# --------------------------------------------------------------------------- training arms
@dataclass(frozen=True)
class Arm:
    """One training configuration. `fp32` at 1 thread is the reference: the training loop as it is."""

    name: str
    threads: int = 1
    bf16: bool = False
    fused_adam: bool = False
    compile: bool = False
    baseline: bool = False

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


REFERENCE = "fp32"
SECTIONS = ("training", "memory", "allocator", "profile", "loss", "decoding", "imputation", "stream")


def default_arms(args, size: str) -> list[Arm]:
    arms = [Arm(REFERENCE), Arm("fp32+fused_adam", fused_adam=True), Arm("bf16+fused_adam", bf16=True, fused_adam=True)]
    if args.compile and size in args.compile_sizes:
        arms.append(Arm("fp32+fused_adam+compile", fused_adam=True, compile=True))
    for threads in args.threads:
        if threads != args.threads[0]:
            arms.append(Arm(f"fp32@{threads}threads", threads=threads))
    if not args.no_baseline:
        arms.append(Arm("baseline", baseline=True))
    return arms


class TrainState:
    """A model and its optimizer for one arm; `step` runs one training step and returns its target tokens."""

    def __init__(
        self, arm: Arm, config: SentenceVAEConfig, corpus: TokenizedCorpus, init_seed: int = 0, model_factory=None
    ):
        self.arm, self.config, self.corpus = arm, config, corpus
        torch.manual_seed(init_seed)
        library = SentenceVAEModel(config).train()
        if model_factory is not None:  # another implementation (e.g. an older revision), same initial weights
            other = model_factory(config).train()
            other.load_state_dict(library.state_dict())
            library = other
        if arm.baseline:
            self.model = StraightforwardVAE(config).train()
            self.model.load_state_dict(library.state_dict())  # same initial weights as the library arms
            self.pad_to = int(corpus.lengths.max())
        else:
            self.model = library
        params = [p for p in self.model.parameters() if p.requires_grad]
        if arm.fused_adam:
            self.optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
        else:  # exactly the training loop's optimizer
            self.optimizer = build_optimizer(self.model, TrainingConfig(train_file="unused"))
        self.forward = torch.compile(self.model, dynamic=True) if arm.compile else self.model
        self.kl_schedule = KLSchedule()
        self.losses: list[float] = []

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.arm.bf16 else contextlib.nullcontext()

    def step(self, indices: np.ndarray, micro_step: int) -> int:
        config = self.config
        kl_weight = self.kl_schedule(micro_step)
        if self.arm.baseline:
            width = self.pad_to
        else:
            width = int(self.corpus.lengths[indices].max())
        latent_noise, word_noise = step_noise(SEED, micro_step, len(indices), config.latent_size, width)
        batch = self.corpus.batch(indices, pad_to=width)
        with self.autocast():
            if self.arm.baseline:
                loss = self.forward(
                    batch["input_ids"],
                    batch["attention_mask"],
                    kl_weight,
                    config.word_keep_rate,
                    latent_noise,
                    word_noise,
                )
            else:
                out = self.forward(
                    **batch,
                    kl_weight=kl_weight,
                    free_bits=0.0,
                    return_logits=False,
                    latent_noise=latent_noise,
                    word_dropout_noise=word_noise,
                )
                loss = out.loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))
        return int(batch["attention_mask"].sum()) - len(indices)


def batch_plan(corpus: TokenizedCorpus, batch_size: int, arm: Arm) -> list[np.ndarray]:
    if arm.baseline:
        return straightforward_batches(len(corpus), batch_size, seed=SEED)
    return bucketed_batches(corpus.lengths, batch_size, seed=SEED, epoch=0)


def representative_batches(plan: list[np.ndarray], lengths: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` batches of the plan at evenly spaced quantiles of padded width (the same ones in every repetition:
    oneDNN builds an LSTM kernel per new sequence length, so the warm-up repetition meets every shape once)."""
    order = sorted(range(len(plan)), key=lambda i: int(lengths[plan[i]].max()))
    return [plan[order[int((i + 0.5) * len(order) / count)]] for i in range(count)]


def steps_for(batch_size: int, args) -> int:
    """Steps per run: `--steps` at batch 32, fewer for larger batches (about the same tokens per run)."""
    return max(min(3, args.steps), round(args.steps * 32 / batch_size))


def bench_training(corpus, config, batch_size: int, arms: list[Arm], args) -> dict[str, Any]:
    """Interleaved repetitions of a fixed set of steps per arm; returns per-arm runs and summaries."""
    steps = steps_for(batch_size, args)
    plans = {
        arm.name: representative_batches(batch_plan(corpus, batch_size, arm), corpus.lengths, steps) for arm in arms
    }
    states = {}
    setup = {}
    failed = {}
    for arm in list(arms):
        torch.set_num_threads(arm.threads)
        start = time.perf_counter()
        try:
            states[arm.name] = TrainState(arm, config, corpus)
            if arm.compile:  # compile outside the timed repetitions (dynamic shapes: one compilation serves all)
                for i, idx in enumerate(plans[arm.name]):
                    states[arm.name].step(idx, 10_000 + i)
        except Exception as err:  # e.g. torch.compile without a working C++ toolchain: report, go on
            failed[arm.name] = f"{type(err).__name__}: {err}"[:500]
            states.pop(arm.name, None)
            arms = [a for a in arms if a.name != arm.name]
            continue
        setup[arm.name] = round(time.perf_counter() - start, 2)
    rate_keys = sorted({(arm.threads, arm.dtype) for arm in arms})
    runs: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    total = args.warmup + args.repeats
    for rep in range(total):
        rates = {}
        for threads, dtype in rate_keys:
            torch.set_num_threads(threads)
            rates[(threads, dtype)] = matmul_rate(getattr(torch, dtype), args.matmul_size)
        for arm in arms:
            torch.set_num_threads(arm.threads)
            picks = plans[arm.name]
            state = states[arm.name]
            load = load_average()
            start, start_cpu = time.perf_counter(), time.process_time()
            tokens = sum(state.step(idx, rep * steps + i) for i, idx in enumerate(picks))
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
            flops = sum(flops_of_lengths(config, corpus.lengths[idx]) for idx in picks)
            rate, rate_cpu = rates[(arm.threads, arm.dtype)]
            runs[arm.name].append(
                {
                    "warmup": rep < args.warmup,
                    "tokens": tokens,
                    "seconds": seconds,
                    "cpu_seconds": cpu_seconds,
                    "tokens_per_second": tokens / seconds,
                    "tokens_per_cpu_second": tokens / cpu_seconds,
                    "gflops": flops / seconds / 1e9,
                    "matmul_gflops": rate,
                    "fraction_of_matmul": flops / seconds / 1e9 / rate,
                    "matmul_gflops_cpu_time": rate_cpu,
                    "fraction_of_matmul_cpu_time": flops / cpu_seconds / 1e9 / rate_cpu,
                    "load": load,
                }
            )
    torch.set_num_threads(args.threads[0])
    summary = {}
    measured = {name: [r for r in rs if not r["warmup"]] for name, rs in runs.items()}
    for arm in arms:
        mine = measured[arm.name]

        def paired(other: str, mine=mine, key: str = "tokens_per_second") -> float | None:
            if other not in measured:
                return None
            return median(a[key] / b[key] for a, b in zip(mine, measured[other]))

        total_tokens = sum(r["tokens"] for r in runs[arm.name])
        total_flops = sum(r["gflops"] * r["seconds"] for r in runs[arm.name]) * 1e9
        summary[arm.name] = {
            "arm": asdict(arm),
            "tokens_per_second": median(r["tokens_per_second"] for r in mine),
            "ratio_vs_fp32": paired(REFERENCE),
            "ratio_vs_baseline": paired("baseline"),
            "achieved_gflops": median(r["gflops"] for r in mine),
            "matmul_gflops": median(r["matmul_gflops"] for r in mine),
            "fraction_of_matmul": median(r["fraction_of_matmul"] for r in mine),
            "tokens_per_cpu_second": median(r["tokens_per_cpu_second"] for r in mine),
            "ratio_vs_fp32_cpu_time": paired(REFERENCE, key="tokens_per_cpu_second"),
            "fraction_of_matmul_cpu_time": median(r["fraction_of_matmul_cpu_time"] for r in mine),
            "cpu_over_wall": median(r["cpu_seconds"] / r["seconds"] for r in mine),
            "flops_per_token": total_flops / max(total_tokens, 1),
            "load_median": median(r["load"] for r in mine),
            "setup_seconds": setup[arm.name],
            "runs": runs[arm.name],
        }
    return {"batch_size": batch_size, "steps_per_run": steps, "arms": summary, "failed_arms": failed}


def profile_training(corpus, config, batch_size: int, arm: Arm, steps: int, top: int = 14) -> dict[str, Any]:
    """torch.profiler over `steps` steps of one arm: the operators with the most self CPU time per step."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(arm.threads)
    state = TrainState(arm, config, corpus)
    plan = representative_batches(batch_plan(corpus, batch_size, arm), corpus.lengths, steps)
    for i, idx in enumerate(plan):  # warm-up over the same shapes
        state.step(idx, i)
    tokens = 0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for i, idx in enumerate(plan):
            tokens += state.step(idx, steps + i)
        seconds = time.perf_counter() - start
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "arm": arm.name,
        "batch_size": batch_size,
        "steps": steps,
        "ms_per_step": seconds / steps * 1e3,
        "tokens_per_step": tokens / steps,
        "load": load_average(),
        "top_ops": [
            {
                "op": e.key,
                "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "percent": 100.0 * e.self_cpu_time_total / total_us,
                "calls_per_step": e.count / steps,
            }
            for e in events[:top]
        ],
    }


# --------------------------------------------------------------------------- bf16's effect on the loss
def bf16_loss_effect(corpora, config, args) -> tuple[dict[str, Any], SentenceVAEModel]:
    """Train the same initial model fp32 and bf16-autocast on the same batches and noise (the training loop's
    step), then evaluate both on the validation split in fp32. Returns the report and the fp32 model."""
    corpus, valid = corpora["train"], corpora["validation"]
    arms = [Arm(REFERENCE), Arm("bf16", bf16=True)]
    states = {arm.name: TrainState(arm, config, corpus) for arm in arms}
    plan = bucketed_batches(corpus.lengths, args.loss_batch_size, seed=SEED, epoch=0)
    seconds = {arm.name: 0.0 for arm in arms}
    tokens = {arm.name: 0 for arm in arms}
    torch.set_num_threads(args.threads[0])
    for step in range(args.loss_steps):
        for arm in arms:
            start = time.perf_counter()
            tokens[arm.name] += states[arm.name].step(plan[step % len(plan)], step)
            seconds[arm.name] += time.perf_counter() - start
    losses = {name: np.asarray(state.losses) for name, state in states.items()}
    diff = losses["bf16"] - losses[REFERENCE]
    window = max(1, min(50, args.loss_steps // 4))
    if args.loss_eval_sentences:
        valid = TokenizedCorpus.from_lists(
            [
                valid.ids[valid.offsets[i] : valid.offsets[i + 1]]
                for i in range(min(args.loss_eval_sentences, len(valid)))
            ],
            valid.pad_token_id,
        )
    evaluation = {}
    for name, state in states.items():
        sums = evaluate_bound(state.model, valid, 128, seed=SEED)
        evaluation[name] = bound_metrics(sums, "validation")
    report = {
        "steps": args.loss_steps,
        "batch_size": args.loss_batch_size,
        "train_loss_first_window": {k: float(v[:window].mean()) for k, v in losses.items()},
        "train_loss_last_window": {k: float(v[-window:].mean()) for k, v in losses.items()},
        "window": window,
        "mean_abs_step_loss_difference": float(np.abs(diff).mean()),
        "max_abs_step_loss_difference": float(np.abs(diff).max()),
        "mean_relative_step_loss_difference": float(np.abs(diff / losses[REFERENCE]).mean()),
        "validation_fp32_eval": evaluation,
        "time_ratio_bf16_over_fp32": seconds["bf16"] / seconds[REFERENCE],
        # Every step a new batch (new shapes), as in a real run; the training loop's optimizer (Adam).
        "tokens_per_second": {name: tokens[name] / seconds[name] for name in seconds},
        "load": load_average(),
    }
    return report, states[REFERENCE].model


# --------------------------------------------------------------------------- decoding
def decoding_arms(args) -> list[tuple[str, int, int, int]]:
    """(mode, num_beams, batch size, threads)."""
    arms = []
    for beams in [1, *args.beams]:
        for batch in args.decode_batch_sizes:
            arms.append(("greedy" if beams == 1 else f"beam{beams}", beams, batch, 1))
    for threads in args.threads:
        if threads != args.threads[0]:
            arms.append(("greedy", 1, max(args.decode_batch_sizes), threads))
    return arms


@torch.no_grad()
def bench_decoding(model: SentenceVAEModel, args) -> dict[str, Any]:
    """Sentences per second from prior samples. In each repetition every arm decodes the first codes of one
    draw: batch b decodes b codes in one call, batch 1 decodes `--single_sentences` of them one by one."""
    model.eval()
    arms = decoding_arms(args)
    largest = max(args.decode_batch_sizes + [args.single_sentences])
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.warmup + args.decode_repeats):
        codes = model.sample_prior(largest, generator=torch.Generator().manual_seed(SEED + rep))
        for mode, beams, batch, threads in arms:
            if beams > 1 and batch > args.max_beam_batch:
                continue
            key = f"{mode}/batch{batch}" + (f"@{threads}threads" if threads != args.threads[0] else "")
            torch.set_num_threads(threads)
            count = args.single_sentences if batch == 1 else batch
            load = load_average()
            start = time.perf_counter()
            lengths = []
            for i in range(0, count, batch):
                out = model.generate(
                    latent=codes[i : i + batch],
                    num_beams=beams,
                    max_new_tokens=args.max_new_tokens,
                    suppress_tokens=None,
                )
                lengths.append(out.ne(model.config.pad_token_id).sum(-1))
            seconds = time.perf_counter() - start
            lengths = torch.cat(lengths).float()
            runs.setdefault(key, []).append(
                {
                    "warmup": rep < args.warmup,
                    "sentences_per_second": count / seconds,
                    "seconds": seconds,
                    "sentences": count,
                    "mean_length": float(lengths.mean()),
                    "max_length": int(lengths.max()),
                    "ms_per_token": seconds / float(lengths.sum()) * 1e3,
                    "load": load,
                }
            )
    torch.set_num_threads(args.threads[0])
    measured = {k: [r for r in v if not r["warmup"]] for k, v in runs.items()}
    summary = {}
    for key, mine in measured.items():
        mode = key.split("/")[0]
        single = measured.get(f"{mode}/batch1")
        speedup = None
        if single:
            speedup = median(a["sentences_per_second"] / b["sentences_per_second"] for a, b in zip(mine, single))
        summary[key] = {
            "sentences_per_second": median(r["sentences_per_second"] for r in mine),
            "per_sentence_speedup_vs_batch1": speedup,
            "mean_length": median(r["mean_length"] for r in mine),
            "max_length": max(r["max_length"] for r in mine),
            "ms_per_token": median(r["ms_per_token"] for r in mine),
            "load_median": median(r["load"] for r in mine),
            "runs": runs[key],
        }
    return {"max_new_tokens": args.max_new_tokens or model.config.max_sentence_length, "arms": summary}


def bench_imputation(model: SentenceVAEModel, corpus: TokenizedCorpus, args) -> dict[str, Any]:
    """ICM imputation (the paper's Section 5: the last 20% of the words, 3 ICM steps of a beam-5 search for a
    VAE, one beam-15 search for an RNNLM) of validation sentences: sentences per second at batch 1 and batched.
    Skipped (with the reason) where hf_sentence_vae has no `imputation.impute`."""
    try:
        from hf_sentence_vae.imputation import impute, suffix_unknown_mask
    except ImportError as err:
        return {"skipped": f"hf_sentence_vae has no imputation.impute ({err})"}
    rng = np.random.default_rng(SEED)
    batch_size = min(args.impute_batch_size, len(corpus))
    chosen = rng.choice(len(corpus), batch_size, replace=False)
    chosen = chosen[np.argsort(corpus.lengths[chosen], kind="stable")]  # length-sorted, as impute_texts batches
    runs: dict[str, list[dict[str, Any]]] = {}
    model.eval()
    for rep in range(args.warmup + args.decode_repeats):
        for batch in (1, batch_size):
            count = min(args.single_sentences, batch_size) if batch == 1 else batch_size
            picks = chosen if batch > 1 else chosen[np.linspace(0, batch_size - 1, count).round().astype(int)]
            start = time.perf_counter()
            for i in range(0, count, batch):
                b = corpus.batch(picks[i : i + batch])
                unknown = suffix_unknown_mask(b["attention_mask"], 0.2)
                impute(model, b["input_ids"], b["attention_mask"], unknown)
            seconds = time.perf_counter() - start
            runs.setdefault(f"batch{batch}", []).append(
                {"warmup": rep < args.warmup, "sentences_per_second": count / seconds, "load": load_average()}
            )
    measured = {k: [r for r in v if not r["warmup"]] for k, v in runs.items()}
    single = measured["batch1"]
    return {
        "setting": "last 20% of the words; VAE: 3 ICM steps of beam 5; RNNLM: beam 15 (impute's defaults)",
        "arms": {
            key: {
                "sentences_per_second": median(r["sentences_per_second"] for r in mine),
                "per_sentence_speedup_vs_batch1": median(
                    a["sentences_per_second"] / b["sentences_per_second"] for a, b in zip(mine, single)
                ),
                "load_median": median(r["load"] for r in mine),
                "runs": runs[key],
            }
            for key, mine in measured.items()
        },
    }


# --------------------------------------------------------------------------- memory probes (fresh processes)
def run_probe(spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `spec` in a fresh Python process (so its peak RSS is its own) and return its JSON result. With
    `extra_env`, the allocator settings of this process's environment are replaced by those given."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.get("threads", 1)), TOKENIZERS_PARALLELISM="false")
    if extra_env is not None:
        env = {k: v for k, v in env.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
        env.update(extra_env)
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def probe_main(spec: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(spec.get("threads", 1))
    if spec["kind"] == "train":
        data = np.load(spec["corpus"])
        corpus = TokenizedCorpus(data["ids"], data["offsets"], int(data["pad"]))
        config = SentenceVAEConfig(**spec["config"])
        arm = Arm(**spec["arm"])
        plan = batch_plan(corpus, spec["batch_size"], arm)
        # The batches with the most padded positions: the worst case for activations.
        plan = sorted(plan, key=lambda b: len(b) * int(corpus.lengths[b].max()), reverse=True)
        before = rss_mb()
        state = TrainState(arm, config, corpus)
        for i in range(spec["steps"]):
            state.step(plan[i % len(plan)], i)
        return {"rss_before_model_mb": before, "peak_rss_mb": peak_rss_mb(), "steps": spec["steps"]}
    if spec["kind"] == "train_speed":
        data = np.load(spec["corpus"])
        corpus = TokenizedCorpus(data["ids"], data["offsets"], int(data["pad"]))
        config = SentenceVAEConfig(**spec["config"])
        arm = Arm(**spec["arm"])
        picks = representative_batches(batch_plan(corpus, spec["batch_size"], arm), corpus.lengths, spec["steps"])
        state = TrainState(arm, config, corpus)
        for i, idx in enumerate(picks):  # warm-up over the same shapes
            state.step(idx, i)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = sum(state.step(idx, spec["steps"] + i) for i, idx in enumerate(picks))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - usage.ru_minflt
        return {
            "tokens_per_second": tokens / wall,
            "tokens_per_cpu_second": tokens / cpu,
            "minor_faults_per_step": faults / len(picks),
            "load": load_average(),
        }
    if spec["kind"] == "decode_stream":
        from transformers import AutoTokenizer

        model = SentenceVAEModel.from_pretrained(spec["model_dir"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
        before = rss_mb()
        generator = torch.Generator().manual_seed(SEED)
        done, tokens = 0, 0
        start = time.perf_counter()
        with open(os.devnull, "w") as sink, torch.no_grad():
            while done < spec["sentences"]:
                n = min(spec["batch_size"], spec["sentences"] - done)
                out = model.generate(
                    num_samples=n, generator=generator, max_new_tokens=spec["max_new_tokens"], **GREEDY
                )
                tokens += int(out.ne(model.config.pad_token_id).sum())
                sink.write("\n".join(tokenizer.batch_decode(out, skip_special_tokens=True)) + "\n")
                done += n
        seconds = time.perf_counter() - start
        return {
            "sentences": done,
            "batch_size": spec["batch_size"],
            "rss_before_decoding_mb": before,
            "peak_rss_mb": peak_rss_mb(),
            "seconds": seconds,
            "sentences_per_second": done / seconds,
            "mean_length": tokens / done,
        }
    raise ValueError(f"unknown probe kind {spec['kind']!r}")


# glibc allocator settings compared by `bench_allocator_env`: a training step allocates (N, V) buffers of
# 30-120 MB; glibc serves blocks above its mmap threshold (dynamic, at most 32 MB) with fresh pages every
# time, whose first touch page-faults.
ALLOCATOR_ENVS: dict[str, dict[str, str]] = {
    "default": {},
    "hugepages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "mmap_threshold_32M": {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"},
}


def bench_allocator_env(data, size: str, batch_sizes, args, workdir: Path) -> list[dict[str, Any]]:
    """Training speed (fp32 + fused Adam) under each allocator setting, in fresh processes run alternately
    (A B C A B C ...); ratios are taken pair by pair against the default."""
    path = corpus_file(data, workdir)
    config = model_config(data["tokenizer"], size).to_diff_dict()
    config.pop("transformers_version", None)
    config.pop("model_type", None)
    results = []
    for batch_size in batch_sizes:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ALLOCATOR_ENVS}
        for _ in range(args.env_repeats):
            for name, env in ALLOCATOR_ENVS.items():
                spec = {
                    "kind": "train_speed",
                    "corpus": str(path),
                    "config": config,
                    "batch_size": batch_size,
                    "arm": asdict(Arm("fp32+fused_adam", fused_adam=True)),
                    "steps": steps_for(batch_size, args),
                    "threads": args.threads[0],
                }
                runs[name].append(run_probe(spec, env))
        for name, env in ALLOCATOR_ENVS.items():
            good = [(a, b) for a, b in zip(runs[name], runs["default"]) if "error" not in a and "error" not in b]
            results.append(
                {
                    "size": size,
                    "batch_size": batch_size,
                    "setting": name,
                    "env": env,
                    "tokens_per_second": median(a["tokens_per_second"] for a, _ in good),
                    "ratio_vs_default": median(a["tokens_per_second"] / b["tokens_per_second"] for a, b in good),
                    "ratio_vs_default_cpu_time": median(
                        a["tokens_per_cpu_second"] / b["tokens_per_cpu_second"] for a, b in good
                    ),
                    "minor_faults_per_step": median(a["minor_faults_per_step"] for a, _ in good),
                    "runs": runs[name],
                }
            )
    return results


def corpus_file(data, workdir: Path) -> Path:
    corpus = data["corpora"]["train"]
    path = workdir / "corpus.npz"
    if not path.exists():
        np.savez(path, ids=corpus.ids, offsets=corpus.offsets, pad=corpus.pad_token_id)
    return path


def memory_probes(data, sizes, batch_sizes, arms: list[Arm], args, workdir: Path) -> list[dict[str, Any]]:
    path = corpus_file(data, workdir)
    results = []
    for size in sizes:
        config = model_config(data["tokenizer"], size)
        for batch_size in batch_sizes:
            for arm in arms:
                spec = {
                    "kind": "train",
                    "corpus": str(path),
                    "config": config.to_diff_dict(),
                    "batch_size": batch_size,
                    "arm": asdict(arm),
                    "steps": args.memory_steps,
                    "threads": arm.threads,
                }
                spec["config"].pop("transformers_version", None)
                spec["config"].pop("model_type", None)
                result = run_probe(spec)
                results.append({"size": size, "batch_size": batch_size, "arm": arm.name, **result})
    return results


# --------------------------------------------------------------------------- report
def fmt(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def render_markdown(results: dict[str, Any]) -> str:
    lines = []
    machine = results["machine"]
    lines.append(f"Command: `{results['command']}`  ")
    lines.append(
        f"Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs ({', '.join(machine['isa'])}), "
        f"torch {machine['torch']}; load average at start {machine['load_average_start']}, "
        f"at end {machine.get('load_average_end')}.  "
    )
    lines.append(f"Data: {results['data']['source']} ({results['data']['train_sentences']} training sentences).")
    lines.append("")
    for entry in results["training"]:
        lines.append(
            f"Training, {entry['size']} size (FLOPs/token {fmt(entry['flops_per_token'] / 1e6, 1)} M), "
            f"batch {entry['batch_size']}, {entry['steps_per_run']} steps per run:"
        )
        lines.append("")
        lines.append(
            "| arm | threads | tokens/s | x fp32 | x baseline | GFLOP/s | matmul GFLOP/s | % of matmul "
            "| % of matmul (CPU time) | CPU/wall | peak RSS MB | load |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name, arm in entry["arms"].items():
            kind = "bf16" if arm["arm"]["bf16"] else "fp32"
            lines.append(
                f"| {name} | {arm['arm']['threads']} | {fmt(arm['tokens_per_second'])} | {fmt(arm['ratio_vs_fp32'], 2)} "
                f"| {fmt(arm['ratio_vs_baseline'], 2)} | {fmt(arm['achieved_gflops'], 1)} "
                f"| {fmt(arm['matmul_gflops'], 0)} ({kind}) | {fmt(100 * arm['fraction_of_matmul'], 0, '%')} "
                f"| {fmt(100 * arm['fraction_of_matmul_cpu_time'], 0, '%')} | {fmt(arm['cpu_over_wall'], 2)} "
                f"| {fmt(arm.get('peak_rss_mb'), 0)} | {fmt(arm['load_median'], 1)} |"
            )
        lines.append("")
    if results.get("allocator_env"):
        lines.append("glibc allocator settings (fp32 + fused Adam, fresh processes run alternately):")
        lines.append("")
        lines.append("| size | batch | setting | tokens/s | x default | x default (CPU time) | minor faults/step |")
        lines.append("|---|---|---|---|---|---|---|")
        for row in results["allocator_env"]:
            env = " ".join(f"{k}={v}" for k, v in row["env"].items()) or "(none)"
            lines.append(
                f"| {row['size']} | {row['batch_size']} | {row['setting']}: `{env}` | {fmt(row['tokens_per_second'])} "
                f"| {fmt(row['ratio_vs_default'], 2)} | {fmt(row['ratio_vs_default_cpu_time'], 2)} "
                f"| {fmt(row['minor_faults_per_step'])} |"
            )
        lines.append("")
    if results.get("bf16_loss"):
        b = results["bf16_loss"]
        v = b["validation_fp32_eval"]
        lines.append(
            f"bf16 autocast vs fp32, same init, batches and noise, {b['steps']} steps of batch {b['batch_size']}: "
            f"mean |loss difference| per step {b['mean_abs_step_loss_difference']:.4f} nats/sentence "
            f"({100 * b['mean_relative_step_loss_difference']:.3f}%), max {b['max_abs_step_loss_difference']:.4f}; "
            f"training loss over the last {b['window']} steps fp32 {b['train_loss_last_window']['fp32']:.3f}, "
            f"bf16 {b['train_loss_last_window']['bf16']:.3f}; validation bound (fp32 evaluation) "
            f"fp32 {v['fp32']['validation_loss']:.3f}, bf16 {v['bf16']['validation_loss']:.3f} nats/sentence; "
            f"bf16/fp32 time {b['time_ratio_bf16_over_fp32']:.2f} (every step a new batch, the training loop's Adam: "
            f"fp32 {b['tokens_per_second']['fp32']:,.0f} tokens/s, bf16 {b['tokens_per_second']['bf16']:,.0f})."
        )
        lines.append("")
    if results.get("decoding"):
        d = results["decoding"]
        lines.append(f"Decoding from prior samples (max {d['max_new_tokens']} tokens; model: {d.get('model')}):")
        lines.append("")
        lines.append("| decoding | sentences/s | per-sentence x batch 1 | mean length | max length | load |")
        lines.append("|---|---|---|---|---|---|")
        for key, arm in d["arms"].items():
            lines.append(
                f"| {key} | {fmt(arm['sentences_per_second'], 1)} | {fmt(arm['per_sentence_speedup_vs_batch1'], 1)} "
                f"| {fmt(arm['mean_length'], 1)} | {arm['max_length']} | {fmt(arm['load_median'], 1)} |"
            )
        lines.append("")
    if results.get("decoding_memory"):
        m = results["decoding_memory"]
        if "error" in m:
            lines.append(f"Streamed decoding probe failed: {m['error'][-300:]}")
        else:
            lines.append(
                f"Streamed greedy decoding of {m['sentences']:,} sentences in batches of {m['batch_size']}: peak RSS "
                f"{m['peak_rss_mb']:.0f} MB ({m['rss_before_decoding_mb']:.0f} MB before decoding), "
                f"{m['sentences_per_second']:.0f} sentences/s, mean length {m['mean_length']:.1f}."
            )
        lines.append("")
    imputation = results.get("imputation")
    if imputation and "arms" in imputation:
        lines.append(f"ICM imputation of validation sentences ({imputation['setting']}):")
        lines.append("")
        lines.append("| imputation | sentences/s | per-sentence x batch 1 | load |")
        lines.append("|---|---|---|---|")
        for key, arm in imputation["arms"].items():
            lines.append(
                f"| {key} | {fmt(arm['sentences_per_second'], 1)} | {fmt(arm['per_sentence_speedup_vs_batch1'], 1)} "
                f"| {fmt(arm['load_median'], 1)} |"
            )
        lines.append("")
    elif imputation:
        lines.append(f"ICM imputation: {imputation}")
        lines.append("")
    for prof in results.get("profiles", []):
        lines.append(
            f"Profile, {prof['size']} size, {prof['arm']}, batch {prof['batch_size']} "
            f"({prof['ms_per_step']:.0f} ms/step under the profiler, load {prof['load']}):"
        )
        lines.append("")
        lines.append("| op | ms/step | % | calls/step |")
        lines.append("|---|---|---|---|")
        for op in prof["top_ops"]:
            lines.append(f"| {op['op']} | {op['ms_per_step']:.1f} | {op['percent']:.1f} | {op['calls_per_step']:.0f} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(default_data_dir()), help="folder holding ptb/ptb.{train,valid}.txt")
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
    parser.add_argument("--no_baseline", action="store_true")
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
    args.sizes = pick(args.sizes, "tiny" if args.tiny else "standard", "tiny" if args.tiny else "standard,hidden512")
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
    args.decode_batch_sizes = ints(pick(args.decode_batch_sizes, "1,16", "1,64,512"))
    args.beams = ints(pick(args.beams, "5", "5,15"))
    args.max_beam_batch = pick(args.max_beam_batch, 16, 512)
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
            probe_arms = [a for a in default_arms(args, "") if a.name in (REFERENCE, "bf16+fused_adam", "baseline")]
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
            config = model_config(data["tokenizer"], args.sizes[0])
            for batch_size in args.batch_sizes:
                for arm in (Arm(REFERENCE), Arm("bf16+fused_adam", bf16=True, fused_adam=True)):
                    prof = profile_training(corpus, config, batch_size, arm, steps=max(4, steps_for(batch_size, args)))
                    prof["size"] = args.sizes[0]
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
        wants_model = {"decoding", "imputation", "stream"} & set(sections) and not args.no_decoding
        if wants_model and model is None:
            results["decoding_skipped"] = "no model: pass --decode_model or include the 'loss' section"
        elif wants_model:
            if "decoding" in sections:
                results["decoding"] = bench_decoding(model, args)
                results["decoding"]["model"] = model_name
                done("decoding")
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


def main(argv=None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    if "--probe" in args_list:
        spec = json.loads(args_list[args_list.index("--probe") + 1])
        print(json.dumps(probe_main(spec)))
        return
    results = run(argv)
    print(results["markdown"])


if __name__ == "__main__":
    main()
