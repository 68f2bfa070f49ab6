"""The command line of `train_scripts/train.py` (`hf_sentence_vae.cli` over `TrainingConfig`): flags, `--config`
YAML/JSON files, `none` for optional flags, booleans, help texts with defaults and choices, the shipped configs.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from helpers import (
    REPO,
    TRAIN_SCRIPT,
    load_script,
    train_cli_error,
)

from hf_sentence_vae import SentenceVAEConfig
from hf_sentence_vae.cli import parse_args
from hf_sentence_vae.training import TrainingConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_cli_reads_yaml_and_flags_override(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "train_file: train.txt\n"
        "validation_file: valid.txt\n"
        "learning_rate: 1e-3\n"  # YAML 1.1 reads this as a string: it must still become a float
        "latent_size: 8\n"
        "bidirectional_encoder: true\n"
        "kl_schedule: linear\n"
        "checkpointing_steps: 100\n"
    )
    config = parse_args(TrainingConfig, ["--config", str(config_file)])
    assert config.train_file == "train.txt" and config.validation_file == "valid.txt"
    assert config.learning_rate == 1e-3 and isinstance(config.learning_rate, float)
    assert config.latent_size == 8 and config.bidirectional_encoder is True
    assert config.kl_schedule == "linear"
    assert str(config.checkpointing_steps) == "100"
    assert config.per_device_train_batch_size == 32  # untouched default

    config = parse_args(
        TrainingConfig,
        [
            "--config",
            str(config_file),
            "--learning_rate",
            "0.01",
            "--latent_size",
            "4",
            "--bidirectional_encoder",
            "no",
        ],
    )
    assert config.learning_rate == 0.01 and config.latent_size == 4 and config.bidirectional_encoder is False
    assert config.train_file == "train.txt"


def test_cli_reads_json_and_flags_override(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"train_file": "a.txt", "seed": 7, "free_bits": 0.25, "disable_tqdm": True}))
    config = parse_args(TrainingConfig, ["--config", str(config_file), "--seed", "9"])
    assert (config.train_file, config.seed, config.free_bits, config.disable_tqdm) == ("a.txt", 9, 0.25, True)


def test_cli_none_unsets_an_optional_flag_set_by_the_config(tmp_path, capsys):
    """`--ema_decay none` undoes a config file's `ema_decay: 0.999` (BENCHMARKS.md's run-18 speed commands pass
    `--ema_decay none`); a non-optional flag still rejects the word, naming its type."""
    config_file = tmp_path / "run.yaml"
    config_file.write_text("train_file: a.txt\nema_decay: 0.999\nmax_train_steps: 10\n")
    assert parse_args(TrainingConfig, ["--config", str(config_file)]).ema_decay == 0.999
    config = parse_args(
        TrainingConfig, ["--config", str(config_file), "--ema_decay", "None", "--max_train_steps", "null"]
    )
    assert config.ema_decay is None and config.max_train_steps is None
    assert parse_args(TrainingConfig, ["--config", str(config_file), "--ema_decay", "0.99"]).ema_decay == 0.99
    with pytest.raises(SystemExit):
        parse_args(TrainingConfig, ["--config", str(config_file), "--learning_rate", "none"])
    assert "invalid float value: 'none'" in capsys.readouterr().err


def test_every_model_flag_reaches_the_model_config():
    from hf_sentence_vae.training import MODEL_FIELDS

    defaults = SentenceVAEConfig()
    assert all(hasattr(defaults, name) for name in MODEL_FIELDS)
    flags = ["--decoder_weight_drop", "0.3", "--dropout", "0.1", "--embedding_dropout", "0.2", "--locked_dropout"]
    config = parse_args(TrainingConfig, ["--train_file", "a.txt", *flags])
    model_config = SentenceVAEConfig(vocab_size=12, **config.model_overrides())
    assert (model_config.decoder_weight_drop, model_config.dropout) == (0.3, 0.1)
    assert (model_config.embedding_dropout, model_config.locked_dropout) == (0.2, True)
    assert set(MODEL_FIELDS) <= {f.name for f in dataclasses.fields(TrainingConfig)}


@pytest.mark.parametrize("path", sorted((REPO / "train_scripts" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse_and_build_valid_models(path):
    """Every experiment config in train_scripts/configs/ parses (no misspelt key) and gives a valid model config,
    reads PTB from the shared data folder, and writes into its own run folder."""
    config = parse_args(TrainingConfig, ["--config", str(path)])
    model_config = SentenceVAEConfig(vocab_size=10002, **config.model_overrides())
    assert config.train_file.endswith("ptb.train.txt") and config.output_dir.startswith("runs/")
    assert (model_config.latent_size == 0) == ("rnnlm" in path.stem)
    assert (model_config.word_keep_rate == 0.0) == ("inputless" in path.stem)


def test_paper_configs_have_table_11_sizes():
    """The four Table-2 configs carry the paper's tuned sizes and the sigmoid KL schedule for the VAEs."""
    configs = {
        stem: parse_args(TrainingConfig, ["--config", str(REPO / "train_scripts" / "configs" / f"ptb_{stem}.yaml")])
        for stem in ("vae_standard", "rnnlm_standard")
    }
    vae, rnnlm = configs["vae_standard"], configs["rnnlm_standard"]
    assert (vae.embedding_size, vae.decoder_hidden_size, vae.latent_size) == (353, 191, 13)
    assert (rnnlm.embedding_size, rnnlm.decoder_hidden_size, rnnlm.latent_size) == (464, 337, 0)
    assert vae.kl_schedule == "sigmoid"


