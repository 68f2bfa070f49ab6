"""Bounded memory (`hf_sentence_vae.streaming`): generating any number of sentences and evaluating a file of any
size take the memory of one batch or pool, in the library and through the scripts (run as real processes on
generated files, their peak RSS measured).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from helpers import (
    REPO,
    SCRIPTS,
    SIZES,
    WORDS,
    synthetic_lines,
)

from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel, build_tokenizer
from hf_sentence_vae.modeling_sentence_vae import SentenceVAEModel  # noqa: F811

SCRIPT_FILES = {"evaluate": "evaluate_model"}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stream_model():

    tokenizer = build_tokenizer([" ".join(WORDS)])
    torch.manual_seed(0)
    config = SentenceVAEConfig(vocab_size=len(tokenizer), word_keep_rate=1.0, **SIZES)
    return SentenceVAEModel(config).eval(), tokenizer


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measure(consume) -> tuple[int, int]:
    """(tracemalloc peak of Python allocations, RSS growth) while `consume()` runs; RSS sampled by the callback."""
    rss = {"base": _rss(), "max": 0}

    def sample():
        rss["max"] = max(rss["max"], _rss())

    tracemalloc.start(1)
    try:
        consume(sample)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, max(rss["max"] - rss["base"], 0)


def test_generate_stream_memory_does_not_grow_with_the_number_of_sentences(stream_model):
    """20,000 decoded sentences (20 words each, ~2 MB of text if they were kept) take no more memory than 2,000."""
    from hf_sentence_vae.streaming import generate_stream

    model, tokenizer = stream_model
    counts = {}

    def run(n):
        def consume(sample):
            total = 0
            for texts in generate_stream(
                model, tokenizer, n, batch_size=500, generator=torch.Generator().manual_seed(0), min_new_tokens=20,
                max_new_tokens=20,
            ):  # fmt: skip
                assert all(isinstance(t, str) and t for t in texts)
                total += len(texts)
                sample()
            counts[n] = total

        return _measure(consume)

    run(500)  # warm-up (lazy imports, allocator pools)
    small_peak, _ = run(2_000)
    large_peak, large_rss = run(20_000)
    assert counts == {500: 500, 2_000: 2_000, 20_000: 20_000}
    assert large_peak < 1.5 * small_peak + 256 * 1024, (small_peak, large_peak)
    assert large_rss < 64 * 2**20, large_rss
    first = next(generate_stream(model, tokenizer, 8, generator=torch.Generator().manual_seed(1), do_sample=True))
    again = next(generate_stream(model, tokenizer, 8, generator=torch.Generator().manual_seed(1), do_sample=True))
    assert first == again and len(first) == 8


def test_write_generated_writes_all_lines_atomically(stream_model, tmp_path):
    from hf_sentence_vae.streaming import write_generated

    model, tokenizer = stream_model
    path = tmp_path / "samples.txt"
    assert write_generated(path, model, tokenizer, 1_234, batch_size=500, max_new_tokens=10) == 1_234
    assert len(path.read_text(encoding="utf-8").splitlines()) == 1_234
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="num_sentences"):
        write_generated(tmp_path / "x.txt", model, tokenizer, -1)
    assert not (tmp_path / "x.txt").exists()


def test_evaluate_file_streams_and_matches_the_in_memory_evaluation(stream_model, tmp_path):
    from hf_sentence_vae.metrics import evaluate_model, length_sorted_batches, read_sentences
    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = stream_model
    lines = synthetic_lines(300, seed=5)
    (tmp_path / "eval.txt").write_text("\n".join(lines[:100]) + "\n\n  \n" + "\n".join(lines[100:]) + "\n")
    streamed = evaluate_file(
        model, tokenizer, tmp_path / "eval.txt", batch_size=32, pool_batches=100, iw_samples=3,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    sentences, blank = read_sentences(tmp_path / "eval.txt")
    in_memory = evaluate_model(
        model, length_sorted_batches(tokenizer, sentences, 32), iw_samples=3, generator=torch.Generator().manual_seed(0),
        progress=False,
    )  # fmt: skip
    assert streamed["blank_lines"] == blank == 2
    for key, value in in_memory.items():
        if isinstance(value, float):
            assert streamed[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert streamed[key] == value, key

    (tmp_path / "bad.txt").write_bytes(b"fine .\n" * 3 + b"caf\xe9 .\n")
    with pytest.raises(ValueError, match=r"input file .*bad\.txt' is not valid UTF-8: line 4"):
        evaluate_file(model, tokenizer, tmp_path / "bad.txt")


def test_evaluate_file_memory_does_not_grow_with_the_file(stream_model, tmp_path):
    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = stream_model
    path = tmp_path / "large.txt"
    path.write_text("\n".join(synthetic_lines(10_000, seed=3, high=25)) + "\n", encoding="utf-8")
    results = {}

    def run(n):
        def consume(sample):
            results[n] = evaluate_file(
                model, tokenizer, path, batch_size=100, pool_batches=5, max_sentences=n, iw_samples=0,
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            sample()

        return _measure(consume)

    run(200)
    small_peak, _ = run(1_000)
    large_peak, large_rss = run(10_000)
    assert results[1_000]["num_sentences"] == 1_000 and results[10_000]["num_sentences"] == 10_000
    assert large_peak < 1.5 * small_peak + 256 * 1024, (small_peak, large_peak)
    assert large_rss < 64 * 2**20


def _peak_rss(argv: list[str], tmp_path: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in bytes, stderr) of `python argv` run in a child process (`os.wait4`'s rusage)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("SENTENCE_VAE_TRACEBACK", None)
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024, log.read_text()


@pytest.fixture(scope="module")
def sized_files(tmp_path_factory) -> dict[str, Path]:
    """2,000 and 200,000 lines of 2 to 6 words (the same 1,000 lines repeated), and the 2,000 lines plus one line of
    ~870 kB."""

    folder = tmp_path_factory.mktemp("sized")
    rng = random.Random(0)
    block = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6))) + "\n" for _ in range(1000))
    files = {"2k": folder / "2k.txt", "200k": folder / "200k.txt", "huge_line": folder / "huge_line.txt"}
    files["2k"].write_text(block * 2, encoding="utf-8")
    files["200k"].write_text(block * 200, encoding="utf-8")
    files["huge_line"].write_text(block * 2 + " ".join(WORDS * 12_500) + "\n", encoding="utf-8")
    return files


INFERENCE = ("evaluate", "generate", "impute")


def _script_argv(name: str, model: Path, path: Path) -> list[str]:
    script = str(SCRIPTS / f"{SCRIPT_FILES.get(name, name)}.py")
    if name == "evaluate":
        return [script, "--model_name_or_path", str(model), "--test_file", str(path), "--iw_samples", "0",
                "--batch_size", "256", "--no_progress"]  # fmt: skip
    if name == "generate":
        return [script, "posterior", "--model_name_or_path", str(model), "--input_file", str(path), "--max_sentences",
                "3"]  # fmt: skip
    return [script, "--model_name_or_path", str(model), "--test_file", str(path), "--max_sentences", "5",
            "--num_beams", "2", "--num_steps", "1"]  # fmt: skip


@pytest.mark.parametrize("name", INFERENCE)
def test_scripts_stream_large_inputs(model_folder, sized_files, tmp_path, name):
    """Peak RSS on a 200,000-line file is within 10% of that on a 2,000-line file (evaluate reads every line;
    generate and impute stop after --max_sentences); for evaluate, one line of ~870 kB too (it is cut, counted, and
    costs no memory). Reading and sorting the whole file took 806 MB instead of 414 MB here."""
    peaks = {}
    inputs = ("2k", "200k", "huge_line") if name == "evaluate" else ("2k", "200k")
    for size in inputs:
        status, peaks[size], err = _peak_rss(_script_argv(name, model_folder, sized_files[size]), tmp_path)
        assert status == 0, err[-3000:]
        if size == "huge_line":
            assert "1 sentence(s) longer than 31 ids were cut" in err
    for size in inputs[1:]:
        assert peaks[size] <= 1.10 * peaks["2k"], {k: f"{v / 2**20:.0f} MiB" for k, v in peaks.items()}


def test_evaluate_file_counts_cut_and_truncated_lines(model_folder, tmp_path):
    from transformers import AutoTokenizer

    from hf_sentence_vae.streaming import evaluate_file

    model, tokenizer = SentenceVAEModel.from_pretrained(model_folder), AutoTokenizer.from_pretrained(model_folder)
    lines = synthetic_lines(10, seed=2)
    lines[4] = " ".join(WORDS * 40)  # 640 words, 2,607 characters
    (tmp_path / "long.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    results = evaluate_file(model, tokenizer, tmp_path / "long.txt", max_length=31, max_line_chars=1_000, iw_samples=0)
    assert results["num_sentences"] == 10 and results["cut_lines"] == 1 and results["truncated_lines"] == 1
    assert results["num_tokens"] <= 9 * 13 + 30
