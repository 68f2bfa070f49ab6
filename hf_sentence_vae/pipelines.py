"""`pipeline("sentence-vae", ...)`: prior samples, reconstructions and homotopies of a sentence VAE, as text.

    from transformers import pipeline
    import hf_sentence_vae.pipelines  # registers the "sentence-vae" task

    pipe = pipeline("sentence-vae", model="path/to/model")   # a saved folder or Hub repo, or model + tokenizer objects
    pipe(5, seed=0)                                    # 5 decodes of prior samples (the paper's Table 5)
    pipe("the company said it would buy the shares .")   # decode of the posterior mean (+ posterior samples)
    pipe(("i went to the store .", "she was happy ."), steps=5)   # homotopy between two sentences (Table 8)

The input decides the task: an `int` n samples n codes from the prior, a `str` is reconstructed, a pair of
strings `(start, end)` is interpolated. A list of inputs gives a list of results. Generation parameters
(`GENERATE_PARAMETERS`: `max_new_tokens`, `num_beams`, `do_sample`, `temperature`, `top_k`, `top_p`,
`suppress_tokens`, `repetition_penalty`, ..., or a `generation_config`) go to `model.generate`, on top of the
model's `generation_config` (a trained model's defaults: beam search, `<unk>` suppressed where the corpus had it);
`seed` makes the prior and posterior draws (and sampling) reproducible. For the RNNLM baseline
(`latent_size=0`) only unconditional samples are possible.

This file imports nothing but torch and transformers, so it also travels with a saved model as remote code:
`hf_sentence_vae.hub.add_pipeline(folder)` copies it next to the model and records it under `custom_pipelines`
in `config.json` (training does this for `best/`); then `pipeline(model=folder_or_repo, trust_remote_code=True)`
builds it without `hf_sentence_vae`. The folder declares it under a task name of its own
(`sentence-vae-remote-code`), so where this package is imported `pipeline("sentence-vae", model=folder)` uses the
registered class and needs no `trust_remote_code`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY

TASK = "sentence-vae"
GENERATE_PARAMETERS = (
    "generation_config",
    "max_new_tokens",
    "min_new_tokens",
    "max_length",
    "min_length",
    "num_beams",
    "length_penalty",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_h",
    "max_time",
    "suppress_tokens",
    "begin_suppress_tokens",
    "bad_words_ids",
    "sequence_bias",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "remove_invalid_values",
    "renormalize_logits",
    "logits_processor",
    "stopping_criteria",
)


class SentenceVAEPipeline(Pipeline):
    """Text in, text out over a sentence VAE's latent space (see the module docstring for the inputs).

    Outputs:
        `int` n: a list of n `{"generated_text"}` (plus `"latent"` with `return_latent=True`).
        `str`: `{"input_text", "generated_text", "posterior_samples"}`: the decode of the posterior mean and of
            `num_posterior_samples` draws from q(z|x).
        `(start, end)`: a list of `steps` `{"alpha", "generated_text"}` along the line between the two
            posterior means (alpha = 0 at `start`, 1 at `end`).
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        seed: int | None = None,
        steps: int | None = None,
        num_posterior_samples: int | None = None,
        return_latent: bool | None = None,
        **generate_kwargs,
    ):
        unknown = sorted(set(generate_kwargs) - set(GENERATE_PARAMETERS))
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unknown parameter(s) {unknown}; generation parameters are "
                f"{list(GENERATE_PARAMETERS)}, plus seed, steps, num_posterior_samples and return_latent"
            )
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        postprocess: dict[str, Any] = {}
        if steps is not None:
            if steps < 2:
                raise ValueError(f"steps must be >= 2 (both end points are included), got {steps}")
            forward["steps"] = steps
        if seed is not None:
            forward["seed"] = seed
        if num_posterior_samples is not None:
            if num_posterior_samples < 0:
                raise ValueError(f"num_posterior_samples must be >= 0, got {num_posterior_samples}")
            forward["num_posterior_samples"] = num_posterior_samples
        if generate_kwargs:
            forward["generate_kwargs"] = generate_kwargs
        if return_latent is not None:
            postprocess["return_latent"] = return_latent
        return preprocess, forward, postprocess

    # ------------------------------------------------------------------ the three input kinds
    def preprocess(self, inputs) -> dict[str, Any]:
        if isinstance(inputs, bool):
            raise TypeError("give an int (number of prior samples), a sentence, or a (start, end) pair of sentences")
        if isinstance(inputs, int):
            if inputs < 1:
                raise ValueError(f"the number of prior samples must be >= 1, got {inputs}")
            return {"mode": "sample", "num_samples": inputs}
        if isinstance(inputs, str):
            return {"mode": "reconstruct", "texts": [inputs], **self._tokenize([inputs])}
        if isinstance(inputs, dict) and set(inputs) == {"start", "end"}:
            inputs = (inputs["start"], inputs["end"])
        if isinstance(inputs, (tuple, list)) and len(inputs) == 2 and all(isinstance(x, str) for x in inputs):
            return {"mode": "homotopy", "texts": list(inputs), **self._tokenize(list(inputs))}
        raise TypeError(
            "give an int (number of prior samples), a sentence, or a (start, end) pair of sentences, "
            f"not {type(inputs).__name__}"
        )

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(texts, padding=True, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _forward(
        self,
        model_inputs: dict[str, Any],
        seed: int | None = None,
        steps: int = 5,
        num_posterior_samples: int = 0,
        generate_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        model, mode = self.model, model_inputs["mode"]
        generate_kwargs = dict(generate_kwargs or {}, return_dict_in_generate=True)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=model.device).manual_seed(seed)
            generate_kwargs["generator"] = generator
        is_rnnlm = model.config.is_rnnlm
        if mode == "sample":
            n = model_inputs["num_samples"]
            latent = None if is_rnnlm else model.sample_prior(n, generator=generator)
            out = model.generate(latent=latent, num_samples=n, **generate_kwargs)
            return {"mode": mode, "sequences": out.sequences, "latent": latent}
        if is_rnnlm:
            raise ValueError(f"this model is an RNNLM (latent_size=0): it has no latent space to {mode} with")
        mu, logvar = model.encode(model_inputs["input_ids"], model_inputs["attention_mask"])
        if mode == "homotopy":
            latent = model.interpolate(mu[0], mu[1], steps)
            out = model.generate(latent=latent, **generate_kwargs)
            return {"mode": mode, "sequences": out.sequences, "latent": latent}
        codes = [mu]
        if num_posterior_samples:
            noise = torch.randn(
                (num_posterior_samples, mu.shape[-1]), generator=generator, device=mu.device, dtype=mu.dtype
            )
            codes.append(mu + noise * torch.exp(0.5 * logvar))
        latent = torch.cat(codes)
        out = model.generate(latent=latent, **generate_kwargs)
        return {"mode": mode, "sequences": out.sequences, "latent": latent, "texts": model_inputs["texts"]}

    def postprocess(self, model_outputs: dict[str, Any], return_latent: bool = False):
        texts = self.tokenizer.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        latent = model_outputs["latent"]
        codes = [None] * len(texts) if latent is None else latent.tolist()
        mode = model_outputs["mode"]
        if mode == "sample":
            rows = [{"generated_text": text} for text in texts]
        elif mode == "homotopy":
            steps = len(texts)
            rows = [{"alpha": i / (steps - 1), "generated_text": text} for i, text in enumerate(texts)]
        else:
            result = {
                "input_text": model_outputs["texts"][0],
                "generated_text": texts[0],
                "posterior_samples": texts[1:],
            }
            if return_latent:
                result["latent"] = codes[0]
                result["posterior_sample_latents"] = codes[1:]
            return result
        if return_latent:
            for row, code in zip(rows, codes):
                row["latent"] = code
        return rows


def register() -> None:
    """Register the "sentence-vae" task with `transformers.pipelines.PIPELINE_REGISTRY` (idempotent)."""
    if TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=SentenceVAEPipeline, pt_model=AutoModel)


register()
