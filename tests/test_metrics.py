"""Tests of `hf_sentence_vae.metrics` and `train_scripts/evaluate_model.py`.

Self-contained (own fixtures). The estimators are checked against known answers: a 1-D latent model whose
marginal likelihood is computed by quadrature on a fine grid, constructed posteriors with known mutual
information and active units, and closed-form perplexities.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from pathlib import Path

import pytest
import torch
from helpers import load_script, main_json

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_name, _value)

from hf_sentence_vae import (  # noqa: E402
    SentenceVAEConfig,
    SentenceVAEModel,
    build_tokenizer,
    metrics,
)
from hf_sentence_vae.latent import gaussian_log_density  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_scripts" / "evaluate_model.py"


def _data_dir() -> Path:
    return Path(os.environ.get("SENTENCE_VAE_DATA", REPO.parent / "shared" / "data"))


def _synthetic_corpus(num: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my friend", "the old man", "she", "he", "the small bird"]
    verbs = ["saw", "liked", "ate", "found", "wanted", "gave away"]
    objects = ["the fish", "a ball", "some bread", "the red car", "it", "a very long letter"]
    return [f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} ." for _ in range(num)]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return _synthetic_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return build_tokenizer(corpus)


def _make_model(tokenizer, latent_size: int, seed: int = 0, mu_bias: float = 0.0, logvar_bias: float = 0.0):
    """A small model with large random weights, so that q(z|x) depends on x and p(x|z) strongly on z."""
    torch.manual_seed(seed)
    config = SentenceVAEConfig(
        vocab_size=len(tokenizer),
        embedding_size=16,
        encoder_hidden_size=16,
        decoder_hidden_size=16,
        latent_size=latent_size,
        word_keep_rate=1.0,
    )
    model = SentenceVAEModel(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
        if latent_size:
            model.latent_to_state.weight.normal_(0.0, 4.0)
            model.posterior.bias[:latent_size] = mu_bias
            model.posterior.bias[latent_size:] = logvar_bias
    return model


def _batch(tokenizer, sentences):
    encoded = tokenizer(sentences, padding=True, return_tensors="pt")
    return encoded["input_ids"], encoded["attention_mask"]


# ----------------------------------------------------------------------------------------------- IW-NLL
def test_iw_with_one_sample_is_the_single_sample_bound(tokenizer, corpus):
    model = _make_model(tokenizer, latent_size=4, mu_bias=1.0, logvar_bias=-1.5)
    ids, mask = _batch(tokenizer, corpus[:8])
    log_weights = metrics.importance_log_weights(
        model, ids, mask, num_samples=1, generator=torch.Generator().manual_seed(7)
    )
    iw = metrics.importance_weighted_log_likelihood(
        model, ids, mask, num_samples=1, generator=torch.Generator().manual_seed(7)
    )
    assert log_weights.shape == (1, 8) and log_weights.dtype == torch.float64
    torch.testing.assert_close(iw, log_weights[0])

    with torch.no_grad():
        out = model(ids, mask, generator=torch.Generator().manual_seed(7), return_logits=False, sample_latent=True)
    sampled_kl = gaussian_log_density(out.z, out.mu, out.logvar) - gaussian_log_density(out.z)
    assert float(sampled_kl.abs().min()) > 0.1  # the prior and posterior terms matter here
    expected = -(out.reconstruction_per_sentence + sampled_kl).double()
    torch.testing.assert_close(iw, expected, atol=1e-4, rtol=1e-5)

    # The bound's analytic KL is the expectation of this sampled KL: elbo_terms reports it.
    terms = metrics.elbo_terms(model, ids, mask, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(terms.reconstruction, out.reconstruction_per_sentence.double())
    torch.testing.assert_close(terms.kl, out.kl_per_sentence.double())
    torch.testing.assert_close(terms.nll_bound, terms.reconstruction + terms.kl)


def test_iw_chunking_does_not_change_the_estimate(tokenizer, corpus):
    model = _make_model(tokenizer, latent_size=3, mu_bias=0.5, logvar_bias=-1.0)
    ids, mask = _batch(tokenizer, corpus[:5])
    results = [
        metrics.importance_log_weights(
            model, ids, mask, num_samples=12, generator=torch.Generator().manual_seed(3), samples_per_chunk=chunk
        )
        for chunk in (1, 5, 12, None)
    ]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=1e-6)
    # A token budget that fits only one sample's batch per decoder call gives the same answer too.
    tiny = metrics.importance_log_weights(
        model, ids, mask, num_samples=12, generator=torch.Generator().manual_seed(3), max_tokens_per_chunk=1
    )
    torch.testing.assert_close(tiny, results[0], atol=1e-5, rtol=1e-6)


@pytest.fixture(scope="module")
def one_dim_model(tokenizer, corpus):
    """A 1-D latent model, six sentences, and their exact log p(x), posterior mean and std by quadrature."""
    model = _make_model(tokenizer, latent_size=1)
    ids, mask = _batch(tokenizer, corpus[:6])
    grid = torch.linspace(-8.0, 8.0, 3201, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    num_points, batch_size = grid.shape[0], ids.shape[0]
    with torch.no_grad():
        log_likelihood = model.log_likelihood_given_latent(
            ids.repeat(num_points, 1), mask.repeat(num_points, 1), grid.float().repeat_interleave(batch_size)[:, None]
        ).view(num_points, batch_size)
    log_joint = log_likelihood.double() + gaussian_log_density(grid[:, None])[:, None]  # (G, B)
    log_marginal = torch.logsumexp(log_joint, 0) + math.log(step)
    posterior = torch.softmax(log_joint, 0)
    post_mean = (posterior * grid[:, None]).sum(0)
    post_std = (posterior * (grid[:, None] - post_mean) ** 2).sum(0).sqrt()
    return dict(
        model=model,
        ids=ids,
        mask=mask,
        grid=grid,
        step=step,
        log_joint=log_joint,
        exact_nll=-log_marginal,
        post_mean=post_mean,
        post_std=post_std,
    )


def test_iw_nll_brackets_and_converges_to_exact_marginal(one_dim_model):
    """With a proposal q that is offset from and wider than the true posterior, in expectation over repeats:
    -ELBO = IW-NLL(k=1) > IW-NLL(10) > IW-NLL(100) >= exact NLL, and IW-NLL(2000) ~= exact, per sentence."""
    d = one_dim_model
    model, ids, mask, exact = d["model"], d["ids"], d["mask"], d["exact_nll"]
    mu = (d["post_mean"] + 2.0 * d["post_std"]).float()[:, None]
    logvar = (2.0 * torch.log(1.5 * d["post_std"])).float()[:, None]

    # Exact -ELBO of this q by quadrature: E_q[-log p(x, z) + log q(z|x)].
    log_q = gaussian_log_density(d["grid"][:, None, None], mu.double()[None], logvar.double()[None])  # (G, B)
    q_mass = log_q.exp() * d["step"]
    torch.testing.assert_close(q_mass.sum(0), torch.ones_like(exact), atol=1e-3, rtol=0)
    exact_neg_elbo = -(q_mass * (d["log_joint"] - log_q)).sum(0)
    assert float((exact_neg_elbo - exact).min()) > 0.5  # a real gap for the IW estimate to close

    generator = torch.Generator().manual_seed(0)
    repeats = {1: 200, 10: 100, 100: 20}
    estimates, stderrs = {}, {}
    for k, num_repeats in repeats.items():
        log_weights = metrics.importance_log_weights(
            model, ids, mask, num_samples=k * num_repeats, posterior=(mu, logvar), generator=generator
        )
        nll = -metrics.log_mean_exp(log_weights.view(num_repeats, k, -1), dim=1)  # (repeats, B)
        estimates[k] = nll.mean(0)  # per sentence
        stderrs[k] = nll.mean(1).std() / math.sqrt(num_repeats)  # of the sentence-averaged estimate
    average = {k: float(v.mean()) for k, v in estimates.items()}
    exact_average = float(exact.mean())

    # k=1 is the bound: its average matches the exact -ELBO.
    assert abs(average[1] - float(exact_neg_elbo.mean())) < 4 * float(stderrs[1])
    # Decreasing in k (so below -ELBO), never below the exact NLL (in expectation).
    assert average[1] - average[10] > 4 * float(stderrs[1])
    assert average[10] - average[100] > 3 * float(stderrs[10])
    for k in repeats:
        assert average[k] >= exact_average - 3 * float(stderrs[k]) - 1e-3
    # Many samples: the per-sentence estimate reaches the exact marginal (rows stay aligned with sentences).
    converged = -metrics.importance_weighted_log_likelihood(
        model, ids, mask, num_samples=2000, posterior=(mu, logvar), generator=generator
    )
    torch.testing.assert_close(converged, exact, atol=0.15, rtol=0)
    assert float(exact.max() - exact.min()) > 1.0  # sentences differ, so misalignment would show


def test_iw_with_the_model_encoder_is_consistent(one_dim_model):
    """Through the model's own q(z|x) (no posterior passed in): IW-NLL(1000) ~= exact NLL, per sentence."""
    d = one_dim_model
    generator = torch.Generator().manual_seed(1)
    iw_nll = -metrics.importance_weighted_log_likelihood(
        d["model"], d["ids"], d["mask"], num_samples=1000, generator=generator
    )
    torch.testing.assert_close(iw_nll, d["exact_nll"], atol=0.08, rtol=0)


