"""Sharing on the Hub: the model card written at the end of training, the staged (Hub-ready) folder, loading it
as a stranger would (remote code only, in an environment with just torch / transformers / tokenizers /
safetensors and their dependencies), the `sentence-vae` pipeline, and pushes: to an unreachable endpoint (fails
fast and clearly) and to a local fake Hub (receives exactly the expected files).

Everything runs on one tiny model trained for a few dozen steps on `TINY_SENTENCES` (no data dependency).
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from helpers import load_script, reset_accelerate, run_main
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import AutoModel, AutoTokenizer, pipeline

import hf_sentence_vae
from hf_sentence_vae import hub, model_card
from hf_sentence_vae.hub import HubPushError
from hf_sentence_vae.pipelines import TASK, SentenceVAEPipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(hf_sentence_vae.__file__).parent
PUSH_SCRIPT = REPO / "train_scripts" / "push_to_hub.py"
REMOTE_CODE = {
    "configuration_sentence_vae.py",
    "modeling_sentence_vae.py",
    "decoding.py",
    "generation_settings.py",
    "kernels.py",
    "latent.py",
    "tokenization_sentence_vae_fast.py",
}
HUB_FILES = REMOTE_CODE | {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "pipelines.py",
    "README.md",
    "training_config.json",
    "eval_results.json",
    "results.json",
    "metrics.jsonl",
    "training_curves.png",
}
REPO_ID = "me/tiny-sentence-vae"
TOKEN = "hf_test_token_123"
LICENSE = "apache-2.0"
SIZES = dict(embedding_size=16, encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4)


def _train_tiny(data_dir: Path, output_dir: Path, **overrides) -> dict:
    from hf_sentence_vae.training import TrainingConfig, train

    kwargs = dict(
        train_file=str(data_dir / "train.txt"),
        validation_file=str(data_dir / "valid.txt"),
        test_file=str(data_dir / "test.txt"),
        output_dir=str(output_dir),
        **SIZES,
        word_keep_rate=0.8,
        per_device_train_batch_size=6,
        per_device_eval_batch_size=8,
        learning_rate=2e-2,
        max_train_steps=40,
        logging_steps=5,
        eval_steps=10,
        kl_schedule="constant",
        kl_constant=0.05,  # a small KL weight keeps the tiny latent space in use: varied samples
        disable_tqdm=True,
        seed=7,
    )
    kwargs.update(overrides)
    reset_accelerate()
    return train(TrainingConfig(**kwargs))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, tiny_sentences) -> Path:
    folder = tmp_path_factory.mktemp("tiny_text")
    (folder / "train.txt").write_text("\n".join(tiny_sentences * 6) + "\n")
    (folder / "valid.txt").write_text("\n".join(tiny_sentences[:4]) + "\n")
    (folder / "test.txt").write_text("\n".join(tiny_sentences[2:]) + "\n")
    return folder


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """A finished tiny training run: best/ (with its card), metrics.jsonl, results.json, training_curves.png."""
    out = tmp_path_factory.mktemp("hub_run") / "tiny-vae"
    _train_tiny(data_dir, out)
    return out


@pytest.fixture(scope="module")
def staged(run_dir, tmp_path_factory) -> Path:
    """What `push_to_hub.py --license apache-2.0` would upload for the run, rendered for REPO_ID."""
    return hub.stage_folder(run_dir, tmp_path_factory.mktemp("staged") / "repo", repo_id=REPO_ID, license=LICENSE)


@pytest.fixture(scope="module")
def best_model(run_dir):
    model = AutoModel.from_pretrained(run_dir / "best").eval()
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "best")
    return model, tokenizer


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def _card_samples(text: str) -> tuple[list[str], list[str]]:
    """(prior samples, homotopy decodes) as listed in the card's text blocks."""
    blocks = _code_blocks(text, "text")
    prior = [re.sub(r"^\d+\. ?", "", line) for line in blocks[0].splitlines()]
    path = [re.sub(r"^a=\d\.\d\d  ?", "", line) for line in blocks[1].splitlines()] if len(blocks) > 1 else []
    return prior, path


