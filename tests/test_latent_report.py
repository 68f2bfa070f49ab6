"""The latent report: its text metrics on known inputs, the report's internal consistency on a tiny model, and the
script end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import load_script, main_json

from hf_sentence_vae.analysis import decode, posterior_means
from hf_sentence_vae.latent import gaussian_kl
from hf_sentence_vae.latent_report import (
    corpus_bleu,
    homotopy_scores,
    latent_report,
    reconstruction_scores,
    render_markdown,
    word_edit_distance,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize(
    "a, b, distance",
    [
        ("the cat sat", "the cat sat", 0),
        ("the cat sat", "the dog sat", 1),
        ("the cat sat", "cat sat", 1),
        ("the cat sat", "the cat sat on the mat", 3),
        ("", "a b", 2),
        ("a b c d", "d c b a", 4),
    ],
)
def test_word_edit_distance(a, b, distance):
    assert word_edit_distance(a, b) == distance == word_edit_distance(b, a)


def test_reconstruction_scores_on_known_hypotheses():
    refs = ["the cat sat on the mat .", "a dog ran to the park .", "the park was green ."]
    perfect = reconstruction_scores(refs, refs)
    assert perfect == {"bleu": pytest.approx(100.0), "exact_match": 1.0, "distinct_fraction": 1.0}
    generic = reconstruction_scores(["the cat sat on the mat ."] * 3, refs)
    assert generic["exact_match"] == pytest.approx(1 / 3) and generic["distinct_fraction"] == pytest.approx(1 / 3)
    assert 0.0 < generic["bleu"] < 100.0
    assert corpus_bleu(["x y z w"], ["a b c d"]) == 0.0
    with pytest.raises(ValueError):
        corpus_bleu(["a"], ["a", "b"])


def test_homotopy_scores_on_known_paths():
    paths = [["a b", "a b", "a c", "d c"], ["x", "x", "x", "x"]]
    scores = homotopy_scores(paths)
    assert scores["distinct_fraction"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert scores["neighbour_edit_distance"] == pytest.approx(((0 + 1 + 1) / 3 + 0) / 2)
    with pytest.raises(ValueError):
        homotopy_scores([["only one"]])


def test_latent_report_is_consistent_with_the_model(tiny_model, tiny_tokenizer, tiny_sentences):
    model = tiny_model(seed=3, vocab_size=len(tiny_tokenizer))
    with torch.no_grad():
        model.posterior.weight.mul_(200.0)  # posterior means that differ across sentences
    report = latent_report(model, tiny_tokenizer, tiny_sentences, num_beams=3, homotopy_pairs=4, homotopy_steps=5)
    mu, logvar = posterior_means(model, tiny_tokenizer, tiny_sentences)
    kl_dims = gaussian_kl(mu.double(), logvar.double()).mean(0)
    assert report["kl"] == pytest.approx(float(kl_dims.sum()), rel=1e-6)
    assert report["kl_per_dimension"] == pytest.approx(kl_dims.tolist(), rel=1e-6)
    assert report["mutual_information_ceiling"] == pytest.approx(math.log(len(tiny_sentences)))
    assert report["mutual_information"] <= report["mutual_information_ceiling"] + 1e-6
    assert report["active_units"] == int((mu.double().var(0) > 0.01).sum())
    greedy = decode(model, tiny_tokenizer, mu, num_beams=1, suppress_tokens=None)
    assert [e["greedy"] for e in report["examples"]["reconstructions"]] == greedy[: len(tiny_sentences)]
    assert report["reconstruction_greedy"]["distinct_fraction"] == pytest.approx(len(set(greedy)) / len(greedy))
    assert set(report["reconstruction_beam3"]) == {"bleu", "exact_match", "distinct_fraction"}
    assert report["homotopy"]["pairs"] == 4 and report["homotopy"]["steps"] == 5
    assert all(len(e["path"]) == 5 for e in report["examples"]["homotopies"])
    page = render_markdown(report, "tiny")
    assert page.startswith("# tiny") and "beam3" in page and "active units" in page


def test_latent_report_decodes_as_named_whatever_the_saved_generation_config(
    tiny_model, tiny_tokenizer, tiny_sentences
):
    """A trained model's saved defaults (beam search, `<unk>` suppressed) change neither the greedy reconstructions
    nor the homotopies of the report, and `<unk>` stays allowed (the references hold it)."""
    model = tiny_model(seed=3, vocab_size=len(tiny_tokenizer))
    with torch.no_grad():
        model.posterior.weight.mul_(200.0)
    settings = dict(num_beams=3, homotopy_pairs=4, homotopy_steps=5)
    plain = latent_report(model, tiny_tokenizer, tiny_sentences, **settings)
    model.generation_config.num_beams = 4
    model.generation_config.suppress_tokens = [tiny_tokenizer.unk_token_id, 5, 6, 7]
    saved = latent_report(model, tiny_tokenizer, tiny_sentences, **settings)
    for key in ("reconstruction_greedy", "reconstruction_beam3", "homotopy"):
        assert saved[key] == plain[key], key
    assert saved["examples"] == plain["examples"]
    greedy = decode(model, tiny_tokenizer, posterior_means(model, tiny_tokenizer, tiny_sentences)[0], num_beams=1)
    assert [e["greedy"] for e in saved["examples"]["reconstructions"]] != greedy[: len(tiny_sentences)]


def test_latent_report_refuses_an_rnnlm_and_bad_settings(tiny_model, tiny_tokenizer, tiny_sentences):
    rnnlm = tiny_model(vocab_size=len(tiny_tokenizer), latent_size=0)
    with pytest.raises(ValueError, match="RNNLM"):
        latent_report(rnnlm, tiny_tokenizer, tiny_sentences)
    vae = tiny_model(vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError, match="homotopy_steps"):
        latent_report(vae, tiny_tokenizer, tiny_sentences, homotopy_steps=1)


def test_latent_report_script_writes_json_and_markdown(
    tiny_model, tiny_tokenizer, tiny_sentences, repo_root, tmp_path, capsys
):
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "test.txt").write_text("\n".join(tiny_sentences) + "\n", encoding="utf-8")
    script = load_script(repo_root / "train_scripts" / "latent_report.py")
    argv = [
        "--model_name_or_path", str(tmp_path / "model"), "--test_file", str(tmp_path / "test.txt"),
        "--homotopy_pairs", "2", "--homotopy_steps", "3", "--num_beams", "2",
        "--output_file", str(tmp_path / "r.json"), "--markdown_file", str(tmp_path / "r.md"),
    ]  # fmt: skip
    printed = main_json(script, argv, capsys)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report == printed
    assert report["num_sentences"] == len(tiny_sentences) and "reconstruction_beam2" in report
    assert (tmp_path / "r.md").read_text().startswith("# Latent report")


def test_latent_report_linear_probe_on_trec(tiny_model, tiny_tokenizer, tiny_sentences, data_dir):
    from hf_sentence_vae.embeddings import TREC_FILES, read_trec

    if not all((data_dir / "trec" / name).is_file() for name in TREC_FILES):
        pytest.skip(f"TREC files missing under {data_dir / 'trec'}")
    train, test = (read_trec(data_dir / "trec" / name) for name in TREC_FILES)
    model = tiny_model(vocab_size=len(tiny_tokenizer))
    report = latent_report(
        model, tiny_tokenizer, tiny_sentences, homotopy_pairs=1, homotopy_steps=2, trec=(train.subset(300), test)
    )
    probe = report["linear_probe_trec"]
    assert 0.0 <= probe["accuracy"] <= 100.0 and probe["majority_class_accuracy"] > 0.0
    assert "linear probe" in render_markdown(report)