# ----------------------------------------------------------------------------------------------- MI and active units
def test_mutual_information_known_answers():
    """He et al.'s estimator is exact up to Monte-Carlo noise of standard deviation ~0.5 * sqrt(2 Z / N)."""
    generator = torch.Generator().manual_seed(0)
    num = 3000

    def tolerance(latent_size: int) -> float:
        return 4 * 0.5 * math.sqrt(2 * latent_size / num)

    # Identical posteriors: x carries no information about z.
    same_mu = torch.full((num, 3), 0.7)
    same_logvar = torch.full((num, 3), -0.5)
    mi_same = float(metrics.mutual_information(same_mu, same_logvar, generator=generator))
    assert abs(mi_same) < tolerance(3)

    # Two well-separated clusters of equally many sentences: I(x; z) = log 2.
    clusters = torch.zeros(num, 2)
    clusters[: num // 2, 0], clusters[num // 2 :, 0] = -5.0, 5.0
    clusters[:, 1] = 0.3  # dimension 1 ignores x (mean and variance): it adds no information
    logvar = torch.empty(num, 2)
    logvar[:, 0], logvar[:, 1] = math.log(0.01**2), -1.0
    mi_two = float(metrics.mutual_information(clusters, logvar, generator=generator))
    assert mi_two == pytest.approx(math.log(2), abs=tolerance(2))
    mi_dim0 = float(metrics.mutual_information(clusters[:, :1], logvar[:, :1], generator=generator))
    assert mi_dim0 == pytest.approx(math.log(2), abs=tolerance(1))
    # Eight separated posteriors of one sentence each: the maximum, log N (no noise: q(z) = q(z|x) / N).
    eight = torch.arange(8.0)[:, None] * 10.0
    logvar_eight = torch.full((8, 1), -6.0)
    separated = metrics.mutual_information(eight, logvar_eight, generator=torch.Generator().manual_seed(5))
    same = metrics.mutual_information(torch.zeros(8, 1), logvar_eight, generator=torch.Generator().manual_seed(5))
    mi_eight, mi_eight_same = float(separated), float(same)
    assert mi_eight - mi_eight_same == pytest.approx(math.log(8), abs=1e-4)

    with pytest.raises(ValueError, match="shape"):
        metrics.mutual_information(torch.zeros(4, 2), torch.zeros(4, 3))


def test_active_units_and_streaming_variance():
    generator = torch.Generator().manual_seed(0)
    num = 1000
    mu = torch.zeros(num, 3)
    mu[:, 0] = torch.randn(num, generator=generator)  # varies with x: active
    mu[:, 1] = 0.3  # ignores x: inactive
    mu[:, 2] = 0.05 * torch.randn(num, generator=generator)  # variance 0.0025 < 0.01: inactive
    moments = metrics.RunningMoments()
    for chunk in mu.split([1, 7, 300, 2, 690]):  # uneven batches, one of a single row
        moments.update(chunk)
    assert moments.count == num
    torch.testing.assert_close(moments.variance, mu.double().var(0))
    torch.testing.assert_close(moments.mean, mu.double().mean(0))
    assert metrics.active_units(moments.variance) == 1
    assert metrics.active_units(moments.variance, threshold=0.001) == 2

    # Numerically sound: a small variance around a large mean, fed as float32 batches.
    values = (1.0e4 + 0.1 * torch.randn(num, 2, generator=generator, dtype=torch.float64)).float()
    moments = metrics.RunningMoments()
    for chunk in values.split(16):
        moments.update(chunk)
    torch.testing.assert_close(moments.variance, values.double().var(0), rtol=1e-6, atol=0)

    with pytest.raises(ValueError, match="3 dimensions"):
        moments_3 = metrics.RunningMoments()
        moments_3.update(torch.zeros(2, 3))
        moments_3.update(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="threshold"):
        metrics.active_units(torch.zeros(3), threshold=-1.0)


# ----------------------------------------------------------------------------------------------- streaming evaluation
def test_evaluate_model_streams_a_vae(tokenizer, corpus, monkeypatch):
    model = _make_model(tokenizer, latent_size=4, logvar_bias=-2.0)
    with torch.no_grad():
        model.posterior.weight[1:4].zero_()  # mu_1..3 = constant bias: inactive dimensions
        model.posterior.weight[0].mul_(5.0)
    model.train()  # evaluate_model must switch to eval mode and restore this
    sentences = corpus[:40]
    small = metrics.length_sorted_batches(tokenizer, sentences, batch_size=6)
    assert [b["input_ids"].shape[0] for b in small] == [6] * 6 + [4]
    lengths = [int(b["attention_mask"].sum(-1).max()) for b in small]
    assert lengths == sorted(lengths)
    calls = []
    original_mi = metrics.mutual_information

    def recording_mi(mu, logvar, generator=None):
        value = original_mi(mu, logvar, generator=generator)
        calls.append((mu, float(value)))
        return value

    monkeypatch.setattr(metrics, "mutual_information", recording_mi)
    results = metrics.evaluate_model(
        model, small, iw_samples=20, generator=torch.Generator().manual_seed(0), progress=False
    )
    monkeypatch.undo()
    assert model.training
    assert tuple(results) == metrics.RESULT_FIELDS
    json.dumps(results)

    ids, mask = _batch(tokenizer, sentences)
    tokens = int(mask.sum()) - len(sentences)
    assert results["num_sentences"] == 40 and results["num_tokens"] == tokens
    assert results["num_words"] == tokens - 40
    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(ids, mask)
        kl = float(model(ids, mask).kl_per_sentence.sum())
    # Active units from the whole set's posterior means, not per batch.
    variances = torch.tensor(results["active_unit_variances"], dtype=torch.float64)
    torch.testing.assert_close(variances, mu.double().var(0), rtol=1e-4, atol=1e-9)
    assert results["active_units"] == 1
    assert results["kl"] == pytest.approx(kl / 40, rel=1e-5)
    # Per-token values and both perplexity conventions.
    total_iw = results["nll_iw"] * 40
    assert results["nll_iw_per_token"] == pytest.approx(total_iw / tokens)
    assert results["ppl_iw"] == pytest.approx(math.exp(total_iw / tokens))
    assert results["ppl_iw_words"] == pytest.approx(math.exp(total_iw / (tokens - 40)))
    assert results["ppl_bound"] == pytest.approx(math.exp(results["nll_bound"] * 40 / tokens))
    assert results["elbo"] == pytest.approx(-(results["reconstruction"] + results["kl"]))
    assert results["nll_estimator"] == "importance_weighted"
    assert (results["nll"], results["ppl"], results["ppl_words"]) == (
        results["nll_iw"],
        results["ppl_iw"],
        results["ppl_iw_words"],
    )
    assert results["nll_iw"] < results["nll_bound"]
    assert results["nll_exact"] is None
    # MI: per batch (He et al.), averaged weighted by batch size.
    assert results["mutual_information"] == pytest.approx(
        sum(len(mu) * value for mu, value in calls) / 40, rel=1e-9, abs=1e-12
    )
    assert sorted(len(mu) for mu, _ in calls) == [4] + [6] * 6

    # Batching does not change the deterministic fields.
    one = metrics.evaluate_model(
        model, [{"input_ids": ids, "attention_mask": mask}], iw_samples=0, generator=torch.Generator(), progress=False
    )
    assert one["active_unit_variances"] == pytest.approx(results["active_unit_variances"], rel=1e-5)
    assert one["kl"] == pytest.approx(results["kl"], rel=1e-5)
    assert one["nll_estimator"] == "bound" and one["nll"] == one["nll_bound"] and one["nll_iw"] is None


def test_evaluate_model_rnnlm_is_exact(tokenizer, corpus):
    model = _make_model(tokenizer, latent_size=0)
    sentences = corpus[:20]
    batches = metrics.length_sorted_batches(tokenizer, sentences, batch_size=8)
    results = metrics.evaluate_model(model, batches, iw_samples=5, progress=False)
    ids, mask = _batch(tokenizer, sentences)
    exact = -float(metrics.exact_log_likelihood(model, ids, mask).sum())
    tokens = int(mask.sum()) - len(sentences)
    assert results["nll_estimator"] == "exact"
    assert results["nll_exact"] == pytest.approx(exact / 20, rel=1e-5)
    assert results["nll"] == results["nll_exact"] == pytest.approx(results["nll_bound"])
    assert results["ppl_exact"] == pytest.approx(math.exp(exact / tokens), rel=1e-5)
    assert results["ppl_exact_words"] == pytest.approx(math.exp(exact / (tokens - 20)), rel=1e-5)
    assert results["kl"] == 0.0 and results["mutual_information"] == 0.0 and results["active_units"] == 0
    assert results["nll_iw"] is None and results["iw_samples"] == 0

    with pytest.raises(ValueError, match="latent_size"):
        metrics.importance_log_weights(model, ids, mask, num_samples=3)
    with pytest.raises(ValueError, match="latent_size=4"):
        metrics.exact_log_likelihood(_make_model(tokenizer, latent_size=4), ids, mask)


def test_bad_inputs_raise_value_errors(tokenizer, corpus):
    model = _make_model(tokenizer, latent_size=2)
    ids, mask = _batch(tokenizer, corpus[:2])
    with pytest.raises(ValueError, match="num_samples"):
        metrics.importance_log_weights(model, ids, mask, num_samples=0)
    with pytest.raises(ValueError, match="samples_per_chunk"):
        metrics.importance_log_weights(model, ids, mask, num_samples=2, samples_per_chunk=0)
    with pytest.raises(ValueError, match="total_count=0"):
        metrics.perplexity(1.0, 0)
    with pytest.raises(ValueError, match="iw_samples"):
        metrics.evaluate_model(model, [{"input_ids": ids}], iw_samples=-1, progress=False)
    with pytest.raises(ValueError, match="no sentences"):
        metrics.evaluate_model(model, [], progress=False)
    with pytest.raises(ValueError, match="str"):
        metrics.evaluate_model(model, ["not a batch"], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        metrics.length_sorted_batches(tokenizer, corpus, 0)
    assert metrics.perplexity(10.0, 5) == pytest.approx(math.exp(2.0))


# ----------------------------------------------------------------------------------------------- evaluate.Metric
def test_metric_wrappers_work_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    from hf_sentence_vae.metrics import ELBOMetric, PerplexityMetric

    reconstruction, kl, counts = [90.0, 40.0, 10.0], [2.0, 1.5, 0.5], [21, 11, 4]
    elbo = ELBOMetric()
    elbo.add_batch(reconstruction=reconstruction[:2], kl=kl[:2], num_tokens=counts[:2])
    result = elbo.compute(reconstruction=reconstruction[2:], kl=kl[2:], num_tokens=counts[2:])
    total_nll, tokens = sum(reconstruction) + sum(kl), sum(counts)
    assert result["num_sentences"] == 3 and result["num_tokens"] == tokens and result["num_words"] == tokens - 3
    assert result["kl"] == pytest.approx(4.0 / 3)
    assert result["elbo"] == pytest.approx(-total_nll / 3)
    assert result["nll_bound_per_token"] == pytest.approx(total_nll / tokens)
    assert result["ppl_bound"] == pytest.approx(math.exp(total_nll / tokens))
    assert result["ppl_bound_words"] == pytest.approx(math.exp(total_nll / (tokens - 3)))

    ppl = PerplexityMetric().compute(nll=[92.0, 41.5], num_tokens=[21, 11])
    assert ppl["perplexity"] == pytest.approx(math.exp(133.5 / 32))
    assert ppl["perplexity_words"] == pytest.approx(math.exp(133.5 / 30))
    assert ppl["nll"] == pytest.approx(133.5 / 2)


# ----------------------------------------------------------------------------------------------- the script
def test_evaluate_script_prints_every_field(tmp_path, capsys, caplog):
    ptb = _data_dir() / "ptb"
    if not (ptb / "ptb.train.txt").exists() or not (ptb / "ptb.valid.txt").exists():
        pytest.skip(f"PTB data not found under {ptb} (set SENTENCE_VAE_DATA)")
    from transformers import AutoModel, AutoTokenizer

    with open(ptb / "ptb.train.txt", encoding="utf-8") as handle:
        train = [line.strip() for _, line in zip(range(200), handle) if line.strip()]
    tokenizer = build_tokenizer(train)
    torch.manual_seed(0)
    config = SentenceVAEConfig(
        vocab_size=len(tokenizer), embedding_size=24, encoder_hidden_size=24, decoder_hidden_size=24, latent_size=6
    )
    model = SentenceVAEModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = metrics.length_sorted_batches(tokenizer, train, batch_size=40)
    for step in range(10):
        batch = batches[step % len(batches)]
        loss = model(**batch, kl_weight=0.1, return_logits=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    with open(ptb / "ptb.valid.txt", encoding="utf-8") as handle:
        valid = [line for _, line in zip(range(30), handle)]
    test_file = tmp_path / "test.txt"
    test_file.write_text("\n   \n" + "".join(valid), encoding="utf-8")  # two blank lines first
    output_file = tmp_path / "out" / "results.json"
    argv = ["--model_name_or_path", model_dir, "--test_file", test_file, "--iw_samples", "5", "--batch_size", "8"]
    argv += ["--max_sentences", "20", "--seed", "3", "--output_file", output_file]
    with caplog.at_level(logging.INFO, logger="evaluate_model"):
        printed = main_json(load_script(SCRIPT), argv, capsys)
    assert json.loads(output_file.read_text()) == printed
    assert set(metrics.RESULT_FIELDS) <= set(printed)
    assert printed["num_sentences"] == 20 and printed["blank_lines_skipped"] == 2
    assert "2 blank lines skipped" in caplog.text
    assert printed["nll_estimator"] == "importance_weighted" and printed["iw_samples"] == 5
    for field in metrics.RESULT_FIELDS:
        if field.startswith(("nll_exact", "ppl_exact")):
            assert printed[field] is None, field
        elif field not in ("nll_estimator", "active_unit_variances"):
            assert math.isfinite(printed[field]), field
    assert len(printed["active_unit_variances"]) == 6

    # The script is a thin wrapper: the same evaluation in-process gives the same numbers.
    loaded = AutoModel.from_pretrained(model_dir)
    loaded_tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sentences, blank = metrics.read_sentences(test_file, max_sentences=20)
    assert blank == 2 and len(sentences) == 20
    expected = metrics.evaluate_model(
        loaded,
        metrics.length_sorted_batches(loaded_tokenizer, sentences, 8),
        iw_samples=5,
        generator=torch.Generator().manual_seed(3),
        progress=False,
    )
    for field in ("nll_bound", "nll_iw", "ppl_iw_words", "mutual_information", "kl"):
        assert printed[field] == pytest.approx(expected[field], rel=1e-5), field