# --------------------------------------------------------------------------- the card written by training
def test_training_leaves_a_hub_ready_best_folder(run_dir):
    best = run_dir / "best"
    for name in ("README.md", "pipelines.py", "metrics.jsonl", "training_curves.png"):
        assert (best / name).is_file(), name
    for name in ("metrics.jsonl", "training_curves.png"):
        assert (best / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert (best / "pipelines.py").read_bytes() == (PACKAGE_DIR / "pipelines.py").read_bytes()
    config = json.loads((best / "config.json").read_text())
    assert config["custom_pipelines"] == {
        hub.REMOTE_PIPELINE_TASK: {"impl": "pipelines.SentenceVAEPipeline", "pt": ["AutoModel"], "type": "text"}
    }
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}
    hub.validate_folder(best)
    # the decoding defaults a trained VAE saves, which the card's samples use (no <unk> in this corpus: none
    # suppressed)
    generation = json.loads((best / "generation_config.json").read_text())
    assert generation["num_beams"] == 5 and "suppress_tokens" not in generation
    assert (
        "Decodes (beam search (5 beams), the defaults in `generation_config.json`)" in (best / "README.md").read_text()
    )


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
    command = _code_blocks(text, "bash")[0]
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
    prior, path = _card_samples((run_dir / "best" / "README.md").read_text())
    expected = model_card.decode_card_samples(model, tokenizer)
    assert prior == expected["prior"] and len(prior) == model_card.CARD_NUM_SAMPLES
    assert path == expected["homotopy"] and len(path) == model_card.CARD_HOMOTOPY_STEPS
    assert len(set(prior)) > 1 and all(prior), "the tiny model should give varied, non-empty sentences"
    # ... and they are what the card's own snippet prints (same seed, same calls).
    snippet = _code_blocks((run_dir / "best" / "README.md").read_text(), "python")[-1]
    assert "model.sample_prior(5, generator=generator)" in snippet and "model.interpolate(" in snippet


