"""The model card of a saved sentence VAE: `README.md` with the Hub's metadata, rendered from the folder alone.

[`render_model_card`] fills the Jinja template `templates/sentence_vae.md.j2` (shipped inside the package) with
what the folder holds: YAML metadata (library, tags, datasets, metrics and a `model-index` with the run's results),
the architecture (`config.json`), the training options and the command that reproduces them
(`training_config.json`), the measured results (`eval_results.json` or `results.json`), links to `metrics.jsonl`
and `training_curves.png`, prior samples and a homotopy decoded from the folder's own weights with a fixed seed
(exactly as the card's snippet does), usage snippets, limitations and the citation. Re-rendering gives the same
card. Numbers and code are computed here; every sentence of prose is in the template. [`check_card`] parses a card
the way the Hub does.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shlex
from pathlib import Path
from typing import Any

from .analysis import describe_decoding
from .latent_report import REPORT_FILE as LATENT_REPORT_FILE
from .latent_report import report_rows
from .rate_control import SCHEDULE_OPTIONS
from .training_args import OPERATIONAL_FIELDS, TrainingConfig, check_license_id

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "sentence_vae.md.j2"
# Top-level files a repository gets (weights, configs, tokenizer, code, card, metrics, plots); no sub-folders. The card
# lists them; `hub` uploads them.
HUB_PATTERNS = ("*.safetensors", "*.json", "*.jsonl", "*.py", "README.md", "*.png", "*.txt")
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
COMMAND_SKIP = (set(OPERATIONAL_FIELDS) - {"output_dir", "checkpointing_steps", "save_total_limit"}) | {"license"}
# The training options the card's table shows (when set), with their labels.
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
    ("kl_target", "KL target, nats per sentence (`kl_target`, PI controller of the weight)"),
    ("encoder_warmup_steps", "encoder warm start, autoencoder steps (`encoder_warmup_steps`)"),
    ("aggressive_encoder_steps", "aggressive encoder updates per step, at most (`aggressive_encoder_steps`)"),
    ("mixed_precision", "mixed precision"),
    ("seed", "seed"),
)
# Rate-control rows shown only when the run used them (0 means off).
ROWS_ONLY_WHEN_ON = frozenset({"encoder_warmup_steps", "aggressive_encoder_steps"})
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
    "pipelines.py": "remote code: the `sentence-vae` pipeline (sampling, reconstruction, homotopy)",
    "training_config.json": "every training option of the run",
    "eval_results.json": "the final results (the run's `results.json`)",
    LATENT_REPORT_FILE: "how much of a sentence the code carries: KL, mutual information, reconstructions, homotopies",
    "results.json": "the run's final results",
    "metrics.jsonl": "the training log: one JSON record per logged step or evaluation",
    "training_curves.png": "KL weight, KL term and validation bound over training",
    "README.md": "this card",
}


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or `{}` when the file is missing or holds something else."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


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


def is_hub_file(name: str) -> bool:
    """Whether a repository gets the top-level file `name` (see `HUB_PATTERNS`)."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in HUB_PATTERNS)


def load_results(folder: str | os.PathLike) -> dict[str, Any]:
    """The measured results of a model folder: `eval_results.json` (written by training), else `results.json`."""
    folder = Path(folder)
    return read_json_object(folder / "eval_results.json") or read_json_object(folder / "results.json")


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


def resolve_license(folder: str | os.PathLike, license: str | None = None) -> str | None:  # noqa: A002
    """The license a card states: `license`, else the one chosen at training time (`training_config.json`), else
    None (not chosen)."""
    if license is None:
        license = read_json_object(Path(folder) / "training_config.json").get("license")  # noqa: A001
    return None if license is None else check_license_id(license)


def run_name(folder: str | os.PathLike, repo_id: str | None = None) -> str:
    """The name a card is titled with: the repository's name, else the training run's (its `--hub_model_id` or
    its output folder), else the folder's."""
    folder = Path(folder)
    if repo_id:
        return repo_id.split("/")[-1]
    train_config = read_json_object(folder / "training_config.json")
    if train_config.get("hub_model_id"):
        return str(train_config["hub_model_id"]).split("/")[-1]
    if train_config.get("output_dir"):
        return Path(train_config["output_dir"]).name
    return folder.parent.name if folder.name == "best" else folder.name


def training_command(train_config: dict[str, Any], world_size: int = 1) -> str:
    """A command that reproduces the run: `train_scripts/train.py` with every option that differs from its default
    (local paths shown by their last component: the files' names, not where they were on the training machine)."""
    defaults = TrainingConfig.defaults()
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


def _measured_kl(results: dict[str, Any]) -> dict[str, Any] | None:
    """The KL term the card's limitations quote: the validation split's, else the test split's, else None."""
    split = next((s for s in ("validation", "test") if _is_number(results.get(f"{s}_kl"))), None)
    return None if split is None else {"split": split, "kl": float(results[f"{split}_kl"])}


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
    if model.config.is_rnnlm:
        return {"prior": texts(num_samples=num_samples, do_sample=True, generator=generator), "homotopy": []}
    z = model.sample_prior(num_samples, generator=generator)
    prior = texts(latent=z)
    ends = model.sample_prior(2, generator=generator)
    path = model.interpolate(ends[0], ends[1], steps=homotopy_steps)
    return {"prior": prior, "homotopy": texts(latent=path)}


def _samples_code(repo: str, is_vae: bool, num_samples: int, steps: int, seed: int, max_new_tokens: int) -> str:
    head = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
        f"generator = torch.Generator().manual_seed({seed})",
    ]
    if not is_vae:
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


