"""Training throughput: each configuration ("arm") against the machine's matmul rate and the baseline, a profile of
a step, and bf16's effect on the loss (see run_benchmarks.py for the method)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from baseline import StraightforwardVAE, straightforward_batches
from measure import (
    MAX_GRAD_NORM,
    SEED,
    flops_of_lengths,
    load_average,
    matmul_rate,
    median,
)
from peer_reference import PeerStyleVAE, peer_batches

from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel
from hf_sentence_vae.data import TokenizedCorpus, bucketed_batches
from hf_sentence_vae.rate_control import KLSchedule
from hf_sentence_vae.training import TrainingConfig, bound_metrics, build_optimizer, evaluate_bound, step_noise


@dataclass(frozen=True)
class Arm:
    """One training configuration. `fp32` at 1 thread is the reference: the training loop as it is."""

    name: str
    threads: int = 1
    bf16: bool = False
    fused_adam: bool = False
    compile: bool = False
    baseline: bool = False
    peer: bool = False
    packed: bool = True

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


REFERENCE = "fp32"
# The peer-style reference (peer_reference.py), with packed LSTMs as the peer has them and with padded ones; a
# configuration's "x peer design" ratio is taken against the faster of the two in each repetition.
PEER_ARMS = ("peer design", "peer design, padded LSTMs")


def default_arms(args, size: str) -> list[Arm]:
    arms = [Arm(REFERENCE), Arm("bf16", bf16=True)]
    if not args.no_peer:
        arms += [Arm(PEER_ARMS[0], peer=True), Arm(PEER_ARMS[1], peer=True, packed=False)]
    if args.compile and size in args.compile_sizes:
        arms.append(Arm("fp32+compile", compile=True))
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
        elif arm.peer:
            self.model = PeerStyleVAE(config, packed=arm.packed).train()
            self.model.load_state_dict(library.state_dict())
        else:
            self.model = library
        params = [p for p in self.model.parameters() if p.requires_grad]
        if arm.peer:  # the peer's optimizer: torch.optim.Adam with its defaults (the for-each implementation)
            self.optimizer = torch.optim.Adam(params, lr=1e-3)
        elif arm.fused_adam:
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
            if self.arm.baseline or self.arm.peer:
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
        if not self.arm.peer:  # the peer does not clip gradients
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))
        return int(batch["attention_mask"].sum()) - len(indices)


def batch_plan(corpus: TokenizedCorpus, batch_size: int, arm: Arm) -> list[np.ndarray]:
    if arm.baseline:
        return straightforward_batches(len(corpus), batch_size, seed=SEED)
    if arm.peer:
        return peer_batches(len(corpus), batch_size, seed=SEED)
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

        def paired_peer(mine=mine, key: str = "tokens_per_second") -> float | None:
            peers = [measured[name] for name in PEER_ARMS if name in measured]
            if not peers:
                return None
            return median(a[key] / max(p[key] for p in rep) for a, *rep in zip(mine, *peers))

        total_tokens = sum(r["tokens"] for r in runs[arm.name])
        total_flops = sum(r["gflops"] * r["seconds"] for r in runs[arm.name]) * 1e9
        summary[arm.name] = {
            "arm": asdict(arm),
            "tokens_per_second": median(r["tokens_per_second"] for r in mine),
            "ratio_vs_fp32": paired(REFERENCE),
            "ratio_vs_peer": paired_peer(),
            "ratio_vs_peer_cpu_time": paired_peer(key="tokens_per_cpu_second"),
            "ratio_vs_baseline": paired("baseline"),
            "repetitions": len(mine),
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