def test_card_for_an_rnnlm_without_training_files(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model(latent_size=0, initializer_range=0.5)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    hub.finalize_model_folder(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    metadata = card.data.to_dict()
    assert "model-index" not in metadata and "rnnlm" in metadata["tags"] and "vae" not in metadata["tags"]
    assert len(_code_blocks(card.text, "text")) == 1  # samples, no homotopy
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


def test_a_card_failure_warns_and_keeps_the_model(data_dir, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("template exploded")

    monkeypatch.setattr(hub, "finalize_model_folder", broken)
    with caplog.at_level("WARNING", logger="hf_sentence_vae.training"):
        results = _train_tiny(data_dir, tmp_path / "run", max_train_steps=4, eval_steps=2)
    best = tmp_path / "run" / "best"
    assert results["global_step"] == 4
    assert (best / "model.safetensors").is_file() and not (best / "README.md").exists()
    assert (best / "metrics.jsonl").is_file()  # copied before the card
    assert "template exploded" in caplog.text


# --------------------------------------------------------------------------- the staged folder
def test_staged_folder_holds_exactly_the_hub_files(staged, run_dir):
    assert {p.name for p in staged.iterdir()} == HUB_FILES
    assert all(p.is_file() for p in staged.iterdir())
    for name in ("model.safetensors", "tokenizer.json", "training_config.json", *REMOTE_CODE):
        assert (staged / name).read_bytes() == (run_dir / "best" / name).read_bytes(), name
    assert (staged / "results.json").read_bytes() == (run_dir / "results.json").read_bytes()
    text = (staged / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert model_card.PATH_PLACEHOLDER not in text
    # the same samples as the card written at training time: rendering is deterministic
    assert _card_samples(text) == _card_samples((run_dir / "best" / "README.md").read_text())
    with pytest.raises(HubPushError, match="not empty"):
        hub.stage_folder(run_dir, staged)


def test_validate_folder_names_what_is_missing(staged, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(staged, broken)
    (broken / "latent.py").unlink()  # not named in auto_map, but imported by modeling_sentence_vae.py
    with pytest.raises(HubPushError, match="modeling_sentence_vae.py needs latent.py"):
        hub.validate_folder(broken)
    (broken / "README.md").write_text("---\nmodel-index: [{name: x}]\n---\n# card\n")
    with pytest.raises(HubPushError, match="README.md metadata does not validate"):
        hub.validate_folder(broken)


def test_pipeline_file_can_travel_as_remote_code():
    """pipelines.py imports only the standard library, torch and transformers (and nothing relative)."""
    tree = ast.parse((PACKAGE_DIR / "pipelines.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, "pipelines.py must not import package modules"
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top in {"torch", "transformers"}, module


# --------------------------------------------------------------------------- the pipeline, in process
def test_pipeline_tasks_in_process(staged, best_model):
    model, tokenizer = best_model
    # A Hub-ready folder declares its pipeline in config.json (custom_pipelines) for loaders without this package;
    # with the package installed the registered task serves it, no trust_remote_code needed.
    installed = pipeline(TASK, model=str(staged), device="cpu")
    assert type(installed) is SentenceVAEPipeline
    # asked to trust the folder's code, transformers runs the folder's copy of pipelines.py
    pipe = pipeline(model=str(staged), trust_remote_code=True, device="cpu")
    assert type(pipe).__name__ == "SentenceVAEPipeline" and type(pipe).__module__.endswith(".pipelines")
    assert type(pipe) is not SentenceVAEPipeline

    samples = pipe(3, seed=0, max_new_tokens=12, return_latent=True)
    generator = torch.Generator().manual_seed(0)
    z = model.sample_prior(3, generator=generator)
    expected = tokenizer.batch_decode(model.generate(latent=z, max_new_tokens=12), skip_special_tokens=True)
    assert installed(3, seed=0, max_new_tokens=12) == [{"generated_text": t} for t in expected]
    assert [row["generated_text"] for row in samples] == expected
    assert torch.tensor([row["latent"] for row in samples]).allclose(z)
    assert pipe(3, seed=0, max_new_tokens=12, do_sample=True) == pipe(3, seed=0, max_new_tokens=12, do_sample=True)

    sentence = "the cat sat on the mat ."
    rebuilt = pipe(sentence, num_posterior_samples=2, seed=1)
    batch = tokenizer([sentence], return_tensors="pt")
    mu, _ = model.encode(batch["input_ids"], batch["attention_mask"])
    assert rebuilt["input_text"] == sentence and len(rebuilt["posterior_samples"]) == 2
    assert rebuilt["generated_text"] == tokenizer.decode(model.generate(latent=mu)[0], skip_special_tokens=True)
    assert rebuilt["generated_text"] == tokenizer.decode(model.generate(**batch)[0], skip_special_tokens=True)

    path = pipe((sentence, "a dog ran to the park ."), steps=4)
    assert [row["alpha"] for row in path] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert pipe([sentence, "a cat saw a dog ."])[1]["input_text"] == "a cat saw a dog ."
    # the registered task over objects in memory uses this package's class
    direct = pipeline(TASK, model=model, tokenizer=tokenizer, device="cpu")
    assert type(direct) is SentenceVAEPipeline
    assert direct(3, seed=0, max_new_tokens=12) == [{"generated_text": t} for t in expected]

    with pytest.raises(TypeError, match="pair of sentences"):
        pipe(3.5)
    with pytest.raises(TypeError, match="unknown parameter"):
        pipe(2, beams=3)
    with pytest.raises(ValueError, match="steps"):
        pipe((sentence, sentence), steps=1)


def test_a_loaded_model_saved_again_declares_no_missing_pipeline(tmp_path, tiny_model, tiny_tokenizer):
    """`custom_pipelines` names `pipelines.py`, which `save_pretrained` does not write: a model loaded from a
    Hub-ready folder and saved again must not declare it (that folder's pipeline would fail)."""
    folder, again = tmp_path / "hub-ready", tmp_path / "again"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    hub.add_pipeline(folder)
    assert "custom_pipelines" in json.loads((folder / "config.json").read_text())
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    model.save_pretrained(again)
    tokenizer.save_pretrained(again)
    assert "custom_pipelines" not in json.loads((again / "config.json").read_text())
    assert not (again / "pipelines.py").exists()
    hub.validate_folder(again)
    pipe = pipeline(TASK, model=str(again), device="cpu")
    assert len(pipe(2, seed=0, max_new_tokens=5)) == 2
    hub.add_pipeline(again)  # made Hub-ready again: both the file and its declaration
    assert (again / "pipelines.py").is_file() and "custom_pipelines" in json.loads((again / "config.json").read_text())
    hub.validate_folder(again)


def test_pipeline_on_an_rnnlm(tiny_model, tiny_tokenizer):
    model = tiny_model(latent_size=0, initializer_range=0.5)
    pipe = pipeline(TASK, model=model, tokenizer=tiny_tokenizer, device="cpu")
    assert len(pipe(2, do_sample=True, seed=0, max_new_tokens=6)) == 2
    with pytest.raises(ValueError, match="RNNLM"):
        pipe("the cat sat .")


# --------------------------------------------------------------------------- loading as a stranger would
def _stranger_site(dest: Path) -> Path:
    """A site-packages holding only torch, transformers, tokenizers, safetensors and what they require (links
    into this venv): what `pip install torch transformers tokenizers safetensors` gives a fresh environment."""
    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo = ["torch", "transformers", "tokenizers", "safetensors"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    assert {"torch", "transformers", "tokenizers", "safetensors", "huggingface_hub"} <= {p.name for p in dest.iterdir()}
    return dest


STRANGER = textwrap.dedent(
    r"""
    import contextlib
    import importlib.util
    import io
    import json
    import re
    import sys

    site, spec_file = sys.argv[1], sys.argv[2]
    sys.path.append(site)
    spec = json.load(open(spec_file))
    report = {"missing": {m: importlib.util.find_spec(m) is None for m in spec["must_be_missing"]}}

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer, pipeline

    folder = spec["folder"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    report["classes"] = [type(x).__module__ + "." + type(x).__name__ for x in (config, model, tokenizer)]
    latent = torch.tensor(spec["latent"])
    report["can_generate"] = model.can_generate()
    greedy = model.generate(latent=latent, max_new_tokens=12, num_beams=1)
    beam = model.generate(latent=latent, num_beams=3, max_new_tokens=12)
    report["greedy"] = tokenizer.batch_decode(greedy, skip_special_tokens=True)
    report["beam"] = beam.tolist()
    batch = tokenizer(spec["texts"], padding=True, return_tensors="pt")
    report["input_ids"] = batch["input_ids"].tolist()
    report["reconstructed"] = model.generate(**batch).tolist()
    with torch.no_grad():
        report["mu"] = model.encode(batch["input_ids"], batch["attention_mask"])[0].tolist()

    # The card's reproduction snippet, run verbatim (with the repo id pointing at the folder).
    card = open(folder + "/README.md", encoding="utf-8").read()
    snippet = re.findall(r"```python\n(.*?)```", card, re.S)[-1].replace(spec["repo_id"], folder)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {"__name__": "card_snippet"})
    report["snippet_output"] = out.getvalue().splitlines()

    # The pipeline, from the folder's custom_pipelines (no task given).
    pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
    report["pipeline_class"] = type(pipe).__module__ + "." + type(pipe).__name__
    report["pipeline_samples"] = pipe(3, seed=0, max_new_tokens=12)
    report["pipeline_homotopy"] = pipe(tuple(spec["texts"][:2]), steps=3)

    report["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(spec["must_be_missing"]))
    print("REPORT=" + json.dumps(report))
    """
)


def test_the_staged_folder_loads_as_a_stranger_would(staged, best_model, tmp_path):
    model, tokenizer = best_model
    site = _stranger_site(tmp_path / "site-packages")
    latent = model.sample_prior(4, generator=torch.Generator().manual_seed(3))
    texts = ["the cat sat on the mat .", "a dog ran to the park .", "the zebra sat ."]
    must_be_missing = ["hf_sentence_vae", "accelerate", "datasets", "evaluate", "sklearn", "matplotlib"]
    spec = dict(
        folder=str(staged), latent=latent.tolist(), texts=texts, repo_id=REPO_ID, must_be_missing=must_be_missing
    )
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "stranger.py").write_text(STRANGER)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "stranger.py"), str(site), str(tmp_path / "spec.json")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT=")][-1]
    report = json.loads(line[len("REPORT=") :])
    print(f"stranger subprocess: {time.perf_counter() - started:.1f} s")

    assert all(report["missing"].values()), report["missing"]
    assert report["loaded"] == []
    for qualified, name in zip(
        report["classes"], ["SentenceVAEConfig", "SentenceVAEModel", "SentenceVAETokenizerFast"]
    ):
        assert qualified.startswith("transformers_modules.") and qualified.endswith("." + name), qualified

    # Same sentences as the in-process model, through the same GenerationMixin-based class.
    assert report["can_generate"] is True and model.can_generate()
    greedy = model.generate(latent=latent, max_new_tokens=12, num_beams=1)
    assert report["greedy"] == tokenizer.batch_decode(greedy, skip_special_tokens=True)
    assert report["beam"] == model.generate(latent=latent, num_beams=3, max_new_tokens=12).tolist()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert report["input_ids"] == batch["input_ids"].tolist()
    assert report["reconstructed"] == model.generate(**batch).tolist()
    with torch.no_grad():
        mu = model.encode(batch["input_ids"], batch["attention_mask"])[0]
    torch.testing.assert_close(torch.tensor(report["mu"]), mu, rtol=0, atol=1e-6)

    # The card's snippet reproduces the card's samples there.
    prior, path = _card_samples((staged / "README.md").read_text())
    assert report["snippet_output"] == prior + path

    # The remote-code pipeline gives what the in-process one gives.
    assert report["pipeline_class"].startswith("transformers_modules.")
    assert report["pipeline_class"].endswith(".pipelines.SentenceVAEPipeline")
    local = pipeline(TASK, model=model, tokenizer=tokenizer, device="cpu")
    assert report["pipeline_samples"] == local(3, seed=0, max_new_tokens=12)
    assert report["pipeline_homotopy"] == local(tuple(texts[:2]), steps=3)


# --------------------------------------------------------------------------- pushing
class FakeHub:
    """A bounded, self-stopping fake of the few Hub endpoints huggingface_hub uses for create_repo,
    create_branch, upload_folder (regular files) and delete_repo, on 127.0.0.1 in a thread."""

    def __init__(self, token: str = TOKEN, fail_commit: bool = False, lifetime: float = 120.0):
        self.token, self.fail_commit = token, fail_commit
        self.requests: list[dict] = []
        self.created: list[dict] = []
        self.branches: list[str] = []
        self.commits: list[dict] = []
        self.deleted: list[dict] = []
        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                hub_state.requests.append(
                    {"method": self.command, "path": path, "auth": self.headers.get("Authorization")}
                )
                if path == "/api/agent-harnesses":  # huggingface_hub's client-detection registry: not needed
                    return self._reply(404, {"error": "not here"})
                if self.headers.get("Authorization") != f"Bearer {hub_state.token}":
                    return self._reply(401, {"error": "Invalid credentials"})
                endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
                if self.command == "GET" and path == "/api/whoami-v2":
                    return self._reply(200, {"name": "me", "type": "user"})
                if self.command == "POST" and path == "/api/repos/create":
                    request = json.loads(body)
                    hub_state.created.append(request)
                    repo = f"{request['organization']}/{request['name']}"
                    return self._reply(200, {"url": f"{endpoint}/{repo}", "name": repo})
                if self.command == "DELETE" and path == "/api/repos/delete":
                    hub_state.deleted.append(json.loads(body))
                    return self._reply(200, {})
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._reply(200, {})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
                if self.command == "POST" and match:
                    repo, action, revision = match.groups()
                    if action == "branch":
                        hub_state.branches.append(revision)
                        return self._reply(200, {})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    if hub_state.fail_commit:
                        return self._reply(422, {"error": "commit refused by the fake Hub"})
                    lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                    files = {
                        x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"
                    }
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    hub_state.commits.append({"repo": repo, "revision": revision, "files": files, "header": header})
                    oid = "a" * 40
                    return self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{oid}", "commitOid": oid})
                if self.command == "GET" and path.startswith("/api/models/"):
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return self._reply(404, {"error": f"fake Hub: no route for {self.command} {path}"})

        for verb in ("GET", "POST", "PUT", "DELETE"):
            setattr(Handler, f"do_{verb}", Handler._handle)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)  # never outlives a stuck test
        self.timer.daemon = True

    def __enter__(self) -> FakeHub:
        self.thread.start()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.stop()
        self.thread.join(timeout=5)


@pytest.fixture
def push_script(monkeypatch):
    """`push_to_hub.py`, its `main(argv)` run in this process with the Hub reachable (offline mode off) and the
    token in `HF_TOKEN`; the endpoint is given with `--endpoint`."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return load_script(PUSH_SCRIPT)


def test_push_command_to_a_fake_hub_uploads_exactly_the_hub_files(run_dir, staged, tmp_path, push_script, capsys):
    staging = tmp_path / "staging"
    with FakeHub() as fake:
        started = time.perf_counter()
        status, out, err = run_main(
            push_script,
            [run_dir, "--repo_id", REPO_ID, "--private", "--license", LICENSE, "--endpoint", fake.endpoint]
            + ["--revision", "experiment-1", "--staging_dir", staging, "--commit_message", "tiny run"],
            capsys,
        )
        elapsed = time.perf_counter() - started
    assert status == 0, out[-3000:] + err[-5000:]
    assert out.strip().endswith("/commit/" + "a" * 40)
    assert elapsed < 60
    assert fake.created == [
        {"name": "tiny-sentence-vae", "organization": "me", "visibility": "private", "type": "model"}
    ]
    assert fake.branches == ["experiment-1"]
    assert len(fake.commits) == 1 and fake.deleted == []
    commit = fake.commits[0]
    assert commit["repo"] == REPO_ID and commit["revision"] == "experiment-1"
    assert commit["header"]["summary"] == "tiny run"
    assert set(commit["files"]) == HUB_FILES
    for name, content in commit["files"].items():
        assert content == (staging / name).read_bytes(), name
    # the pushed folder is the one that loads as a stranger would: same files, same card
    for name in HUB_FILES:
        assert (staging / name).read_bytes() == (staged / name).read_bytes(), name
    repo_requests = [r for r in fake.requests if r["path"] != "/api/agent-harnesses"]
    assert {r["path"] for r in repo_requests} >= {"/api/whoami-v2", "/api/repos/create", "/api/validate-yaml"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in repo_requests), repo_requests  # HF_TOKEN was used


def test_push_command_to_an_unreachable_endpoint_fails_fast_and_clearly(run_dir, tmp_path, push_script, capsys):
    """An endpoint that accepts connections but never answers (the hard case: no connection error)."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(8)
    endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
    try:
        started = time.perf_counter()
        status, out, err = run_main(
            push_script,
            [run_dir, "--repo_id", REPO_ID, "--timeout", "3", "--license", LICENSE, "--endpoint", endpoint],
            capsys,
        )
        elapsed = time.perf_counter() - started
    finally:
        black_hole.close()
    assert status == 1, out + err
    assert elapsed < 30
    assert f"cannot reach the Hub endpoint {endpoint}" in err
    assert "timed out" in err and REPO_ID in err
    assert "Traceback" not in err


def test_push_folder_refuses_early_with_clear_messages(staged, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    started = time.perf_counter()
    with pytest.raises(HubPushError, match=rf"cannot reach the Hub endpoint http://127.0.0.1:{port}.*Connection"):
        hub.push_folder(staged, REPO_ID, token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - started < 5
    with FakeHub() as fake:
        with pytest.raises(HubPushError, match="rejected the token"):
            hub.push_folder(staged, REPO_ID, token="wrong", endpoint=fake.endpoint)
    assert fake.created == []  # refused before anything was created
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        hub.push_folder(staged, REPO_ID, token=TOKEN)


def test_a_push_needs_a_license(run_dir, staged, tmp_path, push_script, capsys):
    """Without --license (and none chosen at training time) the command refuses, naming the flag; a folder whose
    card says no license was chosen is refused by push_folder before anything is created."""
    with FakeHub() as fake:
        status, _, err = run_main(push_script, [run_dir, "--repo_id", REPO_ID, "--endpoint", fake.endpoint], capsys)
        assert status == 1 and "--license" in err and "Traceback" not in err
        unlicensed = hub.stage_folder(run_dir, tmp_path / "unlicensed", repo_id=REPO_ID)
        assert metadata_load(unlicensed / "README.md")["license"] == "other"
        with pytest.raises(HubPushError, match="no license was chosen"):
            hub.push_folder(unlicensed, REPO_ID, token=TOKEN, endpoint=fake.endpoint)
    assert fake.created == [] and fake.commits == []
    assert metadata_load(staged / "README.md")["license"] == LICENSE
    assert model_card.NO_LICENSE_NOTE not in (staged / "README.md").read_text()


def test_preflight_checks_the_repository_id_and_the_accounts_namespace(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as fake:
        with pytest.raises(HubPushError, match="not a repository id"):
            hub.preflight("me/bad name!", token=TOKEN, endpoint=fake.endpoint)
        with pytest.raises(HubPushError, match="belongs to 'me'.*'someone-else'"):
            hub.preflight("someone-else/vae", token=TOKEN, endpoint=fake.endpoint)
        assert hub.preflight(REPO_ID, token=TOKEN, endpoint=fake.endpoint) == (fake.endpoint, TOKEN)
    assert fake.created == []


def test_a_failed_upload_deletes_the_repository_it_created(staged, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub(fail_commit=True) as fake:
        with pytest.raises(HubPushError, match="commit refused by the fake Hub.*deleted again"):
            hub.push_folder(staged, REPO_ID, token=TOKEN, endpoint=fake.endpoint)
    assert len(fake.created) == 1 and fake.commits == []
    assert fake.deleted == [{"name": "tiny-sentence-vae", "organization": "me", "type": "model"}]


def test_built_package_carries_the_model_card_template(repo_root, tmp_path):
    """`setup.py build_py` (what a wheel build runs) copies the template into the built package as package data, and
    the built package's card module uses that copy rather than a repository checkout."""
    import subprocess
    import sys

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
