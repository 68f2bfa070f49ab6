"""Memory: peak RSS of training and of streamed decoding, each measured in a fresh process (`run_benchmarks.py
--probe SPEC` runs one probe and prints its JSON), and the allocator settings compared."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_training import REFERENCE, Arm, TrainState, batch_plan, representative_batches, steps_for
from measure import GREEDY, SEED, load_average, median, model_config, peak_rss_mb, rss_mb

import hf_sentence_vae
from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel
from hf_sentence_vae.data import TokenizedCorpus

RUNNER = Path(__file__).resolve().with_name("run_benchmarks.py")
# The folder this process imports `hf_sentence_vae` from: a probe runs the same code (e.g. a checkout other than the
# one installed in the environment).
PACKAGE_ROOT = str(Path(hf_sentence_vae.__file__).resolve().parents[1])


def run_probe(spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `spec` in a fresh Python process (so its peak RSS is its own) and return its JSON result. With
    `extra_env`, the allocator settings of this process's environment are replaced by those given. The probe imports
    `hf_sentence_vae` from where this process does."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.get("threads", 1)), TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    if extra_env is not None:
        env = {k: v for k, v in env.items() if not (k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")}
        env.update(extra_env)
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--probe", json.dumps(spec)],
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
                    "arm": asdict(Arm(REFERENCE)),
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
