"""Serialisation: save_pretrained / from_pretrained round trips, the saved folder, and `trust_remote_code`
loading in a process where `hf_sentence_vae` cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoTokenizer, GenerationMixin

import hf_sentence_vae
from hf_sentence_vae import (
    SentenceVAEConfig,
    SentenceVAEForSequenceClassification,
    SentenceVAEModel,
    SentenceVAETokenizerFast,
)

INIT = 0.5
PACKAGE_DIR = Path(hf_sentence_vae.__file__).parent
REMOTE_FILES = [
    "configuration_sentence_vae.py",
    "modeling_sentence_vae.py",
    "decoding.py",
    "generation_settings.py",
    "kernels.py",
    "latent.py",
    "tokenization_sentence_vae_fast.py",
]

VARIANTS = {
    "default": dict(),
    "tied_bidirectional_highway": dict(
        tie_word_embeddings=True, bidirectional_encoder=True, num_highway_layers=1, variance_parameterization="softplus"
    ),
    "separate_embeddings_inputs": dict(share_embeddings=False, latent_injection="initial_state_and_inputs"),
    "latent_at_outputs_tied": dict(latent_injection="initial_state_inputs_and_outputs", tie_word_embeddings=True),
    "tied_through_projection": dict(
        tie_word_embeddings=True,
        embedding_size=12,
        dropout=0.1,
        locked_dropout=True,
        embedding_dropout=0.2,
        decoder_weight_drop=0.3,
    ),
    "rnnlm_right_to_left": dict(latent_size=0, right_to_left=True),
    "permuted_special_ids": dict(pad_token_id=3, unk_token_id=2, bos_token_id=1, eos_token_id=0),
}


def _expected_mask(config: SentenceVAEConfig) -> torch.Tensor:
    mask = torch.zeros(config.vocab_size)
    mask[config.pad_token_id] = float("-inf")
    mask[config.bos_token_id] = float("-inf")
    return mask


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_save_load_round_trip(tmp_path, tiny_model, random_batch, variant):
    model = tiny_model(initializer_range=INIT, word_keep_rate=0.5, **VARIANTS[variant])
    cfg = model.config
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is SentenceVAEModel
    assert not loaded.training
    ignored = {"_name_or_path", "transformers_version"}
    loaded_fields = {k: v for k, v in loaded.config.to_dict().items() if k not in ignored}
    assert loaded_fields == {k: v for k, v in cfg.to_dict().items() if k not in ignored}

    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    for key in original_state:
        assert torch.equal(original_state[key], loaded_state[key]), key  # exact: the same bytes, saved and read back

    # The non-persistent logit mask is not in the checkpoint, and is rebuilt correctly on loading.
    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        saved_keys = set(handle.keys())
    assert not any("logit_mask" in key for key in saved_keys)
    assert torch.equal(loaded.logit_mask, _expected_mask(cfg))
    assert torch.equal(model.logit_mask, _expected_mask(cfg))
    if cfg.tie_word_embeddings:
        assert loaded.lm_head.weight is loaded.embed_tokens.weight

    input_ids, attention_mask = random_batch(cfg, [5, 1, 7], seed=2)
    latent = torch.randn(3, cfg.latent_size) if cfg.latent_size else None
    # The same weights in other tensors: oneDNN picks kernels by memory layout and CPU, so the float32 outputs may
    # differ in their last bits (up to 4.5e-8 measured on an AMD Zen 4): a few ulps of tolerance, not bitwise.
    with torch.no_grad():
        for kwargs in (dict(latent=latent), dict(sample_latent=False)):
            a, b = model(input_ids, attention_mask, **kwargs), loaded(input_ids, attention_mask, **kwargs)
            torch.testing.assert_close(b.logits, a.logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    # Greedy ids: equal unless two logits were within ~1e-6 of each other (the INIT-scaled weights keep them apart).
    generated = model.generate(latent=latent, num_samples=3, max_new_tokens=10)
    assert torch.equal(loaded.generate(latent=latent, num_samples=3, max_new_tokens=10), generated)
    assert torch.equal(SentenceVAEModel.from_pretrained(tmp_path).logit_mask, _expected_mask(cfg))


def test_auto_classes_resolve_in_process(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is SentenceVAEConfig
    assert type(AutoModel.from_pretrained(tmp_path)) is SentenceVAEModel
    assert type(AutoTokenizer.from_pretrained(tmp_path)) is SentenceVAETokenizerFast
    # trust_remote_code=True in a process that has the package still gives working models.
    remote = AutoModel.from_pretrained(tmp_path, trust_remote_code=True)
    batch = tiny_tokenizer(["the cat sat ."], return_tensors="pt")
    with torch.no_grad():  # other tensors holding the same weights: a few ulps apart at most (see above)
        torch.testing.assert_close(
            remote(**batch, sample_latent=False).logits,
            model(**batch, sample_latent=False).logits,
            rtol=1e-5,
            atol=1e-6,
        )


def test_saved_folder_contents(tmp_path, tiny_model, tiny_tokenizer):
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    expected = {
        "model.safetensors",
        "config.json",
        "generation_config.json",  # saved in every case: the class inherits GenerationMixin
        "tokenizer.json",
        "tokenizer_config.json",
        *REMOTE_FILES,
    }
    assert expected <= names, expected - names
    assert not any(name.endswith(".bin") for name in names)

    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sentence-vae"
    assert config["architectures"] == ["SentenceVAEModel"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_sentence_vae.SentenceVAEConfig",
        "AutoModel": "modeling_sentence_vae.SentenceVAEModel",
    }
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    auto_tokenizer = tokenizer_config["auto_map"]["AutoTokenizer"]
    assert "tokenization_sentence_vae_fast.SentenceVAETokenizerFast" in auto_tokenizer
    for name in REMOTE_FILES:
        assert (tmp_path / name).read_bytes() == (PACKAGE_DIR / name).read_bytes(), name


CHILD = textwrap.dedent(
    r"""
    import importlib.util
    import json
    import os
    import sys

    # Hide hf_sentence_vae: drop the editable-install finder and any sys.path entry holding the package.
    def maps_package(finder):
        module_name = str(getattr(finder, "__module__", ""))
        mapping = getattr(sys.modules.get(module_name), "MAPPING", {})
        return "hf_sentence_vae" in module_name or "hf_sentence_vae" in mapping


    sys.meta_path[:] = [f for f in sys.meta_path if not maps_package(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "hf_sentence_vae" not in repr(h)]
    sys.path[:] = [p for p in sys.path if not os.path.isdir(os.path.join(p or os.getcwd(), "hf_sentence_vae"))]
    sys.path_importer_cache.clear()
    report = {"find_spec": repr(importlib.util.find_spec("hf_sentence_vae"))}
    try:
        import hf_sentence_vae  # noqa: F401

        report["importable"] = True
    except ImportError:
        report["importable"] = False
    report["pythonpath"] = os.environ.get("PYTHONPATH")
    report["hf_home"] = os.environ.get("HF_HOME")

    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    spec = json.load(open(sys.argv[1]))
    report["models"] = {}
    for name, folder in spec["folders"].items():
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        latent = None if spec["latents"][name] is None else torch.tensor(spec["latents"][name])
        greedy = model.generate(latent=latent, num_samples=spec["num_codes"], max_new_tokens=12)
        beam = model.generate(latent=latent, num_samples=spec["num_codes"], num_beams=3, max_new_tokens=12)
        batch = tokenizer(spec["texts"], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**batch, sample_latent=False)
        report["models"][name] = {
            "classes": [type(x).__module__ + "." + type(x).__name__ for x in (config, model, tokenizer)],
            "greedy": greedy.tolist(),
            "greedy_texts": tokenizer.batch_decode(greedy, skip_special_tokens=True),
            "beam": beam.tolist(),
            "can_generate": model.can_generate(),
            "generation_mixin_is_a_base": any(b.__name__ == "GenerationMixin" for b in type(model).__bases__),
            "input_ids": batch["input_ids"].tolist(),
            "logits": out.logits.tolist(),
            "logit_mask": model.logit_mask.tolist(),
        }
    classifier = AutoModelForSequenceClassification.from_pretrained(spec["classifier"], trust_remote_code=True)
    with torch.no_grad():
        scores = classifier(**batch)
    report["classifier"] = {
        "class": type(classifier).__module__ + "." + type(classifier).__name__,
        "logits": scores.logits.tolist(),
    }
    report["package_loaded"] = any(m == "hf_sentence_vae" or m.startswith("hf_sentence_vae.") for m in sys.modules)
    print("REPORT=" + json.dumps(report))
    """
)


def test_remote_code_loads_without_the_package(tmp_path, tiny_model, tiny_config, tiny_tokenizer, tiny_sentences):
    variants = {
        "vae": dict(bidirectional_encoder=True, num_highway_layers=1),
        "rnnlm_right_to_left": dict(latent_size=0, right_to_left=True),
    }
    texts = tiny_sentences[:3] + ["the zebra sat .", "the <pad> cat <eos> sat ."]  # special-token strings: <unk>
    spec = {"folders": {}, "latents": {}, "num_codes": 4, "texts": texts}
    models = {}
    for name, overrides in variants.items():
        model = tiny_model(vocab_size=len(tiny_tokenizer), initializer_range=INIT, **overrides)
        folder = tmp_path / name
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        latent = model.sample_prior(4, generator=torch.Generator().manual_seed(0)) if model.config.latent_size else None
        spec["folders"][name] = str(folder)
        spec["latents"][name] = None if latent is None else latent.tolist()
        models[name] = (model, latent)
    torch.manual_seed(0)
    classifier = SentenceVAEForSequenceClassification(tiny_config(initializer_range=INIT, num_labels=3)).eval()
    classifier.save_pretrained(tmp_path / "classifier")
    assert json.loads((tmp_path / "classifier" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_sentence_vae.SentenceVAEConfig",
        "AutoModelForSequenceClassification": "modeling_sentence_vae.SentenceVAEForSequenceClassification",
    }
    spec["classifier"] = str(tmp_path / "classifier")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(spec_file)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT=")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT=") :])

    # The package really was not importable there, and the remote code did not pull it in.
    assert report["find_spec"] == "None"
    assert report["importable"] is False
    assert report["package_loaded"] is False
    assert report["pythonpath"] is None
    assert report["hf_home"] == str(tmp_path / "hf_home")
    assert (tmp_path / "hf_home" / "modules" / "transformers_modules").is_dir()

    for name, (model, latent) in models.items():
        child = report["models"][name]
        for qualified, class_name in zip(
            child["classes"], ["SentenceVAEConfig", "SentenceVAEModel", "SentenceVAETokenizerFast"]
        ):
            assert qualified.startswith("transformers_modules.") and qualified.endswith("." + class_name), qualified
        greedy = model.generate(latent=latent, num_samples=4, max_new_tokens=12)
        beam = model.generate(latent=latent, num_samples=4, num_beams=3, max_new_tokens=12)
        assert child["greedy"] == greedy.tolist()
        assert child["greedy_texts"] == tiny_tokenizer.batch_decode(greedy, skip_special_tokens=True)
        assert any(text for text in child["greedy_texts"])  # real sentences, not only <eos>
        assert child["beam"] == beam.tolist()
        # can_generate() the same way installed and as remote code: the class itself inherits GenerationMixin
        assert child["can_generate"] is True and model.can_generate()
        assert child["generation_mixin_is_a_base"] and GenerationMixin in type(model).__bases__
        batch = tiny_tokenizer(texts, padding=True, return_tensors="pt")
        assert child["input_ids"] == batch["input_ids"].tolist()
        assert child["input_ids"][-1][:8] == tiny_tokenizer("the <unk> cat <unk> sat .")["input_ids"]
        with torch.no_grad():
            logits = model(**batch, sample_latent=False).logits
        torch.testing.assert_close(torch.tensor(child["logits"]), logits, rtol=0, atol=1e-6)
        assert child["logit_mask"] == _expected_mask(model.config).tolist()
    # the classifier on the VAE's encoder loads as remote code too
    qualified = report["classifier"]["class"]
    assert qualified.startswith("transformers_modules.") and qualified.endswith(".SentenceVAEForSequenceClassification")
    with torch.no_grad():
        expected = classifier(**tiny_tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(report["classifier"]["logits"]), expected, rtol=0, atol=1e-6)
