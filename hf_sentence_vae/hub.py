"""Sharing on the Hub: model cards, Hub-ready folders and pushes with `huggingface_hub`.

- `render_model_card(folder)`: `README.md` from `model_cards/sentence_vae.md.j2`: YAML metadata (library,
  pipeline tag, tags, datasets, metrics and a `model-index` with the run's results), the architecture, the training
  configuration and the command that produced it, the measured results, prior samples and a homotopy decoded
  from the folder's own weights, a usage snippet, limitations and the citation. Everything comes from the folder
  (`config.json`, `training_config.json`, `eval_results.json`, `metrics.jsonl`), so re-rendering gives the same card.
- `add_pipeline(folder)`: ship `pipelines.py` as remote code (`custom_pipelines` in `config.json`), so
  `pipeline(model=folder, trust_remote_code=True)` works without this package.
- `finalize_model_folder(folder)`: both; the training loop calls it on `best/` at the end of a run.
- `stage_folder(source, dest)`: collect what a repository should hold from a run folder (`best/` plus the run's
  `metrics.jsonl`, `training_curves.png`, `results.json`) into `dest`, nothing else (no optimizer states).
- `validate_folder(folder)`: raise `HubPushError` unless the folder is Hub-ready.
- `push_folder(folder, repo_id)`: checks first (folder, offline mode, token, endpoint reachable within seconds),
  then `create_repo`, `create_branch` for `revision`, and one `upload_folder` commit. A repository created by
  a push that then fails is deleted again, so a failed push leaves nothing half-done.

`hub.py` and `pipelines.py` are not part of the remote-code closure: a stranger needs neither.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shlex
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
RUN_ARTIFACTS = ("metrics.jsonl", "training_curves.png", "results.json")
# Top-level files a repository gets (weights, configs, tokenizer, code, card, metrics, plots); no sub-folders.
HUB_PATTERNS = ("*.safetensors", "*.json", "*.jsonl", "*.py", "README.md", "*.png", "*.txt")
TEMPLATE_NAME = "sentence_vae.md.j2"
# The template lives in the repository's model_cards/; a built package (wheel) carries a copy inside the package.
_PACKAGED_TEMPLATE = Path(__file__).resolve().parent / "model_cards" / TEMPLATE_NAME
TEMPLATE_PATH = (
    _PACKAGED_TEMPLATE
    if _PACKAGED_TEMPLATE.is_file()
    else Path(__file__).resolve().parent.parent / "model_cards" / TEMPLATE_NAME
)
PIPELINE_FILE = "pipelines.py"
PIPELINE_TASK = "sentence-vae"  # the task this package registers with transformers' pipeline registry
# The task name under which a Hub-ready folder declares its bundled pipelines.py (`custom_pipelines`): a name of its
# own, so that where this package is installed `pipeline("sentence-vae", model=folder)` uses the registered class
# without asking for trust_remote_code, while `pipeline(model=folder, trust_remote_code=True)` (the task inferred
# from the folder) runs the folder's copy, with or without the package.
REMOTE_PIPELINE_TASK = "sentence-vae-remote-code"
PIPELINE_CLASS = "SentenceVAEPipeline"
PTB_DATASET_ID = "ptb-text-only/ptb_text_only"
PATH_PLACEHOLDER = "path/to/this/model"
CARD_SEED = 0
CARD_NUM_SAMPLES = 5
CARD_HOMOTOPY_STEPS = 5
CARD_MAX_NEW_TOKENS = 30
INJECTION_WORDS = {  # config.latent_injection, as the model card's architecture sentence says it
    "initial_state": "initial state",
    "initial_state_and_inputs": "initial state and every input",
    "initial_state_inputs_and_outputs": "initial state, every input and every output",
}
DEFAULT_TIMEOUT = 10.0
# Training options that name local files or folders: the card's command shows their last component only.
PATH_OPTIONS = (
    "train_file",
    "validation_file",
    "test_file",
    "tokenizer_name_or_path",
    "model_name_or_path",
    "dataset_name",
    "output_dir",
)
NO_LICENSE_NOTE = (
    "**License: not chosen.** Whoever trained this model did not choose a license when this card was written "
    "(`license: other`); ask them before reusing it. To choose one, train with `--license ID` or render the card "
    "again with `train_scripts/push_to_hub.py --license ID` (an identifier the Hub knows, e.g. `apache-2.0`, `mit`, "
    "`cc-by-4.0`); pushing requires one."
)

CITATION = """@inproceedings{bowman-etal-2016-generating,
    title = "Generating Sentences from a Continuous Space",
    author = "Bowman, Samuel R. and Vilnis, Luke and Vinyals, Oriol and Dai, Andrew and Jozefowicz, Rafal and Bengio, Samy",
    booktitle = "Proceedings of the 20th {SIGNLL} Conference on Computational Natural Language Learning",
    year = "2016",
    address = "Berlin, Germany",
    publisher = "Association for Computational Linguistics",
    url = "https://aclanthology.org/K16-1002",
    doi = "10.18653/v1/K16-1002",
    pages = "10--21",
}"""

# (results key suffix, model-index metric type, metric name)
RESULT_METRICS = (
    ("loss", "nll", "NLL bound (-ELBO), nats per sentence"),
    ("reconstruction", "reconstruction", "Reconstruction -log p(x|z), nats per sentence"),
    ("kl", "kl", "KL(q(z|x) || p(z)), nats per sentence"),
    ("ppl", "perplexity", "Perplexity (from the bound)"),
)
RESULT_SPLITS = ("validation", "test", "train")
RESULT_DIGITS = 6

# Training options that do not change the trained weights: left out of the reproduction command.
COMMAND_SKIP = {
    "extra",
    "hub_token",
    "push_to_hub",
    "hub_model_id",
    "hub_private",
    "license",
    "resume_from_checkpoint",
    "disable_tqdm",
    "with_tracking",
    "report_to",
    "num_threads",
    "preprocessing_num_workers",
    "cache_dir",
}
TRAINING_ROWS = (
    ("train_file", "training data"),
    ("validation_file", "validation data"),
    ("test_file", "test data"),
    ("dataset_name", "dataset"),
    ("dataset_config_name", "dataset configuration"),
    ("optimizer", "optimizer"),
    ("learning_rate", "learning rate"),
    ("lr_scheduler_type", "learning-rate schedule"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("max_grad_norm", "gradient clipping (norm)"),
    ("ema_decay", "weight averaging (EMA decay; evaluated and saved weights)"),
    ("num_train_epochs", "epochs (at most)"),
    ("max_train_steps", "steps (at most)"),
    ("early_stopping_patience", "early stopping patience (evaluations)"),
    ("kl_schedule", "KL weight schedule"),
    ("free_bits", "free bits (nats per dimension)"),
    ("mixed_precision", "mixed precision"),
    ("seed", "seed"),
)
KL_SCHEDULE_FIELDS = {
    "sigmoid": ("kl_sigmoid_slope", "kl_sigmoid_midpoint"),
    "linear": ("kl_warmup_steps", "kl_start"),
    "cyclical": ("kl_cycles", "kl_cycle_ratio"),
    "constant": ("kl_constant",),
}
FILE_DESCRIPTIONS = {
    "model.safetensors": "the weights",
    "config.json": "the model configuration (with `auto_map` for the remote code and `custom_pipelines`)",
    "generation_config.json": "the decoding defaults `generate`, the pipeline and these samples use",
    "tokenizer.json": "the word-level tokenizer (`tokenizers`)",
    "tokenizer_config.json": "tokenizer settings (with `auto_map`)",
    "special_tokens_map.json": "the special tokens",
    "configuration_sentence_vae.py": "remote code: the configuration class",
    "modeling_sentence_vae.py": "remote code: the model",
    "decoding.py": "remote code: batched greedy, sampling and beam-search decoding",
    "generation_settings.py": "remote code: the generation settings `generate` reads and checks",
    "kernels.py": "remote code: the model's CPU fast paths (fused output layer and loss, LSTM calls)",
    "latent.py": "remote code: Gaussian latent-space helpers",
    "tokenization_sentence_vae_fast.py": "remote code: the tokenizer class",
    PIPELINE_FILE: "remote code: the `sentence-vae` pipeline (sampling, reconstruction, homotopy)",
    "training_config.json": "every training option of the run",
    "eval_results.json": "the final results (the run's `results.json`)",
    "results.json": "the run's final results",
    "metrics.jsonl": "the training log: one JSON record per logged step or evaluation",
    "training_curves.png": "KL weight, KL term and validation bound over training",
    "README.md": "this card",
}


class HubPushError(RuntimeError):
    """A push to the Hub failed or was refused; the message says why (offline, unreachable, unauthorised, ...)."""


# --------------------------------------------------------------------------- small helpers
def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _round(value: float) -> float:
    """The value stored in the card's metadata: 6 significant digits."""
    return float(f"{float(value):.{RESULT_DIGITS}g}")


