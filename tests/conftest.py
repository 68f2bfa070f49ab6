"""Shared, generic fixtures for the hf_sentence_vae test suite.

The Hugging Face environment variables are set at import time of this module, i.e. before any test
module imports `transformers` / `huggingface_hub` (which read them once, at import). This module itself
imports neither torch nor transformers at import time (fixtures import lazily), so a test module may
still set variables such as HF_ENDPOINT before its own imports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from hf_sentence_vae import SentenceVAEConfig

_HF_HOME = tempfile.mkdtemp(prefix="sentence_vae_hf_home_")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread (unless the caller chose otherwise): the models under test are tiny, and on a shared
# 2-core machine a multi-threaded torch spins on contended cores (a 5x16 LSTM step took 40 ms instead of 0.5 ms).
# Read by torch when it is first imported; inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# A tiny corpus for tests that need a real tokenizer but not PTB (no data dependency).
TINY_SENTENCES = [
    "the cat sat on the mat .",
    "the dog ran to the park .",
    "a cat saw a dog .",
    "the park was green .",
    "a dog sat on a mat .",
    "the mat was red and the cat was happy .",
]

# Tiny model sizes: fast on 2 CPU cores.
TINY_SIZES = dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`): on
    shared, oversubscribed CPUs two spinning OpenMP threads make tiny training runs up to 100x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def hf_offline_env():
    """The offline Hugging Face environment (set at import of this module); removes the temp HF_HOME at the end."""
    yield {
        "HF_HOME": os.environ["HF_HOME"],
        "HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"],
        "HF_DATASETS_OFFLINE": os.environ["HF_DATASETS_OFFLINE"],
        "HF_HUB_DISABLE_PROGRESS_BARS": os.environ["HF_HUB_DISABLE_PROGRESS_BARS"],
    }
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data root: $SENTENCE_VAE_DATA, else <repo>/../shared/data; skips when neither exists."""
    candidates = []
    env = os.environ.get("SENTENCE_VAE_DATA")
    if env:
        candidates.append(Path(env))
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    pytest.skip(f"no data directory: set SENTENCE_VAE_DATA or provide {REPO_ROOT.parent / 'shared' / 'data'}")


