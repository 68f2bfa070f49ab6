"""The `sentence-vae` pipeline (`hf_sentence_vae.pipelines`): its three tasks in process, on a VAE and an RNNLM, from a
Hub-ready folder, and the special-token strings of its input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, pipeline

import hf_sentence_vae
from hf_sentence_vae import SentenceVAEModel, hub
from hf_sentence_vae.modeling_sentence_vae import SentenceVAEModel  # noqa: F811
from hf_sentence_vae.pipelines import TASK, SentenceVAEPipeline

PACKAGE_DIR = Path(hf_sentence_vae.__file__).parent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    features = pipe(sentence, return_latent=True)  # a sentence's features: its posterior mean
    assert torch.tensor(features["latent"]).allclose(mu[0]) and features["posterior_sample_latents"] == []

    path = pipe((sentence, "a dog ran to the park ."), steps=4)
    assert [row["alpha"] for row in path] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert pipe([sentence, "a cat saw a dog ."])[1]["input_text"] == "a cat saw a dog ."
    # the registered task over objects in memory uses this package's class
    direct = pipeline(TASK, model=model, tokenizer=tokenizer, device="cpu")
    assert type(direct) is SentenceVAEPipeline
    assert direct(3, seed=0, max_new_tokens=12) == [{"generated_text": t} for t in expected]
    # every decoding setting of generate passes through (here: sentences at the length limit end with <eos>)
    eos = model.config.eos_token_id
    ended = model.generate(latent=z, max_new_tokens=2, forced_eos_token_id=eos)
    assert bool((ended == eos).any(-1).all())
    assert not torch.equal(ended, model.generate(latent=z, max_new_tokens=2)), "premise: the setting matters here"
    assert direct(3, seed=0, max_new_tokens=2, forced_eos_token_id=eos) == [
        {"generated_text": t} for t in tokenizer.batch_decode(ended, skip_special_tokens=True)
    ]

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


def test_the_pipeline_encodes_special_token_strings_as_unk(model_folder):
    from transformers import AutoTokenizer, pipeline

    import hf_sentence_vae.pipelines  # noqa: F401  (registers the task)

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = SentenceVAEModel.from_pretrained(model_folder)
    pipe = pipeline("sentence-vae", model=model, tokenizer=tokenizer, device="cpu")
    ids = pipe.preprocess("the <pad> cat <eos> sat .")["input_ids"][0].tolist()
    assert ids[2] == ids[4] == tokenizer.unk_token_id and ids[-1] == tokenizer.eos_token_id
    assert isinstance(pipe("the <pad> cat <eos> sat .", seed=0, max_new_tokens=5)["generated_text"], str)