def _tying(config: dict) -> str | bool | None:
    """The model card's tying entry: whether the output layer shares the embedding, and through what."""
    tied = config.get("tie_word_embeddings")
    embedding, hidden = config.get("embedding_size"), config.get("decoder_hidden_size")
    if config.get("latent_injection") == "initial_state_inputs_and_outputs":
        width, what = hidden + config.get("latent_size", 0), "the decoder state and z"
    else:
        width, what = hidden, "the decoder state"
    if tied and embedding != width:
        return f"yes, through a learned {width} -> {embedding} projection of {what}"
    return tied


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return f"`{text}`" if isinstance(value, str) and ("/" in text or "\\" in text) else text


def _fmt_result(value: float) -> str:
    """The value shown in the card's tables: 2 decimals from 10 up, else 4."""
    return f"{float(value):.{2 if abs(value) >= 10 else 4}f}"


def load_results(folder: str | os.PathLike) -> dict[str, Any]:
    """The measured results of a model folder: `eval_results.json` (written by training), else `results.json`."""
    folder = Path(folder)
    return _read_json(folder / "eval_results.json") or _read_json(folder / "results.json")


def result_splits(results: dict[str, Any]) -> list[str]:
    return [split for split in RESULT_SPLITS if _is_number(results.get(f"{split}_loss"))]


