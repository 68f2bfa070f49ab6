"""Loading saved models strictly (`hf_sentence_vae.loading`): every way a model or tokenizer folder can be unusable
(missing, no or truncated weights, weights that do not match `config.json`, a tokenizer of another vocabulary) is one
clear error, from the loaders and from the scripts; flags that the weights cannot follow are refused; a folder saved
by `save_pretrained` always loads.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    cli_error,
    nothing_trained,
    tiny_argv,
    tiny_config,
    train_cli_error,
    train_run,
)

from hf_sentence_vae import SentenceVAEModel, build_tokenizer
from hf_sentence_vae.loading import CheckpointError, load_pretrained_model
from hf_sentence_vae.modeling_sentence_vae import SentenceVAEModel  # noqa: F811

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_tokenizer_that_does_not_match_the_model(train_script, capsys, small_data, pretrained, tmp_path):

    build_tokenizer(["a b c d e f"]).save_pretrained(tmp_path / "other_tokenizer")
    argv = tiny_argv(
        small_data,
        tmp_path / "run",
        model_name_or_path=pretrained,
        tokenizer_name_or_path=tmp_path / "other_tokenizer",
    )
    train_cli_error(train_script, capsys, argv, r"tokenizer vocabulary size 10 does not match the model's vocab_size")
    nothing_trained(tmp_path / "run")


def test_impossible_override_of_a_pretrained_model(train_script, capsys, small_data, pretrained, tmp_path):
    argv = tiny_argv(small_data, tmp_path / "run", model_name_or_path=pretrained, word_keep_rate=-0.5)
    train_cli_error(train_script, capsys, argv, r"invalid word_keep_rate=-0.5")


@pytest.mark.parametrize("damage", ["missing_folder", "no_weights", "bin_only", "truncated", "garbage", "no_config"])
def test_model_folder_with_missing_or_corrupt_weights(train_script, capsys, small_data, pretrained, tmp_path, damage):
    folder = tmp_path / "model"
    if damage != "missing_folder":
        shutil.copytree(pretrained, folder)
    weights = folder / "model.safetensors"
    if damage in ("no_weights", "bin_only"):
        weights.unlink()
        if damage == "bin_only":
            (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    elif damage == "truncated":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif damage == "no_config":
        (folder / "config.json").unlink()
    patterns = {
        "missing_folder": r"--model_name_or_path '.*model' does not exist",
        "no_weights": r"has no model\.safetensors$",
        "bin_only": r"has no model\.safetensors \(found pytorch_model\.bin: only safetensors weights are loaded\)",
        "truncated": r"model\.safetensors is \d+ bytes but its header describes \d+ bytes \(truncated or corrupt\)",
        "garbage": r"model\.safetensors is 64 bytes but declares a \d+-byte header",
        "no_config": r"has no config\.json: not a saved model folder",
    }
    argv = tiny_argv(small_data, tmp_path / "run", model_name_or_path=folder)
    started = time.perf_counter()
    train_cli_error(train_script, capsys, argv, patterns[damage])
    assert time.perf_counter() - started < 30  # checked before the data is read
    nothing_trained(tmp_path / "run")


def test_missing_tokenizer_folder(train_script, capsys, small_data, tmp_path):
    argv = tiny_argv(small_data, tmp_path / "run", tokenizer_name_or_path=tmp_path / "no_tokenizer")
    train_cli_error(train_script, capsys, argv, r"--tokenizer_name_or_path '.*no_tokenizer' does not exist")
    (tmp_path / "empty_folder").mkdir()
    argv = tiny_argv(small_data, tmp_path / "run", tokenizer_name_or_path=tmp_path / "empty_folder")
    train_cli_error(train_script, capsys, argv, r"has no tokenizer\.json")


def test_architecture_flags_with_a_pretrained_model_are_refused(scripts, capsys, small_data, pretrained, tmp_path):
    """The weights fix the architecture: every flag that would change it is named, before any data is read."""
    argv = tiny_argv(small_data, tmp_path / "run", model_name_or_path=pretrained, embedding_size=64, latent_size=8)
    line = train_cli_error(scripts["train"], capsys, argv, r"--model_name_or_path '.*best' fixes the architecture")
    assert "--embedding_size (16 -> 64)" in line and "--latent_size (4 -> 8)" in line
    nothing_trained(tmp_path / "run")


def test_regularisation_flags_with_a_pretrained_model_apply(small_data, pretrained, tmp_path):
    """Flags that leave the weights' shapes alone (word dropout, dropout) are fine-tuning settings: applied, and the
    result loads with the strict loader."""
    out = tmp_path / "run"
    train_run(tiny_config(small_data, out, model_name_or_path=str(pretrained), word_keep_rate=0.5, dropout=0.2))
    model = load_pretrained_model(SentenceVAEModel, out / "best")
    assert model.config.word_keep_rate == 0.5 and model.config.dropout == 0.2


def test_the_bag_of_words_weight_of_a_pretrained_model_changes_but_does_not_switch(
    scripts, capsys, small_data, pretrained, tmp_path
):
    """The weights fix whether the bag-of-words layer exists, not its loss weight: switching the loss on (or off) is
    refused like any architecture change, another positive weight is a fine-tuning setting."""
    argv = tiny_argv(small_data, tmp_path / "on", model_name_or_path=pretrained, bag_of_words_weight=0.5)
    line = train_cli_error(scripts["train"], capsys, argv, r"--model_name_or_path '.*best' fixes the architecture")
    assert "--bag_of_words_weight (0.0 -> 0.5)" in line
    nothing_trained(tmp_path / "on")

    with_layer = tmp_path / "with_layer"
    train_run(tiny_config(small_data, with_layer, bag_of_words_weight=0.5))
    tuned = tmp_path / "tuned"
    train_run(tiny_config(small_data, tuned, model_name_or_path=str(with_layer / "best"), bag_of_words_weight=2.0))
    model = load_pretrained_model(SentenceVAEModel, tuned / "best")
    assert model.config.bag_of_words_weight == 2.0 and hasattr(model, "bag_of_words_head")
    argv = tiny_argv(small_data, tmp_path / "off", model_name_or_path=with_layer / "best", bag_of_words_weight=0)
    line = train_cli_error(scripts["train"], capsys, argv, r"fixes the architecture")
    assert "--bag_of_words_weight (0.5 -> 0.0)" in line


def _edited_copy(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    config.update(changes)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(
    "changes, pattern",
    [
        ({"num_highway_layers": 1}, r"asks for num_highway_layers=1 but model\.safetensors holds 0 encoder_highway"),
        ({"num_highway_layers": 100_000}, r"asks for num_highway_layers=100000 but model\.safetensors holds 0"),
        ({"embedding_size": 32}, r"model\.safetensors does not match config\.json \(\d+ weight\(s\) of another shape"),
        ({"bidirectional_encoder": True}, r"does not match config\.json \(.*missing: .*encoder\.weight_hh_l0_reverse"),
        ({"latent_size": 0}, r"does not match config\.json \(\d+ weight\(s\) unexpected: "),
        ({"max_sentence_length": 10**12}, r"invalid max_sentence_length=1000000000000: must be at most 10,000"),
        ({"max_sentence_length": 1e12}, r"invalid max_sentence_length=1000000000000\.0: must be a positive integer"),
    ],
)
def test_config_that_asks_for_other_weights(scripts, capsys, small_data, model_folder, tmp_path, changes, pattern):
    """Missing, unexpected or reshaped weights are an error of every loader, found from the safetensors header before
    anything is built (a config asking for 10^5 layers used to take gigabytes)."""
    folder = _edited_copy(model_folder, tmp_path, **changes)
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=pattern):
        load_pretrained_model(SentenceVAEModel, folder)
    argv = ["--model_name_or_path", str(folder), "--test_file", small_data["validation_file"]]
    cli_error(scripts["evaluate"], capsys, argv, pattern)
    cli_error(scripts["generate"], capsys, ["prior", "--model_name_or_path", str(folder)], pattern)
    assert time.perf_counter() - started < 30


def test_config_that_asks_for_other_weights_through_train(scripts, capsys, small_data, pretrained, tmp_path):
    folder = _edited_copy(pretrained, tmp_path, num_highway_layers=1)
    argv = tiny_argv(small_data, tmp_path / "run", model_name_or_path=folder)
    train_cli_error(scripts["train"], capsys, argv, r"asks for num_highway_layers=1 but model\.safetensors holds 0")
    nothing_trained(tmp_path / "run")


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"tie_word_embeddings": True},
        {"posterior_mean_bn_scale": 0.5, "bag_of_words_weight": 0.5},
        {"latent_size": 0},
        {"num_highway_layers": 2, "bidirectional_encoder": True, "share_embeddings": False},
        {"latent_injection": "initial_state_inputs_and_outputs", "tie_word_embeddings": True, "embedding_size": 8},
    ],
    ids=["default", "tied", "bn_bag_of_words", "rnnlm", "highway_bidirectional_unshared", "injected_tied_projected"],
)
def test_the_strict_loader_loads_every_variant(tiny_model, random_batch, tmp_path, variant):
    """No false alarm: a folder saved by `save_pretrained` loads, whatever the architecture (tied weights absent from
    the file, batch-norm buffers present)."""
    model = tiny_model(**variant)
    model.save_pretrained(tmp_path)
    loaded = load_pretrained_model(SentenceVAEModel, tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name  # exact: the same bytes, saved and read back
