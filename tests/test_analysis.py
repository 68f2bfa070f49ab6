"""Latent-space analyses (Section 6): library functions and every `generate.py` subcommand on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_script, main_error, main_json, run_main

from hf_sentence_vae import analysis

INIT = 0.5


@pytest.fixture
def vae(tiny_model):
    return tiny_model(initializer_range=INIT, max_sentence_length=12)


@pytest.fixture
def saved_vae(tmp_path, vae, tiny_tokenizer):
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def generate_script(repo_root):
    return load_script(repo_root / "train_scripts" / "generate.py")


def test_ids_to_texts_keeps_unk(tiny_tokenizer):
    ids = tiny_tokenizer(["the zebra sat", "a"], padding=True)["input_ids"]
    assert analysis.ids_to_texts(tiny_tokenizer, ids) == ["the <unk> sat", "a"]
    assert analysis.ids_to_texts(tiny_tokenizer, torch.tensor(ids)) == ["the <unk> sat", "a"]


def test_posterior_means_match_encode_in_input_order(vae, tiny_tokenizer, tiny_sentences):
    mu, logvar = analysis.posterior_means(vae, tiny_tokenizer, tiny_sentences, batch_size=2)
    for i, text in enumerate(tiny_sentences):
        m, lv = analysis.encode_texts(vae, tiny_tokenizer, [text])
        torch.testing.assert_close(mu[i], m[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logvar[i], lv[0], atol=1e-5, rtol=1e-5)


def test_stretched_codes_preserve_volume(vae):
    codes = analysis.stretched_prior_codes(vae, 5, c=0.3, generator=torch.Generator().manual_seed(0))
    assert codes["stretched"].shape == (5, vae.config.latent_size)
    assert float(codes["singular_values"].prod()) == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(codes["stretched"], codes["z"] @ codes["matrix"].T)


def test_homotopies(vae, tiny_tokenizer, tiny_sentences):
    path = analysis.homotopy(vae, tiny_tokenizer, tiny_sentences[0], tiny_sentences[1], steps=5)
    assert len(path) == 5
    ends = analysis.decode(vae, tiny_tokenizer, analysis.encode_texts(vae, tiny_tokenizer, tiny_sentences[:2])[0])
    assert [path[0], path[-1]] == ends
    paths = analysis.random_homotopies(vae, tiny_tokenizer, 3, steps=4, generator=torch.Generator().manual_seed(0))
    assert len(paths) == 3 and all(len(p) == 4 for p in paths)
    assert analysis.collapse_repeats(["a", "a", "b", "a", "a"]) == ["a", "b", "a"]


def test_pca_2d_recovers_the_main_axis():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(200, 3, generator=generator) * torch.tensor([10.0, 1.0, 0.1])
    coords, ratio = analysis.pca_2d(points)
    assert coords.shape == (200, 2) and ratio[0] > 0.95 and ratio[0] >= ratio[1]
    assert abs(torch.corrcoef(torch.stack([coords[:, 0], points[:, 0]]))[0, 1]) > 0.99
    one_dim, _ = analysis.pca_2d(points[:, :1])
    assert one_dim.shape == (200, 2) and torch.all(one_dim[:, 1] == 0)
    correlation = analysis.length_correlation(points, points[:, 0].tolist())
    assert abs(correlation[0]) > 0.99


@pytest.fixture
def run_generate(capsys):
    """`generate.py COMMAND --model_name_or_path FOLDER ... --output_file F`: its JSON, the same on stdout and in F."""

    def run(script, command, saved_vae, tmp_path, *extra):
        output = tmp_path / f"{command}.json"
        argv = [command, "--model_name_or_path", str(saved_vae), "--device", "cpu", "--output_file", str(output)]
        results = main_json(script, argv + list(extra), capsys)
        assert json.loads(output.read_text(encoding="utf-8")) == results
        return results

    return run


def test_generate_prior_and_stretched(generate_script, saved_vae, tmp_path, run_generate):
    prior = run_generate(generate_script, "prior", saved_vae, tmp_path, "--num_samples", "4")
    assert len(prior["samples"]) == 4 and all(isinstance(s, str) for s in prior["samples"])
    again = run_generate(generate_script, "prior", saved_vae, tmp_path, "--num_samples", "4")
    assert again["samples"] == prior["samples"]  # seeded
    no_unk = run_generate(generate_script, "prior", saved_vae, tmp_path, "--num_samples", "16", "--suppress_unk")
    assert len(no_unk["samples"]) == 16 and not any("<unk>" in s for s in no_unk["samples"])
    stretched = run_generate(generate_script, "stretched", saved_vae, tmp_path, "--num_samples", "3", "--c", "0.5")
    assert len(stretched["samples"]) == 3 == len(stretched["unstretched_samples"])
    assert stretched["max_stretch"] >= 1.0 >= stretched["min_stretch"]


def test_generate_posterior_and_homotopy(generate_script, saved_vae, tmp_path, tiny_sentences, run_generate):
    posterior = run_generate(
        generate_script, "posterior", saved_vae, tmp_path, "--texts", *tiny_sentences[:2], "--num_samples", "2"
    )
    assert [row["input"] for row in posterior["rows"]] == tiny_sentences[:2]
    assert all(len(row["samples"]) == 2 for row in posterior["rows"])
    between = run_generate(
        generate_script,
        "homotopy",
        saved_vae,
        tmp_path,
        "--start",
        tiny_sentences[0],
        "--end",
        tiny_sentences[1],
        "--steps",
        "7",
    )
    # every point of the path is shown, repeats included (--steps 7 gives 7 lines, not the distinct ones)
    assert len(between["paths"]) == 1 and len(between["paths"][0]) == 7
    collapsed = run_generate(
        generate_script,
        "homotopy",
        saved_vae,
        tmp_path,
        "--start",
        tiny_sentences[0],
        "--end",
        tiny_sentences[1],
        "--steps",
        "7",
        "--collapse_repeats",
    )
    assert collapsed["paths"] == [analysis.collapse_repeats(between["paths"][0])]
    random_paths = run_generate(generate_script, "homotopy", saved_vae, tmp_path, "--random", "--num_paths", "2")
    assert len(random_paths["paths"]) == 2 and all(len(p) == 7 for p in random_paths["paths"])
    with pytest.raises(SystemExit):
        generate_script.main(["homotopy", "--model_name_or_path", str(saved_vae)])


def test_generate_report(generate_script, saved_vae, tmp_path, tiny_sentences, run_generate):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(tiny_sentences * 3) + "\n", encoding="utf-8")
    out = tmp_path / "report"
    results = run_generate(
        generate_script,
        "report",
        saved_vae,
        tmp_path,
        "--texts_file",
        str(texts),
        "--output_dir",
        str(out),
        "--num_samples",
        "3",
        "--num_posterior",
        "2",
        "--num_homotopies",
        "1",
        "--steps",
        "4",
        "--min_words",
        "1",
    )
    markdown = (out / "report.md").read_text(encoding="utf-8")
    for heading in ("Table 5", "Table 6", "Table 7", "Table 8", "PCA"):
        assert heading in markdown
    assert "Books Corpus" in markdown and "latent_pca.png" in markdown
    assert (out / "latent_pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["pca"]["num_sentences"] == len(tiny_sentences) * 3
    assert len(results["posterior"]) == 2 and len(results["sentence_homotopies"]) == 1


def test_generate_rejects_an_rnnlm(generate_script, tmp_path, tiny_model, tiny_tokenizer, capsys):
    folder = tmp_path / "rnnlm"
    tiny_model(latent_size=0).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    main_error(generate_script, ["prior", "--model_name_or_path", str(folder), "--device", "cpu"], capsys, "RNNLM")


def test_generate_decodes_with_the_models_generation_config(
    generate_script, vae, tiny_tokenizer, tmp_path, run_generate
):
    """The script decodes as the saved generation_config.json says (a trained model's beam search, <unk>
    suppressed), the command line overrides it, and the report names the decoding it used."""
    unk = tiny_tokenizer.unk_token_id
    with torch.no_grad():
        vae.lm_head.bias[unk] += 3.0  # a model that likes <unk>, as one trained on PTB does
    vae.generation_config.num_beams = 3
    vae.generation_config.suppress_tokens = [unk]
    folder = tmp_path / "beams"
    vae.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)

    def prior(*extra) -> list[str]:
        return run_generate(generate_script, "prior", folder, tmp_path, "--num_samples", "6", *extra)["samples"]

    def expected(**kwargs) -> list[str]:
        generator = torch.Generator().manual_seed(0)  # the script's --seed
        return analysis.prior_samples(vae, tiny_tokenizer, 6, generator=generator, **kwargs)

    assert prior() == expected(num_beams=3, suppress_tokens=[unk]) == expected()
    assert prior("--num_beams", "1") == expected(num_beams=1)
    bf16 = prior("--output_layer_dtype", "bfloat16")
    assert bf16 == expected(output_layer_dtype="bfloat16") and len(bf16) == 6
    assert prior("--allow_unk") == expected(suppress_tokens=None)
    assert expected(suppress_tokens=None) != expected(), "premise: <unk> is generated unless suppressed"
    assert analysis.describe_decoding(vae, tiny_tokenizer) == "beam search (3 beams), `<unk>` suppressed"
    assert analysis.describe_decoding(vae, tiny_tokenizer, num_beams=1, suppress_tokens=None) == "greedy decoding"


def test_scripts_name_a_missing_model_folder(generate_script, repo_root, tmp_path, capsys):
    """A model path that does not exist is named as such in one line with exit status 2 (not a Hub "Repo id"
    traceback)."""
    missing = tmp_path / "runs" / "demo" / "run" / "best"
    evaluate_script = load_script(repo_root / "train_scripts" / "evaluate_model.py")
    for script, argv in (
        (generate_script, ["prior", "--model_name_or_path", str(missing), "--device", "cpu"]),
        (evaluate_script, ["--model_name_or_path", str(missing), "--test_file", str(tmp_path / "t.txt")]),
    ):
        status, _, err = run_main(script, argv, capsys)
        assert status == 2
        assert f"{str(missing)!r} does not exist" in err and "Repo id" not in err and "Traceback" not in err


def test_generate_passes_the_output_layer_dtype(
    generate_script, vae, tiny_tokenizer, tmp_path, run_generate, monkeypatch
):
    """`--output_layer_dtype mixed` reaches `generate`: greedy search runs the bfloat16 screen and gives the float32
    sentences."""
    import hf_sentence_vae.modeling_sentence_vae as modeling

    folder = tmp_path / "model"
    vae.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    calls, screened = [], modeling.screened_greedy_tokens
    monkeypatch.setattr(modeling, "screened_greedy_tokens", lambda *a: calls.append(1) or screened(*a))
    args = ("--num_samples", "20", "--num_beams", "1")
    mixed = run_generate(generate_script, "prior", folder, tmp_path, *args, "--output_layer_dtype", "mixed")
    assert calls
    calls.clear()
    assert mixed["samples"] == run_generate(generate_script, "prior", folder, tmp_path, *args)["samples"]
    assert not calls