def _dataset_info(train_config: dict[str, Any], dataset_id: str | None) -> tuple[str | None, str, str]:
    """(Hub dataset id or None, model-index dataset type, pretty name)."""
    if dataset_id:
        return dataset_id, dataset_id, dataset_id
    name = train_config.get("dataset_name")
    if name:
        config = train_config.get("dataset_config_name")
        if not is_hub_id(name):  # a local dataset folder or script: name it, do not link it
            name = Path(name).name
            return None, "text", f"local dataset {name}" + (f" ({config})" if config else "")
        return name, name, f"{name} ({config})" if config else name
    files = [train_config.get(key) for key in ("train_file", "validation_file", "test_file")]
    files = [Path(f).name for f in files if f]
    if any("ptb" in f.lower() for f in files):
        return PTB_DATASET_ID, "ptb_text_only", "Penn Treebank (Mikolov et al. 2011 preprocessing)"
    if files:
        return None, "text", f"local text files ({', '.join(files)})"
    return None, "text", "unknown text"


def is_hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub repository id (`name` or `namespace/name`) rather than a local path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".") and not Path(name).exists()


def _portable(name: str, value: Any) -> Any:
    """An option's value as the card's command shows it: local paths reduced to their last component (a reader
    has the data somewhere else), the output folder to `runs/<run name>`; Hub ids unchanged."""
    if name not in PATH_OPTIONS or not isinstance(value, str):
        return value
    if name == "output_dir":
        return f"runs/{Path(value).name}"
    if name in ("model_name_or_path", "tokenizer_name_or_path", "dataset_name") and is_hub_id(value):
        return value
    return Path(value).name or value


