"""The model card (`hf_sentence_vae.model_card`): written by training for `best/`, its metadata as the Hub parses
it, its numbers those of the run, its samples decoded from the model, every setting named where used, and its
template shipped inside the package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import (
    card_samples,
    code_blocks,
    train_tiny_run,
)
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from hf_sentence_vae import hub, model_card

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_card_metadata_parses_and_validates(run_dir):
    path = run_dir / "best" / "README.md"
    card = ModelCard.load(path)
    metadata = metadata_load(path)
    assert metadata == card.data.to_dict()
    assert isinstance(ModelCardData(**metadata), ModelCardData)
    assert metadata["library_name"] == "transformers"
    # tags name working pipelines only: the remote-code sentence-vae pipeline, not transformers' text-generation
    assert "pipeline_tag" not in metadata and "text-generation" not in metadata["tags"]
    assert {"sentence-vae", "vae", "custom_code"} <= set(metadata["tags"])
    # no license was chosen for this run: the metadata says "other" and the card says so in words
    assert metadata["license"] == "other" and model_card.NO_LICENSE_NOTE in card.text
    assert card.text.lstrip().startswith("# Sentence VAE: tiny-vae\n")  # the run's name, not "best" or "run"
    assert metadata["language"] == "en"
    assert metadata["metrics"] == ["perplexity"]
    assert "datasets" not in metadata  # local files: no Hub dataset id is claimed

    # model-index: one result per split, parsed the way the Hub does it.
    index = metadata["model-index"]
    assert isinstance(index, list) and len(index) == 1 and index[0]["name"] == "tiny-vae"
    assert [r["dataset"]["split"] for r in index[0]["results"]] == ["validation", "test"]
    for result in index[0]["results"]:
        assert result["task"]["type"] == "text-generation"
        assert result["dataset"]["type"] and result["dataset"]["name"].startswith("local text files")
        assert [m["type"] for m in result["metrics"]] == ["nll", "reconstruction", "kl", "perplexity"]
    name, eval_results = model_index_to_eval_results(index)
    assert name == "tiny-vae" and len(eval_results) == 8
    assert card.data.eval_results == eval_results
    model_card.check_card(path.read_text())


def test_card_numbers_equal_the_run_metrics(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    text = (run_dir / "best" / "README.md").read_text()
    _, eval_results = model_index_to_eval_results(metadata_load(run_dir / "best" / "README.md")["model-index"])
    suffix = {"nll": "loss", "reconstruction": "reconstruction", "kl": "kl", "perplexity": "ppl"}
    for result in eval_results:
        want = results[f"{result.dataset_split}_{suffix[result.metric_type]}"]
        assert result.metric_value == float(f"{want:.6g}")
        assert result.metric_value == pytest.approx(want, rel=1e-5, abs=1e-9)
    # the results table, row by row
    for split in ("validation", "test"):
        cells = [model_card._fmt_result(results[f"{split}_{key}"]) for key in ("loss", "reconstruction", "kl", "ppl")]
        assert f"| {split} | " + " | ".join(cells) + " |" in text
    # the best validation bound is the best evaluation logged in metrics.jsonl, and the final one re-evaluates it
    best = min(r["validation_loss"] for r in records if "validation_loss" in r)
    assert results["best_validation_loss"] == best
    assert results["validation_loss"] == pytest.approx(best, rel=1e-6)
    assert f"Best validation bound during training: {model_card._fmt_result(best)}." in text
    assert f"(step {results['global_step']}, best validation step {results['best_step']})" in text
    # the training configuration and the command that produced the numbers
    command = code_blocks(text, "bash")[0]
    assert command.startswith("python train_scripts/train.py")
    for flag in (
        "--max_train_steps 40",
        "--latent_size 4",
        "--seed 7",
        "--kl_schedule constant",
        "--kl_constant 0.05",
        "--learning_rate 0.02",
    ):
        assert flag in command
    assert "hub_token" not in text
    # no local paths: the data files by name, the run folder as runs/<name>
    assert str(run_dir.parent) not in text and "/tmp" not in command
    assert "--train_file train.txt" in command and f"--output_dir runs/{run_dir.name}" in command


def test_card_samples_are_decoded_from_this_model(run_dir, best_model):
    model, tokenizer = best_model
    prior, path = card_samples((run_dir / "best" / "README.md").read_text())
    expected = model_card.decode_card_samples(model, tokenizer)
    assert prior == expected["prior"] and len(prior) == model_card.CARD_NUM_SAMPLES
    assert path == expected["homotopy"] and len(path) == model_card.CARD_HOMOTOPY_STEPS
    assert len(set(prior)) > 1 and all(prior), "the tiny model should give varied, non-empty sentences"
    # ... and they are what the card's own snippet prints (same seed, same calls).
    snippet = code_blocks((run_dir / "best" / "README.md").read_text(), "python")[-1]
    assert "model.sample_prior(5, generator=generator)" in snippet and "model.interpolate(" in snippet


def test_card_for_an_rnnlm_without_training_files(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model(latent_size=0, initializer_range=0.5)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.finalize_model_folder(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    metadata = card.data.to_dict()
    assert "model-index" not in metadata and "rnnlm" in metadata["tags"] and "vae" not in metadata["tags"]
    assert len(code_blocks(card.text, "text")) == 1  # samples, no homotopy
    assert "no `training_config.json`" in card.text
    hub.validate_folder(tmp_path)


def test_card_states_the_license_chosen_at_training_time(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model().save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "training_config.json").write_text(
        json.dumps({"train_file": "/data/corpus/train.txt", "output_dir": "/home/me/runs/my-vae", "license": "mit"})
    )
    card = model_card.render_model_card(tmp_path)
    assert card.data.license == "mit" and model_card.NO_LICENSE_NOTE not in card.text
    assert card.text.lstrip().startswith("# Sentence VAE: my-vae\n")
    assert "/data/corpus" not in card.text and "/home/me" not in card.text
    assert model_card.render_model_card(tmp_path, license="cc-by-4.0", write=False).data.license == "cc-by-4.0"
    with pytest.raises(ValueError, match="license"):
        model_card.render_model_card(tmp_path, license="Apache 2", write=False)


def test_card_datasets_name_hub_ids_only(tmp_path):
    local = tmp_path / "my_dataset"
    local.mkdir()
    assert model_card._dataset_info({"dataset_name": str(local)}, None) == (None, "text", "local dataset my_dataset")
    assert model_card._dataset_info({"dataset_name": "someone/sentences"}, None)[0] == "someone/sentences"
    assert model_card._dataset_info({"train_file": "/data/ptb/ptb.train.txt"}, None)[0] == model_card.PTB_DATASET_ID
    assert model_card._dataset_info({"train_file": "/data/mine/train.txt"}, None)[0] is None


def test_card_names_a_projected_tied_output_layer(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model(tie_word_embeddings=True, embedding_size=12, decoder_hidden_size=8)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.finalize_model_folder(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "| tied input/output embeddings | yes, through a learned 8 -> 12 projection of the decoder state |" in text
    hub.validate_folder(tmp_path)


def test_card_names_z_at_the_outputs(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model(latent_injection="initial_state_inputs_and_outputs", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.finalize_model_folder(tmp_path)
    text = (tmp_path / "README.md").read_text()
    width, latent = model.config.decoder_hidden_size, model.config.latent_size
    row = f"yes, through a learned {width + latent} -> {model.config.embedding_size} projection of the decoder state and z"
    assert row in text
    assert "initial state, every input and every output" in text
    hub.validate_folder(tmp_path)


@pytest.mark.parametrize(
    "field, value, row",
    [
        ("decoder_weight_drop", 0.25, "| recurrent weight dropout (decoder) | 0.25 |"),
        ("embedding_dropout", 0.1, "| embedding dropout (word types, decoder) | 0.1 |"),
        ("locked_dropout", True, "| dropout masks shared across time steps (locked) | yes |"),
        ("posterior_mean_bn_scale", 0.5, "| batch-normalised posterior means, fixed scale (BN-VAE) | 0.5 |"),
        ("bag_of_words_weight", 0.5, "| bag-of-words loss weight (`bag_of_words_weight`) | 0.5 |"),
    ],
)
@pytest.mark.parametrize("used", [False, True])
def test_card_names_optional_regularizers_only_when_used(tmp_path, tiny_model, tiny_tokenizer, field, value, row, used):
    tiny_model(**({field: value} if used else {})).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.finalize_model_folder(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert (row in text) == used
    assert (row.split(" | ")[0] in text) == used


def test_card_names_weight_averaging(tmp_path, tiny_model, tiny_tokenizer):
    tiny_model().save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    (tmp_path / "training_config.json").write_text(json.dumps({"train_file": "train.txt", "ema_decay": 0.999}))
    hub.finalize_model_folder(tmp_path)
    assert (
        "| weight averaging (EMA decay; evaluated and saved weights) | 0.999 |" in (tmp_path / "README.md").read_text()
    )


def test_a_card_failure_warns_and_keeps_the_model(tiny_text_dir, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(hub, "finalize_model_folder", broken)
    with caplog.at_level("WARNING", logger="hf_sentence_vae.training"):
        results = train_tiny_run(tiny_text_dir, tmp_path / "run", max_train_steps=4, eval_steps=2)
    best = tmp_path / "run" / "best"
    assert results["global_step"] == 4
    assert (best / "model.safetensors").is_file() and not (best / "README.md").exists()
    assert (best / "metrics.jsonl").is_file()  # copied before the card
    assert "template exploded" in caplog.text


def test_built_package_carries_the_model_card_template(repo_root, tmp_path):
    """`setup.py build_py` (what a wheel build runs) copies the template into the built package as package data, and
    the built package's card module uses that copy rather than a repository checkout."""

    build = tmp_path / "build"
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)],
        cwd=repo_root,
        check=True,
        capture_output=True,
    )
    packaged = build / "hf_sentence_vae" / "templates" / "sentence_vae.md.j2"
    assert packaged.read_text() == (repo_root / "hf_sentence_vae" / "templates" / "sentence_vae.md.j2").read_text()
    probe = "import hf_sentence_vae.model_card as m; print(m.__file__); print(m.TEMPLATE_PATH)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(build)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    assert Path(out[0]).is_relative_to(build) and Path(out[1]) == packaged