@pytest.fixture(scope="session")
def ptb_dir(data_dir: Path) -> Path:
    """<data>/ptb with ptb.{train,valid,test}.txt; skips when missing."""
    path = data_dir / "ptb"
    missing = [name for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt") if not (path / name).is_file()]
    if missing:
        pytest.skip(f"Penn Treebank files missing under {path}: {missing}")
    return path


@pytest.fixture(scope="session")
def ptb_train_lines(ptb_dir: Path) -> list[str]:
    """The raw lines of ptb.train.txt (not stripped)."""
    with open(ptb_dir / "ptb.train.txt", encoding="utf-8") as handle:
        return handle.readlines()


@pytest.fixture(scope="session")
def ptb_tokenizer(ptb_dir: Path):
    """The PTB word-level tokenizer (built once per test run from ptb.train.txt). Do not mutate it."""
    from hf_sentence_vae import build_tokenizer

    with open(ptb_dir / "ptb.train.txt", encoding="utf-8") as handle:
        return build_tokenizer(handle)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A pretokenized tokenizer over `TINY_SENTENCES` (a few dozen entries). Do not mutate it."""
    from hf_sentence_vae import build_tokenizer

    return build_tokenizer(TINY_SENTENCES)


@pytest.fixture(scope="session")
def tiny_sentences() -> list[str]:
    return list(TINY_SENTENCES)


@pytest.fixture
def tiny_config(tiny_tokenizer):
    """Factory: `tiny_config(**overrides)` -> a tiny `SentenceVAEConfig` (the vocabulary of `tiny_tokenizer`,
    emb 16, hidden 16, z 4; word dropout and dropout off unless overridden)."""

    from hf_sentence_vae import SentenceVAEConfig

    def make(**overrides) -> SentenceVAEConfig:
        kwargs = dict(vocab_size=len(tiny_tokenizer), word_keep_rate=1.0, dropout=0.0, **TINY_SIZES)
        kwargs.update(overrides)
        return SentenceVAEConfig(**kwargs)

    return make


@pytest.fixture
def tiny_model(tiny_config):
    """Factory: `tiny_model(seed=0, train=False, **config_overrides)` -> a seeded tiny `SentenceVAEModel`
    (in eval mode unless `train=True`). Pass `config=` to reuse a config."""

    import torch

    from hf_sentence_vae import SentenceVAEModel

    def make(seed: int = 0, train: bool = False, config: SentenceVAEConfig | None = None, **overrides):
        if config is None:
            config = tiny_config(**overrides)
        elif overrides:
            raise TypeError("pass either config= or config overrides, not both")
        torch.manual_seed(seed)
        model = SentenceVAEModel(config)
        return model.train(train)

    return make


@pytest.fixture
def random_batch():
    """Factory: `random_batch(config, lengths, seed=0)` -> `(input_ids, attention_mask)` of valid
    `<bos> w_1 .. w_n <eos>` rows (n = lengths[i] words, drawn among non-special ids), right-padded."""

    import torch

    def make(config: SentenceVAEConfig, lengths, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        specials = set(config.special_token_ids.values())
        words = torch.tensor([i for i in range(config.vocab_size) if i not in specials])
        total = max(lengths) + 2
        input_ids = torch.full((len(lengths), total), config.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(lengths), total), dtype=torch.long)
        for row, n in enumerate(lengths):
            picks = words[torch.randint(len(words), (n,), generator=generator)]
            input_ids[row, 0] = config.bos_token_id
            input_ids[row, 1 : n + 1] = picks
            input_ids[row, n + 1] = config.eos_token_id
            attention_mask[row, : n + 2] = 1
        return input_ids, attention_mask

    return make


@pytest.fixture(scope="session", autouse=True)
def package_under_test_is_this_checkout():
    """Every `hf_sentence_vae` module the tests imported comes from this checkout: an installed copy elsewhere (an
    editable install of another worktree) must not stand in for a module missing here."""
    import sys

    yield
    package = REPO_ROOT / "hf_sentence_vae"
    foreign = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.split(".")[0] == "hf_sentence_vae"
        and getattr(module, "__file__", None)
        and not Path(module.__file__).resolve().is_relative_to(package)
    )
    assert not foreign, f"modules imported from outside {package}: {foreign}"


# --------------------------------------------------------------------------- tiny runs shared by the test modules
@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, str]:
    """A synthetic corpus (no PTB needed): 64 training and 16 validation sentences of `helpers.WORDS`."""
    from helpers import synthetic_lines

    folder = tmp_path_factory.mktemp("corpus")
    for split, n, seed in (("train", 64, 0), ("validation", 16, 1)):
        (folder / f"{split}.txt").write_text("\n".join(synthetic_lines(n, seed)) + "\n", encoding="utf-8")
    return {"train_file": str(folder / "train.txt"), "validation_file": str(folder / "validation.txt")}


@pytest.fixture(scope="module")
def pretrained(small_data, tmp_path_factory) -> Path:
    """The `best/` folder (model + tokenizer) of a 2-step run on `small_data`."""
    from helpers import tiny_config, train_run

    out = tmp_path_factory.mktemp("pretrained") / "run"
    train_run(tiny_config(small_data, out))
    return out / "best"


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A saved tiny VAE over `helpers.WORDS` (max_sentence_length 30) with its tokenizer."""
    import torch
    from helpers import SIZES, WORDS

    from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel, build_tokenizer

    folder = tmp_path_factory.mktemp("words_model") / "model"
    tokenizer = build_tokenizer([" ".join(WORDS)])
    torch.manual_seed(0)
    config = SentenceVAEConfig(vocab_size=len(tokenizer), word_keep_rate=1.0, max_sentence_length=30, **SIZES)
    SentenceVAEModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpointed(small_data, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at steps 2, 4 and 6 (copy it before damaging anything)."""
    from helpers import tiny_config, train_run

    from hf_sentence_vae.training import list_checkpoints

    out = tmp_path_factory.mktemp("checkpointed") / "run"
    train_run(tiny_config(small_data, out, max_train_steps=6, checkpointing_steps="2", logging_steps=1))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    return out


SCRIPT_NAMES = ("train", "evaluate_model", "generate", "impute")


@pytest.fixture(scope="module")
def scripts(request) -> dict:
    """`train_scripts/{train,evaluate_model,generate,impute}.py` imported as modules (their `main(argv) -> int` runs
    in this process), by name; `evaluate` is `evaluate_model`."""
    from helpers import SCRIPTS, load_script

    suffix = request.module.__name__.rsplit(".", 1)[-1]
    loaded = {name: load_script(SCRIPTS / f"{name}.py", f"{name}_{suffix}") for name in SCRIPT_NAMES}
    loaded["evaluate"] = loaded["evaluate_model"]
    return loaded


@pytest.fixture(scope="module")
def train_script(scripts):
    """`train_scripts/train.py` imported as a module."""
    return scripts["train"]


# --------------------------------------------------------------------------- a finished tiny run (model card, Hub, pipeline)
@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory, tiny_sentences) -> Path:
    """`TINY_SENTENCES` as train.txt (six times), valid.txt and test.txt."""
    folder = tmp_path_factory.mktemp("tiny_text")
    (folder / "train.txt").write_text("\n".join(tiny_sentences * 6) + "\n")
    (folder / "valid.txt").write_text("\n".join(tiny_sentences[:4]) + "\n")
    (folder / "test.txt").write_text("\n".join(tiny_sentences[2:]) + "\n")
    return folder


@pytest.fixture(scope="module")
def run_dir(tiny_text_dir, tmp_path_factory) -> Path:
    """A finished tiny training run: best/ (with its card), metrics.jsonl, results.json, training_curves.png."""
    from helpers import train_tiny_run

    out = tmp_path_factory.mktemp("hub_run") / "tiny-vae"
    train_tiny_run(tiny_text_dir, out)
    return out


@pytest.fixture(scope="module")
def staged(run_dir, tmp_path_factory) -> Path:
    """What `push_to_hub.py --license apache-2.0` would upload for the run, rendered for `helpers.REPO_ID`."""
    from helpers import LICENSE, REPO_ID

    from hf_sentence_vae import hub

    return hub.stage_folder(run_dir, tmp_path_factory.mktemp("staged") / "repo", repo_id=REPO_ID, license=LICENSE)


@pytest.fixture(scope="module")
def best_model(run_dir):
    """The run's `best/` model (in eval mode) and tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(run_dir / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "best")
    return model, tokenizer


@pytest.fixture
def saved_models(tmp_path, tiny_model, tiny_tokenizer):
    """Saved tiny models for the imputation scripts (a right-to-left VAE and RNNLM, and a left-to-right RNNLM scorer,
    initialised at 0.5), and a test file of 40 sentences of the tiny vocabulary."""
    import random

    paths = {}
    for name, overrides in {
        "vae": dict(right_to_left=True),
        "rnnlm": dict(latent_size=0, right_to_left=True),
        "scorer": dict(latent_size=0),
    }.items():
        folder = tmp_path / name
        tiny_model(initializer_range=0.5, **overrides).save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        paths[name] = folder
    rng = random.Random(0)
    words = [w for w in tiny_tokenizer.get_vocab() if not w.startswith("<")]
    lines = [" ".join(rng.choices(words, k=rng.randint(2, 7))) for _ in range(40)]
    paths["test_file"] = tmp_path / "test.txt"
    paths["test_file"].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