def check_license_id(license: str) -> str:  # noqa: A002
    """`license` if it reads as a Hub license identifier (lower case: `apache-2.0`, `mit`, `cc-by-4.0`, `other`, ...);
    else a `ValueError`."""
    if not isinstance(license, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", license):
        raise ValueError(
            f"license {license!r} is not a Hub license identifier (lower case, e.g. apache-2.0, mit, cc-by-4.0, other)"
        )
    return license


def resolve_license(folder: str | os.PathLike, license: str | None = None) -> str | None:  # noqa: A002
    """The license a card states: `license`, else the one chosen at training time (`training_config.json`), else
    None (not chosen)."""
    if license is None:
        license = _read_json(Path(folder) / "training_config.json").get("license")  # noqa: A001
    return None if license is None else check_license_id(license)


def run_name(folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """The name a card is titled with: the repository's name, else the training run's (its `--hub_model_id` or
    its output folder), else the folder's."""
    folder = Path(folder)
    if repo_id:
        return repo_id.split("/")[-1]
    train_config = _read_json(folder / "training_config.json")
    if train_config.get("hub_model_id"):
        return str(train_config["hub_model_id"]).split("/")[-1]
    if train_config.get("output_dir"):
        return Path(train_config["output_dir"]).name
    return folder.parent.name if folder.name == "best" else folder.name


def training_command(train_config: dict[str, Any], world_size: int = 1) -> str:
    """A command that reproduces the run: `train_scripts/train.py` with every option that differs from its default
    (local paths shown by their last component: the files' names, not where they were on the training machine)."""
    defaults: dict[str, Any] = {}
    try:
        from .training import TrainingConfig

        defaults = {f.name: f.default for f in fields(TrainingConfig) if f.default is not MISSING}
    except Exception:  # training extras missing: list every option instead
        pass
    launcher = "python" if world_size <= 1 else f"accelerate launch --num_processes {world_size}"
    parts = [f"{launcher} train_scripts/train.py"]
    for name, value in train_config.items():
        if name in COMMAND_SKIP or value is None or (name in defaults and defaults[name] == value):
            continue
        if isinstance(value, (dict, list)):
            continue
        value = _portable(name, value)
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        parts.append(f"--{name} {shlex.quote(text)}")
    return " \\\n    ".join(parts)


# --------------------------------------------------------------------------- pipeline as remote code
def add_pipeline(folder: str | os.PathLike) -> Path:
    """Copy `pipelines.py` into `folder` and record it in `config.json` under `custom_pipelines` (task
    `REMOTE_PIPELINE_TASK`), so that `transformers.pipeline(model=folder, trust_remote_code=True)` builds the
    `sentence-vae` pipeline without this package."""
    folder = Path(folder)
    source = Path(__file__).with_name(PIPELINE_FILE)
    shutil.copyfile(source, folder / PIPELINE_FILE)
    config_path = folder / "config.json"
    config = _read_json(config_path)
    if not config:
        raise HubPushError(f"{config_path} is missing or empty: save the model first")
    config["custom_pipelines"] = {
        REMOTE_PIPELINE_TASK: {
            "impl": f"{Path(PIPELINE_FILE).stem}.{PIPELINE_CLASS}",
            "pt": ["AutoModel"],
            "type": "text",
        }
    }
    _write_json(config_path, config)
    return folder / PIPELINE_FILE


# --------------------------------------------------------------------------- the model card
def decode_card_samples(
    model,
    tokenizer,
    num_samples: int = CARD_NUM_SAMPLES,
    homotopy_steps: int = CARD_HOMOTOPY_STEPS,
    seed: int = CARD_SEED,
    max_new_tokens: int = CARD_MAX_NEW_TOKENS,
) -> dict[str, list[str]]:
    """The card's samples, exactly as its snippet computes them with the model's `generation_config`: decodes of
    `num_samples` prior codes, then a homotopy between two more prior codes from the same generator (RNNLM:
    ancestral samples only)."""
    import torch

    def texts(**kwargs) -> list[str]:
        out = model.generate(max_new_tokens=max_new_tokens, return_dict_in_generate=True, **kwargs)
        return tokenizer.batch_decode(out.sequences, skip_special_tokens=True)

    generator = torch.Generator().manual_seed(seed)
    if model.config.latent_size == 0:
        return {"prior": texts(num_samples=num_samples, do_sample=True, generator=generator), "homotopy": []}
    z = model.sample_prior(num_samples, generator=generator)
    prior = texts(latent=z)
    ends = model.sample_prior(2, generator=generator)
    path = model.interpolate(ends[0], ends[1], steps=homotopy_steps)
    return {"prior": prior, "homotopy": texts(latent=path)}


def _samples_code(repo: str, latent_size: int, num_samples: int, steps: int, seed: int, max_new_tokens: int) -> str:
    head = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
        f"generator = torch.Generator().manual_seed({seed})",
    ]
    if latent_size == 0:
        return "\n".join(
            head
            + [
                f"ids = model.generate(num_samples={num_samples}, do_sample=True, generator=generator, "
                f"max_new_tokens={max_new_tokens})",
                'print("\\n".join(tokenizer.batch_decode(ids, skip_special_tokens=True)))',
            ]
        )
    return "\n".join(
        head
        + [
            f"z = model.sample_prior({num_samples}, generator=generator)",
            f"ids = model.generate(latent=z, max_new_tokens={max_new_tokens})",
            'print("\\n".join(tokenizer.batch_decode(ids, skip_special_tokens=True)))',
            "ends = model.sample_prior(2, generator=generator)",
            f"path = model.interpolate(ends[0], ends[1], steps={steps})",
            f"ids = model.generate(latent=path, max_new_tokens={max_new_tokens})",
            'print("\\n".join(tokenizer.batch_decode(ids, skip_special_tokens=True)))',
        ]
    )


def _usage_code(repo: str, latent_size: int, examples: tuple[str, str]) -> str:
    lines = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
        "",
    ]
    if latent_size:
        lines += [
            "# Reconstruction: each sentence decoded from its posterior mean.",
            f"batch = tokenizer({list(examples)!r}, padding=True, return_tensors='pt')",
            "print(tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True))",
            "",
            "# Sentences from the prior: decodes of z ~ N(0, I) (the paper's Table 5).",
            "z = model.sample_prior(5, generator=torch.Generator().manual_seed(0))",
            "print(tokenizer.batch_decode(model.generate(latent=z, max_new_tokens=30), skip_special_tokens=True))",
            "",
            "# The homotopy between the two sentences' posterior means (Section 6.3).",
            'mu, logvar = model.encode(batch["input_ids"], batch["attention_mask"])',
            "path = model.interpolate(mu[0], mu[1], steps=5)",
            "print(tokenizer.batch_decode(model.generate(latent=path), skip_special_tokens=True))",
            "",
            "# The bound: -ELBO per sentence = reconstruction + KL (nats).",
            "with torch.no_grad():",
            "    out = model(**batch, sample_latent=False)",
            "print(float(out.reconstruction_loss), float(out.kl))",
        ]
    else:
        lines += [
            "# An RNN language model (no latent space): sample sentences, score sentences.",
            "ids = model.generate(num_samples=5, do_sample=True, max_new_tokens=30,",
            "                     generator=torch.Generator().manual_seed(0))",
            "print(tokenizer.batch_decode(ids, skip_special_tokens=True))",
            f"batch = tokenizer({list(examples)!r}, padding=True, return_tensors='pt')",
            "with torch.no_grad():",
            "    out = model(**batch)",
            "print(float(out.reconstruction_loss))  # -log p(x) per sentence, averaged over the batch",
        ]
    return "\n".join(lines)


def _pipeline_code(repo: str, latent_size: int, examples: tuple[str, str]) -> str:
    lines = [
        "from transformers import pipeline",
        "",
        f'pipe = pipeline(model="{repo}", trust_remote_code=True)  # with hf_sentence_vae installed: '
        f'pipeline("sentence-vae", model="{repo}")',
    ]
    if latent_size:
        lines += [
            "pipe(5, seed=0)  # five sentences from the prior",
            f"pipe({examples[0]!r}, num_posterior_samples=3, seed=0)  # reconstruction",
            f"pipe(({examples[0]!r}, {examples[1]!r}), steps=5)  # homotopy",
        ]
    else:
        lines += ["pipe(5, do_sample=True, seed=0)  # five sampled sentences"]
    return "\n".join(lines)