def _usage_code(repo: str, is_vae: bool, examples: tuple[str, str]) -> str:
    lines = [
        "import torch",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)',
        f'tokenizer = AutoTokenizer.from_pretrained("{repo}", trust_remote_code=True)',
        "",
    ]
    if is_vae:
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


def _pipeline_code(repo: str, is_vae: bool, examples: tuple[str, str]) -> str:
    lines = [
        "from transformers import pipeline",
        "",
        f'pipe = pipeline(model="{repo}", trust_remote_code=True)  # with hf_sentence_vae installed: '
        f'pipeline("sentence-vae", model="{repo}")',
    ]
    if is_vae:
        lines += [
            "pipe(5, seed=0)  # five sentences from the prior",
            f"pipe({examples[0]!r}, num_posterior_samples=3, seed=0)  # reconstruction",
            f"pipe(({examples[0]!r}, {examples[1]!r}), steps=5)  # homotopy",
        ]
    else:
        lines += ["pipe(5, do_sample=True, seed=0)  # five sampled sentences"]
    return "\n".join(lines)


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
    config = read_json_object(folder / "config.json")
    train_config = read_json_object(folder / "training_config.json")
    results = load_results(folder)
    template_path = Path(template_path) if template_path else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(f"model card template {template_path} not found")

    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        samples = decode_card_samples(model, tokenizer, num_samples, homotopy_steps, seed, max_new_tokens)
    latent_size = int(model.config.latent_size)
    is_vae = not model.config.is_rnnlm
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
        ("batch-normalised posterior means, fixed scale (BN-VAE)", config.get("posterior_mean_bn_scale") or None),
        ("bag-of-words loss weight (`bag_of_words_weight`)", config.get("bag_of_words_weight") or None),
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
        if value is None or (key in ROWS_ONLY_WHEN_ON and not value):
            continue
        if key == "kl_schedule":
            params = ", ".join(f"{p}={train_config[p]}" for p in SCHEDULE_OPTIONS.get(value, ()) if p in train_config)
            value = f"{value} ({params})" if params else value
        training_rows.append((label, _fmt(_portable(key, value))))
    world_size = int(results.get("world_size") or 1)
    if results.get("global_step") is not None:
        training_rows.append(("optimizer steps taken", _fmt(results["global_step"])))
    training_rows.append(("processes", _fmt(world_size)))
    command = training_command(train_config, world_size) if train_config else "# unknown: no training_config.json"

    extra_evaluation = None
    for name in ("evaluation.json", "test_evaluation.json"):
        data = read_json_object(folder / name)
        rows = [(key, _fmt(value)) for key, value in data.items() if _is_number(value)]
        if rows:
            extra_evaluation = {"file": name, "rows": rows}
            break

    latent = read_json_object(folder / LATENT_REPORT_FILE) if is_vae else {}
    latent_section = None
    if latent.get("reconstruction_greedy"):
        latent_section = {"file": LATENT_REPORT_FILE, "split": latent.get("split", "test"), "rows": report_rows(latent)}

    best_validation = results.get("best_validation_loss")
    homotopy_lines = [
        f"a={i / (len(samples['homotopy']) - 1):.2f}  {text}" for i, text in enumerate(samples["homotopy"])
    ]
    decoding = describe_decoding(model, tokenizer)
    files = [(name, FILE_DESCRIPTIONS.get(name, "")) for name in sorted(p.name for p in folder.iterdir())]
    if not (folder / "README.md").exists():
        files.append(("README.md", FILE_DESCRIPTIONS["README.md"]))
    files = sorted(f for f in files if is_hub_file(f[0]))

    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        is_vae=is_vae,
        model=model.config,
        license=license,
        no_license_note=NO_LICENSE_NOTE,
        dataset=dataset_pretty,
        injection_words=INJECTION_WORDS.get(injection, injection),
        decoding=decoding,
        usage_code=_usage_code(repo, is_vae, examples),
        pipeline_code=_pipeline_code(repo, is_vae, examples),
        text_mode=text_mode,
        model_rows=model_rows,
        trained=bool(train_config),
        world_size=world_size,
        training_rows=training_rows,
        command=command,
        has_curves=(folder / "training_curves.png").is_file(),
        has_metrics_log=(folder / "metrics.jsonl").is_file(),
        result_rows=result_rows,
        global_step=results.get("global_step", results.get("step", "?")),
        best_step=results.get("best_step"),
        best_validation_loss=_fmt_result(best_validation) if _is_number(best_validation) else None,
        extra_evaluation=extra_evaluation,
        latent_section=latent_section,
        num_samples=num_samples,
        seed=seed,
        max_new_tokens=max_new_tokens,
        prior_samples=[f"{i + 1}. {text}" for i, text in enumerate(samples["prior"])],
        homotopy=homotopy_lines,
        samples_code=_samples_code(repo, is_vae, num_samples, homotopy_steps, seed, max_new_tokens),
        measured_kl=_measured_kl(results) if is_vae else None,
        vocabulary_size=len(tokenizer),
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


__all__ = [
    "CARD_HOMOTOPY_STEPS",
    "CARD_NUM_SAMPLES",
    "NO_LICENSE_NOTE",
    "TEMPLATE_PATH",
    "check_card",
    "decode_card_samples",
    "is_hub_id",
    "load_results",
    "render_model_card",
    "resolve_license",
    "run_name",
    "training_command",
]