def test_cli_unknown_key_in_config_file_is_named(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("train_file: a.txt\nlearning_rat: 0.1\nlatent_dim: 3\n")
    with pytest.raises(ValueError, match="learning_rat, latent_dim|latent_dim, learning_rat"):
        parse_args(TrainingConfig, ["--config", str(config_file)])
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_args(TrainingConfig, ["--config", str(tmp_path / "missing.yaml")])
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        parse_args(TrainingConfig, ["--config", str(listing)])


def test_cli_boolean_flags_and_unknown_flags():
    base = ["--train_file", "a.txt"]
    config = parse_args(TrainingConfig, base)
    assert config.disable_tqdm is False and config.bidirectional_encoder is None
    config = parse_args(TrainingConfig, [*base, "--disable_tqdm", "--bidirectional_encoder", "false"])
    assert config.disable_tqdm is True and config.bidirectional_encoder is False
    config = parse_args(TrainingConfig, [*base, "--with_tracking", "yes", "--tie_word_embeddings", "1"])
    assert config.with_tracking is True and config.tie_word_embeddings is True
    config = parse_args(TrainingConfig, [*base, "--push_to_hub", "--hub_model_id", "me/vae", "--license", "mit"])
    assert config.push_to_hub is True and config.license == "mit"
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_args(TrainingConfig, [*base, "--push_to_hub"])
    with pytest.raises(SystemExit):
        parse_args(TrainingConfig, [*base, "--disable_tqdm", "maybe"])
    with pytest.raises(SystemExit):
        parse_args(TrainingConfig, [*base, "--no_such_flag", "1"])
    with pytest.raises(ValueError, match="optimizer"):
        parse_args(TrainingConfig, [*base, "--optimizer", "lbfgs"])
    with pytest.raises(ValueError, match="lr_scheduler_type"):
        parse_args(TrainingConfig, [*base, "--lr_scheduler_type", "exponential"])
    for bad in ("1.0", "0", "-0.5"):
        with pytest.raises(ValueError, match=f"ema_decay must be in \\(0, 1\\).*{bad}"):
            parse_args(TrainingConfig, [*base, "--ema_decay", bad])


def test_every_train_flag_has_help_default_and_choices(capsys):
    """`train.py --help` describes every flag (HfArgumentParser-style metadata on the TrainingConfig fields):
    a help text, its default, and the allowed values of the flags that have a fixed set of them."""
    import argparse

    from hf_sentence_vae.cli import build_parser

    parser = build_parser(TrainingConfig, "")
    flags = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    exposed = {f.name for f in dataclasses.fields(TrainingConfig)} - {"extra"}
    assert {a.dest for a in flags} == exposed | {"config"}
    for action in flags:
        assert action.help and len(action.help) > 10, action.dest
    text = parser.format_help()
    options = text[text.index("options:") :]
    for action in flags:
        start = re.search("  " + re.escape(action.option_strings[0]) + "[ ,\n]", options)
        assert start is not None, action.dest
        entry = options[start.start() :]
        entry = entry[: entry.index("\n  --", 1)] if "\n  --" in entry[1:] else entry
        assert "(default:" in entry, action.dest
    for name, values in {
        "optimizer": ("adam", "adamw", "sgd"),
        "mixed_precision": ("no", "bf16", "fp16"),
        "kl_schedule": ("sigmoid", "linear", "cyclical", "constant"),
        "text_mode": ("pretokenized", "raw"),
        "on_nonfinite_loss": ("error", "skip"),
        "latent_injection": ("initial_state", "initial_state_and_inputs", "initial_state_inputs_and_outputs"),
        "report_to": ("all", "tensorboard"),
        "lr_scheduler_type": ("constant", "linear", "cosine"),
    }.items():
        field = next(f for f in dataclasses.fields(TrainingConfig) if f.name == name)
        assert set(values) <= set(field.metadata["choices"]), name
        assert f"--{name} {{" + ",".join(field.metadata["choices"]) + "}" in text, name
    # an optional choice can still be unset
    base = ["--train_file", "x.txt"]
    assert parse_args(TrainingConfig, [*base, "--latent_injection", "none"]).latent_injection is None
    assert parse_args(TrainingConfig, [*base, "--license", "mit"]).license == "mit"
    with pytest.raises(ValueError, match="license"):
        parse_args(TrainingConfig, [*base, "--license", "Apache 2"])
    train_script = load_script(TRAIN_SCRIPT)
    with pytest.raises(SystemExit):
        train_script.main(["--help"])
    assert "--kl_target_ki" in capsys.readouterr().out


def test_unknown_key_in_a_config_file(train_script, capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("train_file: a.txt\nlearning_rat: 0.1\n")
    train_cli_error(
        train_script, capsys, ["--config", str(tmp_path / "run.yaml")], r"unknown option\(s\): learning_rat"
    )


def test_malformed_yaml_config(scripts, capsys, tmp_path):
    (tmp_path / "run.yaml").write_text("train_file: [a.txt\nlearning_rate: 0.1\n")
    train_cli_error(
        scripts["train"], capsys, ["--config", str(tmp_path / "run.yaml")], r"run\.yaml' is not valid YAML at line \d+"
    )