def _limitations(config: dict[str, Any], results: dict[str, Any], vocab: int, text_mode: str) -> list[str]:
    items = []
    latent_size = int(config.get("latent_size", 0))
    if latent_size:
        split = next((s for s in ("validation", "test") if _is_number(results.get(f"{s}_kl"))), None)
        measured = ""
        if split:
            kl = float(results[f"{split}_kl"])
            measured = (
                f" This checkpoint's KL term on the {split} split is {kl:.2f} nats per sentence "
                f"({kl / latent_size:.3f} per latent dimension)"
                + (": the posterior has (nearly) collapsed and the decoder largely ignores z." if kl < 0.5 else ".")
            )
        items.append(
            "Posterior collapse: an LSTM decoder can model sentences without the latent code, driving KL(q(z|x) || "
            "p(z)) to zero; KL annealing and word dropout (keep rate "
            f"{config.get('word_keep_rate', 1.0)}) counter it, but a small KL means samples from the prior look "
            f"alike and reconstructions are generic.{measured}"
        )
    else:
        items.append("This is the RNNLM baseline (`latent_size = 0`): it has no latent space, no encoder, no homotopy.")
    items.append(
        f"Vocabulary: a closed word-level vocabulary of {vocab} entries (4 special tokens included), built from the "
        "training split; any other word becomes `<unk>`, and the model can only generate words it has seen."
    )
    if text_mode == "pretokenized":
        items.append(
            "Tokenization: the input is split on whitespace only; text must be preprocessed the way the training "
            "data was (for PTB: lower-cased, numbers replaced by `N`, punctuation mostly removed)."
        )
    items.append(
        "English only: trained on English sentences; other languages come out as `<unk>`. Single sentences of up "
        f"to {config.get('max_sentence_length', 100)} tokens; no document-level context."
    )
    items.append(
        "Likelihood: the bound (-ELBO) is an upper bound on -log p(x); as the paper reports, the VAE's bound is not "
        "better than a plain RNNLM's likelihood. Use importance-weighted estimates to compare likelihoods."
    )
    items.append(
        "Biases: samples reflect the training text (newswire from the late 1980s for PTB) and its biases; outputs "
        "are not filtered."
    )
    return items


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    *,
    num_samples: int = CARD_NUM_SAMPLES,
    homotopy_steps: int = CARD_HOMOTOPY_STEPS,
    seed: int = CARD_SEED,
    max_new_tokens: int = CARD_MAX_NEW_TOKENS,
    language: str | list[str] = "en",
    license: str | None = None,  # noqa: A002 (the Hub's metadata key)
    dataset_id: str | None = None,
    model_name: str | None = None,
    examples: tuple[str, str] = ("the company said it would sell the unit .", "he said he was n't sure ."),
    template_path: str | os.PathLike | None = None,
    write: bool = True,
):
    """Render `folder/README.md` (a `huggingface_hub.ModelCard`) for the saved model in `folder`.

    The samples are decoded from the folder's own weights. `repo_id` goes into the usage snippets (else a
    placeholder path). Returns the card; raises if the metadata would not validate.
    """
    import torch
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from transformers import AutoModel, AutoTokenizer

    folder = Path(folder)
    config = _read_json(folder / "config.json")
    train_config = _read_json(folder / "training_config.json")
    results = load_results(folder)
    template_path = Path(template_path) if template_path else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} not found")

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        samples = decode_card_samples(model, tokenizer, num_samples, homotopy_steps, seed, max_new_tokens)
    latent_size = int(model.config.latent_size)
    is_vae = latent_size > 0
    text_mode = getattr(tokenizer, "text_mode", "pretokenized")
    num_parameters = sum(p.numel() for p in model.parameters())

    hub_dataset, dataset_type, dataset_pretty = _dataset_info(train_config, dataset_id)
    if model_name is None:
        model_name = run_name(folder, repo_id)
    license = resolve_license(folder, license)  # noqa: A001
    repo = repo_id or PATH_PLACEHOLDER

    eval_results = []
    result_rows = []
    for split in result_splits(results):
        row = {"split": split}
        for key, metric_type, metric_name in RESULT_METRICS:
            value = results.get(f"{split}_{key}")
            if not _is_number(value):
                row[key] = "-"
                continue
            row[key] = _fmt_result(value)
            eval_results.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Sentence modelling (variational bound)" if is_vae else "Language modelling",
                    dataset_type=dataset_type,
                    dataset_name=dataset_pretty,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=f"{split} {metric_name}",
                    metric_value=_round(value),
                )
            )
        result_rows.append(row)

    # Tags name what works: the `sentence-vae` pipeline (remote code), not transformers' `text-generation`
    # pipeline (it would continue a prompt; this model reconstructs or samples whole sentences).
    tags = ["sentence-vae", "lstm", "custom_code", "pytorch"]
    tags[1:1] = ["vae", "variational-autoencoder"] if is_vae else ["rnnlm", "language-model"]
    base_model = train_config.get("model_name_or_path")
    if not (
        isinstance(base_model, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", base_model) and not Path(base_model).exists()
    ):
        base_model = None
    card_data = ModelCardData(
        language=language,
        license=license or "other",
        library_name="transformers",
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["perplexity"],
        base_model=base_model,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )

    injection = config.get("latent_injection", "initial_state")
    if is_vae:
        architecture = (
            f"{'a bidirectional' if config.get('bidirectional_encoder') else 'an'} LSTM encoder "
            f"({config.get('encoder_hidden_size')} units) gives a diagonal Gaussian q(z|x) over a {latent_size}-dimensional "
            f"latent code, and an LSTM decoder ({config.get('decoder_hidden_size')} units) generates the sentence from z "
            f"({INJECTION_WORDS.get(injection, injection)})"
        )
        summary = (
            f"A variational autoencoder for sentences with a {latent_size}-dimensional latent space, trained on "
            f"{dataset_pretty}. Decode codes drawn from the prior to generate sentences, encode sentences to get "
            "their posterior, and walk between codes to interpolate."
        )
    else:
        architecture = f"the RNNLM baseline: an LSTM language model ({config.get('decoder_hidden_size')} units) with no latent code"
        summary = f"The RNN language model baseline of the sentence VAE paper, trained on {dataset_pretty}."
    model_rows = [
        ("model type", "VAE" if is_vae else "RNNLM (no latent code)"),
        ("parameters", f"{num_parameters:,}"),
        ("vocabulary", f"{len(tokenizer):,} word types"),
        ("embedding size", config.get("embedding_size")),
        (
            "encoder LSTM",
            f"{config.get('encoder_hidden_size')}{' (bidirectional)' if config.get('bidirectional_encoder') else ''}",
        )
        if is_vae
        else None,
        ("decoder LSTM", config.get("decoder_hidden_size")),
        ("latent size", latent_size),
        ("highway layers", config.get("num_highway_layers")) if is_vae else None,
        ("latent injection", injection) if is_vae else None,
        ("variance parameterization", config.get("variance_parameterization")) if is_vae else None,
        ("word keep rate (word dropout)", config.get("word_keep_rate")),
        ("dropout", config.get("dropout")),
        ("dropout masks shared across time steps (locked)", config.get("locked_dropout") or None),
        ("embedding dropout (word types, decoder)", config.get("embedding_dropout") or None),
        ("recurrent weight dropout (decoder)", config.get("decoder_weight_drop") or None),  # a row only when used
        ("tied input/output embeddings", _tying(config)),
        ("encoder shares the decoder's embeddings", config.get("share_embeddings")) if is_vae else None,
        ("right to left", config.get("right_to_left")),
        ("text mode", text_mode),
    ]
    model_rows = [(name, _fmt(value)) for name, value in (r for r in model_rows if r) if value is not None]

    training_rows = []
    for key, label in TRAINING_ROWS:
        value = train_config.get(key)
        if value is None:
            continue
        if key == "kl_schedule":
            params = ", ".join(f"{p}={train_config[p]}" for p in KL_SCHEDULE_FIELDS.get(value, ()) if p in train_config)
            value = f"{value} ({params})" if params else value
        training_rows.append((label, _fmt(_portable(key, value))))
    world_size = int(results.get("world_size") or 1)
    if results.get("global_step") is not None:
        training_rows.append(("optimizer steps taken", _fmt(results["global_step"])))
    training_rows.append(("processes", _fmt(world_size)))
    if train_config:
        training_summary = (
            f"Trained with `hf_sentence_vae`'s Accelerate loop on {dataset_pretty}"
            + (f", {world_size} processes" if world_size > 1 else "")
            + "; the checkpoint is the one with the best validation bound."
        )
        command = training_command(train_config, world_size)
    else:
        training_summary = "This folder has no `training_config.json`: the training configuration is unknown."
        command = "# unknown: no training_config.json"

    extra_evaluation = None
    for name in ("evaluation.json", "test_evaluation.json"):
        data = _read_json(folder / name)
        rows = [(key, _fmt(value)) for key, value in data.items() if _is_number(value)]
        if rows:
            extra_evaluation = {"file": name, "rows": rows}
            break

    best_validation = results.get("best_validation_loss")
    homotopy_lines = [
        f"a={i / (len(samples['homotopy']) - 1):.2f}  {text}" for i, text in enumerate(samples["homotopy"])
    ]
    from .analysis import describe_decoding

    decoding = describe_decoding(model, tokenizer)
    samples_note = (
        f"Decodes ({decoding}, the defaults in `generation_config.json`) of {num_samples} codes drawn from the prior "
        f"N(0, I) (seed {seed}, at most {max_new_tokens} tokens), decoded from this checkpoint when the card was "
        "written:"
        if is_vae
        else f"{num_samples} sentences sampled from the model (seed {seed}, at most {max_new_tokens} tokens):"
    )
    files = [(name, FILE_DESCRIPTIONS.get(name, "")) for name in sorted(p.name for p in folder.iterdir())]
    if not (folder / "README.md").exists():
        files.append(("README.md", FILE_DESCRIPTIONS["README.md"]))
    files = sorted(f for f in files if _hub_file(f[0]))

    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        title=f"Sentence VAE: {model_name}" if is_vae else f"Sentence VAE paper's RNNLM baseline: {model_name}",
        license_note=None if license else NO_LICENSE_NOTE,
        decoding=decoding,
        summary=summary,
        architecture=architecture,
        usage_code=_usage_code(repo, latent_size, examples),
        pipeline_code=_pipeline_code(repo, latent_size, examples),
        text_mode_note=(
            "split on whitespace only (pretokenized text, one sentence per input)."
            if text_mode == "pretokenized"
            else "the tokenizer lower-cases (NFKC) and splits punctuation off the words."
        ),
        model_rows=model_rows,
        training_summary=training_summary,
        training_rows=training_rows,
        command=command,
        has_curves=(folder / "training_curves.png").is_file(),
        has_metrics_log=(folder / "metrics.jsonl").is_file(),
        result_rows=result_rows,
        results_note=(
            "Single-sample variational bound of the selected checkpoint, evaluated at the end of training:"
            if is_vae
            else "Exact negative log-likelihood of the selected checkpoint, evaluated at the end of training:"
        ),
        global_step=results.get("global_step", results.get("step", "?")),
        best_step=results.get("best_step"),
        best_validation_loss=_fmt_result(best_validation) if _is_number(best_validation) else None,
        extra_evaluation=extra_evaluation,
        samples_note=samples_note,
        prior_samples=[f"{i + 1}. {text}" for i, text in enumerate(samples["prior"])],
        homotopy=homotopy_lines,
        samples_code=_samples_code(repo, latent_size, num_samples, homotopy_steps, seed, max_new_tokens),
        limitations=_limitations(config, results, len(tokenizer), text_mode),
        files=files,
        citation=CITATION,
    )
    check_card(card.content)
    if write:
        card.save(folder / "README.md")
    return card


