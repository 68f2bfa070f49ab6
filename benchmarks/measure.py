"""What every benchmark measures with: the machine, its matmul rate, FLOPs, memory, the data and model sizes."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_sentence_vae import SentenceVAEConfig, build_tokenizer
from hf_sentence_vae.data import TokenizedCorpus

SEED = 42


GREEDY = dict(num_beams=1, do_sample=False, suppress_tokens=None)


MAX_GRAD_NORM = 5.0  # the training loop's default --max_grad_norm


SIZES: dict[str, dict[str, int]] = {
    # The public peer's sizes (timbmg/Sentence-VAE's defaults).
    "peer": dict(embedding_size=300, encoder_hidden_size=256, decoder_hidden_size=256, latent_size=16),
    "standard": dict(embedding_size=353, encoder_hidden_size=191, decoder_hidden_size=191, latent_size=13),
    "hidden512": dict(embedding_size=353, encoder_hidden_size=512, decoder_hidden_size=512, latent_size=13),
    "tiny": dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4),
}


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


# A bf16 and an fp32 GEMM, to make oneDNN report the instruction set it dispatches to (`ONEDNN_VERBOSE=1`).
_ISA_PROBE = "import torch; a = torch.randn(64, 64); a @ a; b = a.bfloat16(); b @ b"


@functools.cache
def onednn_isa() -> str:
    """The instruction set oneDNN uses in this environment (e.g. "Intel AVX-512 with Intel DL Boost and bfloat16
    support"; `ONEDNN_MAX_CPU_ISA` caps it), as its verbose mode reports it in a fresh process; "unknown" if it
    does not."""
    env = dict(os.environ, ONEDNN_VERBOSE="1", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _ISA_PROBE], capture_output=True, text=True, env=env, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in proc.stdout.splitlines():
        if ",info,cpu,isa:" in line:
            return line.split(",info,cpu,isa:", 1)[1].strip()
    return "unknown"


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
        "onednn_isa": onednn_isa(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "python": platform.python_version(),
        "default_num_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OMP_", "MKL_", "MALLOC_", "ONEDNN_"))},
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
    if not config.is_rnnlm:
        encoder = 2 * 4 * he * (e + he) * (2 if config.bidirectional_encoder else 1) * lengths.sum()
    decoder_in = e + (z if config.latent_injection == "initial_state_and_inputs" else 0)
    decoder = (2 * 4 * hd * (decoder_in + hd) + 2 * hd * v) * (lengths - 1).sum()
    return 3.0 * (encoder + decoder)


def decoding_flops_per_row_step(config: SentenceVAEConfig) -> float:
    """Matmul FLOPs of one decoding step of one row (one sentence): the LSTM gates (input = embedding, plus z where it
    is injected at the inputs) and the output projection."""
    lstm_in = config.embedding_size + (config.latent_size if config.latent_injection != "initial_state" else 0)
    hidden = config.decoder_hidden_size
    features = hidden + (config.latent_size if config.latent_injection == "initial_state_inputs_and_outputs" else 0)
    return 2.0 * (features * config.vocab_size + 4 * hidden * (lstm_in + hidden))


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def default_data_dir() -> str | None:
    """`$SENTENCE_VAE_DATA` (the folder holding `ptb/`), or None: pass `--data_dir`."""
    return os.environ.get("SENTENCE_VAE_DATA")


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