def check_card(content: str) -> dict[str, Any]:
    """Parse a card like the Hub does: YAML metadata, `ModelCardData`, and the `model-index` eval results.
    Returns the metadata; raises `ValueError` when something would not validate."""
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    card = ModelCard(content)  # raises ValueError on an invalid model-index
    metadata = card.data.to_dict()
    if metadata.get("library_name") != "transformers":
        raise ValueError("card metadata: library_name must be 'transformers'")
    if "model-index" in metadata:
        name, eval_results = model_index_to_eval_results(metadata["model-index"])
        if not name or not eval_results:
            raise ValueError("card metadata: empty model-index")
    return metadata


def finalize_model_folder(folder: str | os.PathLike, repo_id: str | None = None, **card_kwargs) -> Path:
    """Make a saved model folder Hub-ready in place: the pipeline as remote code, then `README.md`."""
    folder = Path(folder)
    add_pipeline(folder)
    render_model_card(folder, repo_id, **card_kwargs)
    return folder


# --------------------------------------------------------------------------- staging and checking
def _hub_file(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in HUB_PATTERNS)


def resolve_model_folder(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model folder, run folder or None): a run folder holds `best/`; a model folder holds `config.json`."""
    source = Path(source)
    if (source / "best" / "config.json").is_file():
        return source / "best", source
    if (source / "config.json").is_file():
        run = source.parent if source.name == "best" else None
        return source, run
    raise HubPushError(f"{source} is neither a model folder (no config.json) nor a run folder (no best/config.json)")


def stage_folder(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    repo_id: str | None = None,
    render_card: bool = True,
    **card_kwargs,
) -> Path:
    """Write into `dest` (new or empty) exactly what the repository should hold: the model folder's top-level
    Hub files, the run's metrics, curves and results when the model folder lacks them, `pipelines.py`, and a
    card rendered for `repo_id` (`render_card=False` keeps an existing `README.md`). Returns `dest`."""
    model_dir, run_dir = resolve_model_folder(source)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise HubPushError(f"staging folder {dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and _hub_file(path.name):
            shutil.copy2(path, dest / path.name)
    if run_dir is not None:
        for name in RUN_ARTIFACTS:
            if not (dest / name).exists() and (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
    add_pipeline(dest)
    if render_card or not (dest / "README.md").is_file():
        render_model_card(dest, repo_id, **card_kwargs)
    validate_folder(dest)
    return dest


def validate_folder(folder: str | os.PathLike) -> None:
    """Raise `HubPushError` unless `folder` holds a loadable model: weights, config with `auto_map` and the
    remote-code files it names, tokenizer (with its `auto_map`), and a card whose metadata parses if present."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubPushError(f"{folder} is not a Hub-ready model folder: missing {', '.join(missing)}")
    problems = []
    config = _read_json(folder / "config.json")
    auto_map = dict(config.get("auto_map") or {})
    if not {"AutoConfig", "AutoModel"} <= set(auto_map):
        problems.append(
            "config.json has no auto_map for AutoConfig and AutoModel (import hf_sentence_vae before saving)"
        )
    tokenizer_auto = (_read_json(folder / "tokenizer_config.json").get("auto_map") or {}).get("AutoTokenizer")
    if not tokenizer_auto:
        problems.append("tokenizer_config.json has no auto_map for AutoTokenizer")
    else:
        auto_map["AutoTokenizer"] = (
            next((ref for ref in tokenizer_auto if ref), None) if isinstance(tokenizer_auto, list) else tokenizer_auto
        )
    for custom in (config.get("custom_pipelines") or {}).values():
        auto_map[PIPELINE_TASK] = custom.get("impl")
    todo = [(key, ref.rsplit(".", 1)[0]) for key, ref in auto_map.items() if isinstance(ref, str) and "--" not in ref]
    seen: set[str] = set()
    while todo:  # the named modules and, transitively, the `from .module import x` they need
        needed_by, module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            problems.append(f"{needed_by} needs {module}.py, which is not in the folder")
            continue
        for relative in re.findall(r"^\s*from\s+\.(\w+)\s+import", path.read_text(encoding="utf-8"), re.M):
            todo.append((f"{module}.py", relative))
    if (folder / "README.md").is_file():
        try:
            check_card((folder / "README.md").read_text(encoding="utf-8"))
        except Exception as err:
            problems.append(f"README.md metadata does not validate: {err}")
    if problems:
        raise HubPushError(f"{folder} is not Hub-ready: " + "; ".join(problems))


# --------------------------------------------------------------------------- pushing
def check_endpoint(endpoint: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Fail within about `timeout` seconds when `endpoint` does not answer HTTP; reject a token it refuses.

    Asks `GET {endpoint}/api/whoami-v2`: any HTTP answer means reachable; 401 with a token means a bad token.
    Returns the account the token belongs to (the answer's JSON; empty when the endpoint said nothing usable)."""
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/api/whoami-v2", method="GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(65536)
        try:
            account = json.loads(body)
        except ValueError:
            account = None
        return account if isinstance(account, dict) else {}
    except urllib.error.HTTPError as err:
        if err.code == 401 and token:
            raise HubPushError(
                f"{endpoint} rejected the token (401 Unauthorized): check HF_TOKEN / --token (it needs write access)"
            ) from None
        return {}
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        waited = time.monotonic() - started
        raise HubPushError(
            f"cannot reach the Hub endpoint {endpoint} ({type(reason).__name__}: {reason}; gave up after "
            f"{waited:.1f} s): check the network, proxy settings and HF_ENDPOINT"
        ) from None


def preflight(
    repo_id: str,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the model",
) -> tuple[str, str]:
    """The checks a push needs before it touches anything: a valid repository id, offline mode, a token (argument,
    `HF_TOKEN`, or the stored login), an endpoint that answers within `timeout` seconds and accepts the token, and,
    where the endpoint says whose token it is, a namespace that account may write to with a token that may write.
    Returns `(endpoint, token)`; raises `HubPushError` naming the problem."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    where = f"could not push {what} to {repo_id!r} at {endpoint}"
    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError) as err:
        raise HubPushError(f"{where}: {repo_id!r} is not a repository id ('name' or 'namespace/name'): {err}") from None
    if constants.is_offline_mode():
        raise HubPushError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to push")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubPushError(f"{where}: no token; set HF_TOKEN, pass --token, or run `hf auth login`")
    try:
        account = check_endpoint(endpoint, token, timeout)
    except HubPushError as err:
        raise HubPushError(f"{where}: {err}") from None
    _check_account(account, repo_id, where)
    return endpoint, token


def _check_account(account: dict[str, Any], repo_id: str, where: str) -> None:
    """Refuse a push that the account behind the token cannot make: a read-only token, or a namespace that is
    neither the user's nor one of their organisations'. Says nothing when the endpoint did not tell."""
    name = account.get("name")
    role = ((account.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubPushError(
            f"{where}: the token of {name or 'this account'} is read-only; use a token with write access"
        )
    if not name or "/" not in repo_id:
        return
    namespace = repo_id.split("/")[0]
    allowed = {name} | {org.get("name") for org in account.get("orgs") or [] if isinstance(org, dict)}
    if namespace not in allowed:
        raise HubPushError(
            f"{where}: the token belongs to {name!r}, who cannot create repositories under {namespace!r} "
            f"(their namespaces: {', '.join(sorted(n for n in allowed if n))})"
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload sentence VAE",
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Create `repo_id` (if needed) and upload the Hub files of `folder` in one commit; returns the commit URL.

    Everything that can be checked locally is checked first (the folder, a chosen license, offline mode, a token),
    then the endpoint must answer within `timeout` seconds, so nothing is created for a push that cannot succeed. `token` defaults
    to `HF_TOKEN` (or the stored login); `revision` is a branch, created if missing. Failures raise
    `HubPushError` naming the repository, the endpoint and the cause. A repository this call created is deleted
    again if the upload then fails.
    """
    folder = Path(folder)
    validate_folder(folder)
    readme = folder / "README.md"
    if readme.is_file() and NO_LICENSE_NOTE in readme.read_text(encoding="utf-8"):
        raise HubPushError(
            f"could not push {folder} to {repo_id!r}: its model card says no license was chosen; render it with one "
            "(train with --license, or push_to_hub.py --license ID)"
        )
    from huggingface_hub import HfApi

    endpoint, token = preflight(repo_id, token, endpoint, timeout, what=str(folder))
    where = f"could not push {folder} to {repo_id!r} at {endpoint}"
    api = HfApi(endpoint=endpoint, token=token)
    existed: bool | None
    try:
        existed = api.repo_exists(repo_id, repo_type="model")
    except Exception:  # unknown: never delete what might have been there
        existed = None
    created = False
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        created = existed is False
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=list(HUB_PATTERNS),
        )
    except Exception as err:  # httpx / OfflineModeIsEnabled / HfHubHTTPError all mean: not pushed
        cleanup = ""
        if created:
            try:
                api.delete_repo(repo_id, repo_type="model")
                cleanup = " The repository created for this push was deleted again."
            except Exception as delete_err:
                cleanup = f" The repository created for this push is empty; deleting it failed too ({delete_err})."
        raise HubPushError(
            f"{where}: {type(err).__name__}: {err}.{cleanup} Check the network, HF_ENDPOINT and HF_TOKEN "
            "(HF_HUB_OFFLINE must be unset)."
        ) from err
    url = getattr(info, "commit_url", str(info))
    logger.info(f"pushed {folder} to {repo_id}: {url}")
    return url
