"""The sentence VAE of Bowman et al. (2016) as a `transformers` model.

Encoder: a single-layer (optionally bidirectional) LSTM whose final state gives the mean and
log-variance of a diagonal Gaussian q(z|x). Decoder: a single-layer LSTM language model whose initial
state is a linear map of z (optionally z is also concatenated to every input, or to every input and
every output). `latent_size=0` is the RNNLM baseline. Inputs are `<bos> w_1 ... w_n <eos>` as produced
by `SentenceVAETokenizerFast`; the decoder reads `<bos> w_1 ... w_n` and predicts `w_1 ... w_n <eos>`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationConfig, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.generation import BaseStreamer, LogitsProcessorList, StoppingCriteriaList
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput, logging

from .configuration_sentence_vae import SentenceVAEConfig
from .decoding import (
    GreedyStepFn,
    SearchResult,
    StepFn,
    TopKStepFn,
    beam_search,
    reverse_tokens,
    sample_search,
)
from .generation_settings import (
    OUTPUT_LAYER_DTYPES,
    build_logits_processors,
    resolve_generation_config,
    suppressed_ids_only,
)
from .kernels import (
    PACKED_MAX_ROWS,
    PACKED_MIN_ROWS,
    SCREEN_MIN_ROWS,
    WORD_GATES_MIN_ROWS,
    PackedWeight,
    WordGateLSTM,
    exporting,
    finite_bias_bound,
    greedy_tokens,
    lstm_step,
    native_bfloat16_cpu,
    output_layer_nll,
    packed_lstm_gates,
    run_lstm,
    screened_greedy_tokens,
    top_k_tokens,
)
from .latent import gaussian_kl, interpolate, reparameterize, sample_standard_normal

logger = logging.get_logger(__name__)


@dataclass
class SentenceVAEOutput(ModelOutput):
    """Output of [`SentenceVAEModel.forward`].

    Args:
        loss: `reconstruction_loss + kl_weight * kl` (with free bits, the KL term is the clamped one), plus
            `config.bag_of_words_weight * bag_of_words_loss` when that loss is on.
        reconstruction_loss: -log p(x|z) summed over the tokens of a sentence (end of sentence included),
            averaged over the batch (unweighted).
        kl: KL(q(z|x) || p(z)) per sentence, averaged over the batch (unweighted; 0 for the RNNLM).
        bag_of_words_loss: with `config.bag_of_words_weight > 0`, the bag-of-words loss on z: -sum over the
            target tokens of log softmax(W z + b), averaged over the batch (unweighted; `loss` adds it weighted).
        logits: `(B, T-1, V)` next-token logits at every decoder position (only when `return_logits`).
        mu, logvar: `(B, Z)` posterior parameters (None for the RNNLM).
        z: `(B, Z)` the latent code the decoder was conditioned on.
        reconstruction_per_sentence, kl_per_sentence: `(B,)` the per-sentence terms before averaging.
        num_tokens: number of predicted tokens in the batch (words + end of sentence).
        hidden_states: with `output_hidden_states=True`, the decoder's `(B, T-1, D)` states at every position it
            reads (`<bos> w_1 ... w_n`): its input (embeddings, with z appended when injected at the inputs) and
            its LSTM's output, as `transformers`' recurrent models return them (embeddings, then each layer).
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    bag_of_words_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
    z: torch.Tensor | None = None
    reconstruction_per_sentence: torch.Tensor | None = None
    kl_per_sentence: torch.Tensor | None = None
    num_tokens: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class SentenceVAEGenerationOutput(ModelOutput):
    """Output of [`SentenceVAEModel.generate`] with `return_dict_in_generate=True`.

    Args:
        sequences: `(B * num_return_sequences, L)` generated ids in reading order, end of sentence
            included, right-padded with `pad_token_id` (no `<bos>`).
        sequences_scores: `(B * num_return_sequences,)` ranking scores: the sum of the (processed)
            log-probabilities, length-penalised for beam search.
        scores: with `output_scores=True`, one `(B * num_return_sequences, V)` tensor per generation step
            (`(B * num_beams, V)` for beam search): the processed log-probabilities each step chose from, in the
            decoder's order (right to left for `right_to_left` models); rows that have ended hold 0 for `<pad>`.
            `model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)` gives each token's score.
        beam_indices: with `output_scores=True` (or `output_logits=True`) in beam search,
            `(B * num_return_sequences, L)` the row of `scores[t]` each returned sequence came from at step `t` (as in
            `transformers`).
        logits: with `output_logits=True`, one tensor per step in the layout of `scores`: the model's own
            log-probabilities, before logits processors, suppressed tokens, length constraints and sampling warpers
            (its logits normalised by a log-softmax: `transformers` keeps the raw logits, which differ from these by
            a constant per row, so softmaxes and `compute_transition_scores(..., normalize_logits=True)` agree).
        log_probs: `(B * num_return_sequences,)` sum of the generated tokens' log-probabilities under the model
            (unaffected by logits processors, suppressed tokens or sampling warpers).
        latent: the `(B, Z)` codes that were decoded (None for the RNNLM): the given ones, the posterior means (or
            samples) of `input_ids`, or the prior samples.
    """

    sequences: torch.Tensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    latent: torch.Tensor | None = None
    logits: tuple[torch.Tensor, ...] | None = None


def bag_of_words_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B,)` bag-of-words negative log-likelihoods: -sum over the positions where `mask` is true of
    `log_softmax(logits)[b, targets[b, t]]`, for one `(B, V)` distribution per sentence and `(B, T)` targets."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(1, targets.masked_fill(~mask.bool(), 0))
    return -torch.where(mask.bool(), picked, 0.0).sum(1)


def _append_latent(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`x` `(B, D)` or `(B, T, D)` with z `(B, Z)` appended to its last axis (at every time step)."""
    if x.dim() == 3:
        z = z.unsqueeze(1).expand(-1, x.shape[1], -1)
    return torch.cat([x, z.to(x.dtype)], -1)


def _keep_mask(buffer: torch.Tensor, p: float) -> torch.Tensor:
    """An inverted-dropout mask the shape of `buffer`: 1/(1-p) with probability 1-p, else 0."""
    return buffer.bernoulli_(1.0 - p).div_(1.0 - p)


class SearchSteps(NamedTuple):
    """The step functions of one search (see [`SentenceVAEModel.search_steps`]): `step` gives the `(N, V)`
    log-probabilities (`decoding`'s `step_fn`), `greedy` and `top_k` choose tokens straight from the output layer
    (`greedy_step_fn`, `top_k_step_fn`)."""

    step: StepFn
    greedy: GreedyStepFn
    top_k: TopKStepFn


class Highway(nn.Module):
    """A stack of highway layers: y = g * relu(W_h x) + (1 - g) * x with gate g = sigmoid(W_g x)."""

    def __init__(self, size: int, num_layers: int):
        super().__init__()
        self.transforms = nn.ModuleList(nn.Linear(size, 2 * size) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.transforms:
            hidden, gate = layer(x).chunk(2, dim=-1)
            gate = torch.sigmoid(gate)
            x = gate * F.relu(hidden) + (1.0 - gate) * x
        return x


def right_padded(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` with left-padded rows (padding first, as a tokenizer with
    `padding_side="left"` makes them) moved to the front of their row and padded on the right with `pad_token_id`;
    a batch without left padding is returned as it is."""
    mask = attention_mask.bool()
    start = (~mask).long().cumprod(-1).sum(-1)  # each row's leading padding
    if _tracing() or not bool(start.any()):
        return input_ids, attention_mask
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    source = (positions + start.unsqueeze(-1)).clamp(max=input_ids.shape[1] - 1)
    kept = positions < mask.sum(-1, keepdim=True)
    return input_ids.gather(1, source).masked_fill(~kept, pad_token_id), kept.to(attention_mask.dtype)


def _tracing() -> bool:
    """True under `torch.compile` / `torch.export`, where checks that read tensor values cannot run."""
    return torch.compiler.is_compiling() or exporting()


class SentenceVAEPreTrainedModel(PreTrainedModel):
    """The weights' initialisation and the encoder side, q(z|x), of the sentence VAE models: the inference network
    (its modules built by `_build_encoder` under the same names in every model, so that a VAE's checkpoint loads into
    [`SentenceVAEForSequenceClassification`]), the input checks and `encode`."""

    config_class = SentenceVAEConfig
    base_model_prefix = "sentence_vae"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = []

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.LSTM):
            # Xavier-uniform weights, zero biases (what `transformers` draws for an LSTM since 5.9), written here so
            # that the model's initialisation, and `reinitialize_decoder`, do not depend on the `transformers` release
            # (before 5.9 it left LSTMs to torch's default, and the warm start then kept the decoder's LSTM).
            for name, param in module.named_parameters():
                (init.xavier_uniform_ if "weight" in name else init.zeros_)(param)
        else:
            super()._init_weights(module)
        if module is self and hasattr(self, "posterior_mean_shift"):
            init.zeros_(self.posterior_mean_shift)

    def _build_encoder(self, config: SentenceVAEConfig) -> None:
        """The modules of q(z|x) besides the shared word embedding: the encoder's own embedding (without
        `share_embeddings`), the encoder LSTM, its highway, the posterior layer and BN-VAE's normalisation."""
        if not config.share_embeddings:
            self.encoder_embed_tokens = nn.Embedding(
                config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id
            )
        self.encoder = nn.LSTM(
            config.embedding_size,
            config.encoder_hidden_size,
            batch_first=True,
            bidirectional=config.bidirectional_encoder,
        )
        encoder_out = config.encoder_hidden_size * (2 if config.bidirectional_encoder else 1)
        self.encoder_highway = Highway(encoder_out, config.num_highway_layers)
        self.posterior = nn.Linear(encoder_out, 2 * config.latent_size)
        if config.posterior_mean_bn_scale > 0:
            # BN-VAE (Zhu et al., 2020): batch-normalised means with a fixed scale and a learned shift.
            self.posterior_mean_norm = nn.BatchNorm1d(config.latent_size, affine=False)
            self.posterior_mean_shift = nn.Parameter(torch.zeros(config.latent_size))

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    def _check_float_modules(self) -> None:
        """A `ValueError` where a layer was swapped for a quantized one (e.g. by `torch.ao.quantization.
        quantize_dynamic`): the model reads its layers' float weights."""
        quantized = {
            name: type(module).__qualname__
            for name, module in self.named_children()
            if ".quantized" in type(module).__module__
        }
        if quantized:
            hint = (
                "; for faster CPU decoding, generate(..., output_layer_dtype='mixed') keeps the float32 sentences"
                if isinstance(self, GenerationMixin)
                else ""
            )
            raise ValueError(f"{type(self).__name__} runs float layers, got quantized ones: {quantized}{hint}")

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Check that `input_ids` `(B, T)` are `<bos> words <eos>` rows (no `<bos>` or `<eos>` among the words),
        right-padded, of ids in the vocabulary (a `ValueError` naming the offending row or id otherwise); returns the boolean attention mask (inferred from
        padding if absent)."""
        attention_mask = self._attention_mask(input_ids, attention_mask)
        if _tracing():  # the checks below read tensor values; a traced graph is checked where it runs eagerly
            return attention_mask
        lengths = attention_mask.sum(-1)
        bad = (input_ids[:, 0] != self.config.bos_token_id) | (
            input_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1) != self.config.eos_token_id
        )
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            if not bool(attention_mask[row, 0]) and bool(attention_mask[row].any()):
                raise ValueError(
                    f"row {row} of input_ids is left-padded ({input_ids[row].tolist()}): scoring needs right-padded "
                    "rows, <bos> words <eos> then padding (tokenizer.padding_side = 'right', the SentenceVAE "
                    "tokenizer's default); generate and encode accept either"
                )
            raise ValueError(
                f"each row of input_ids must be <bos> words <eos> (ids {self.config.bos_token_id} ... "
                f"{self.config.eos_token_id}) followed by padding, as the SentenceVAE tokenizer produces; "
                f"row {row} is {input_ids[row].tolist()}"
            )
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        inside = (positions > 0) & (positions < (lengths - 1).unsqueeze(-1))
        special = (input_ids == self.config.bos_token_id) | (input_ids == self.config.eos_token_id)
        if bool((special & inside).any()):
            row = int((special & inside).any(-1).nonzero()[0, 0])
            raise ValueError(
                f"row {row} of input_ids holds <bos> or <eos> inside its sentence ({input_ids[row].tolist()}): one "
                "sentence per row (a sentence pair? the tokenizer writes (a, b) as <bos> a <eos> b <eos>)"
            )
        vocab_max = int(input_ids.max())
        if vocab_max >= self.config.vocab_size or int(input_ids.min()) < 0:
            raise ValueError(
                f"input_ids contain id {vocab_max} outside the model's vocabulary of size {self.config.vocab_size}: "
                "the tokenizer does not match the model"
            )
        return attention_mask

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior q(z|x): returns `(mu, logvar)`, each `(B, Z)`. Tokenize texts with the tokenizer first
        (`tokenizer(texts, padding=True, return_tensors="pt")`; right- or left-padded)."""
        if self.config.is_rnnlm:
            raise ValueError("this model is an RNNLM (latent_size=0): it has no encoder")
        self._check_float_modules()
        input_ids, attention_mask = self._right_padded(input_ids, attention_mask)
        attention_mask = self.check_inputs(input_ids, attention_mask)
        return self._encode(input_ids, attention_mask)

    def _attention_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The boolean `(B, T)` attention mask of `input_ids` (inferred from padding if absent), after checking the
        shapes."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, length) tensor, got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] < 2:
            raise ValueError(
                f"input_ids must hold at least <bos> and <eos> (length >= 2), got length {input_ids.shape[1]}"
            )
        if attention_mask is None:
            return input_ids.ne(self.config.pad_token_id)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got "
                f"{tuple(attention_mask.shape)}"
            )
        return attention_mask.bool()

    def _right_padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[`right_padded`] with this model's padding id: left-padded rows, as `generate` and `encode` accept them."""
        mask = self._attention_mask(input_ids, attention_mask)
        return right_padded(input_ids, mask, self.config.pad_token_id)

    def _encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, embedded: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        embed = self.encoder_embed_tokens if hasattr(self, "encoder_embed_tokens") else self.embed_tokens
        lengths = attention_mask.sum(-1)
        embedded = embed(input_ids) if embedded is None else embedded
        if self.config.bidirectional_encoder:
            packed = nn.utils.rnn.pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = run_lstm(self.encoder, packed)
            final = torch.cat([h_n[0], h_n[1]], dim=-1)
        else:
            # A left-to-right LSTM's output at the last real token is its final state for that row.
            outputs, _ = run_lstm(self.encoder, embedded)
            index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
            final = outputs.gather(1, index).squeeze(1)
        mu, raw = self.posterior(self.encoder_highway(final)).chunk(2, dim=-1)
        if self.config.posterior_mean_bn_scale > 0:
            mu = self.posterior_mean_norm(mu) * self.config.posterior_mean_bn_scale + self.posterior_mean_shift
        if self.config.variance_parameterization == "softplus":
            logvar = torch.log(F.softplus(raw) + 1e-6)
        else:
            logvar = raw
        return mu, logvar


class SentenceVAEModel(SentenceVAEPreTrainedModel, GenerationMixin):
    """The sentence VAE (or, with `latent_size=0`, its RNNLM baseline).

    It inherits `GenerationMixin` for `transformers`' generation plumbing (`can_generate()`, `generation_config`
    loaded and saved as `generation_config.json`, `compute_transition_scores`) and replaces `generate` with its own
    batched search over the LSTM decoder, which follows `GenerationMixin.generate`'s conventions.

    Example:

    ```python
    >>> from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel, build_tokenizer
    >>> tokenizer = build_tokenizer(["the cat sat .", "a dog ran ."])
    >>> model = SentenceVAEModel(SentenceVAEConfig(vocab_size=len(tokenizer), embedding_size=16,
    ...     encoder_hidden_size=16, decoder_hidden_size=16, latent_size=4))
    >>> batch = tokenizer(["the cat sat ."], return_tensors="pt")
    >>> out = model(**batch)  # out.loss, out.reconstruction_loss, out.kl, out.z, ...
    >>> reconstructed = tokenizer.batch_decode(model.generate(**batch), skip_special_tokens=True)
    >>> sampled = tokenizer.batch_decode(model.generate(num_samples=2), skip_special_tokens=True)
    ```
    """

    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}
    # The loss is a mean per sentence that takes no `num_items_in_batch`: `transformers.Trainer` reads this and scales
    # the loss for gradient accumulation itself (for a forward with `**kwargs` and no such attribute it would pass
    # `num_items_in_batch` and take the loss as normalised by it).
    accepts_loss_kwargs = False

    def __init__(self, config: SentenceVAEConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        latent = config.latent_size
        if not config.is_rnnlm:
            self._build_encoder(config)
            self.latent_highway = Highway(latent, config.num_highway_layers)
            self.latent_to_state = nn.Linear(latent, 2 * config.decoder_hidden_size)
            if config.bag_of_words_weight > 0:
                # Bag-of-words loss (Zhao et al., 2017): z alone scores the sentence's words, order ignored.
                self.bag_of_words_head = nn.Linear(latent, config.vocab_size)
        decoder_in = config.embedding_size + (latent if self._latent_in("inputs") else 0)
        self.decoder = nn.LSTM(decoder_in, config.decoder_hidden_size, batch_first=True)
        output_features = config.decoder_hidden_size + (latent if self._latent_in("outputs") else 0)
        if config.tie_word_embeddings and config.embedding_size != output_features:
            # Tying an output layer to an embedding of another width goes through a learned projection
            # (Press & Wolf, 2017; Inan et al., 2017): logits = E (P h) + b.
            self.output_projection = nn.Linear(output_features, config.embedding_size, bias=False)
            output_features = config.embedding_size
        self.lm_head = nn.Linear(output_features, config.vocab_size)
        # <pad> and <bos> are never targets: they get probability zero.
        self.register_buffer("logit_mask", self._never_predicted_mask(config), persistent=False)
        self.post_init()

    def _latent_in(self, where: str) -> bool:
        """Whether z is concatenated to every decoder `"inputs"` or `"outputs"` (besides setting its initial state)."""
        injection = self.config.latent_injection
        if where == "outputs":
            return injection == "initial_state_inputs_and_outputs"
        return injection in ("initial_state_and_inputs", "initial_state_inputs_and_outputs")

    @staticmethod
    def _never_predicted_mask(config: SentenceVAEConfig, vocab_size: int | None = None) -> torch.Tensor:
        """`(V,)`: -inf for the ids the model never predicts (`<pad>`, `<bos>`), 0 elsewhere."""
        mask = torch.zeros(config.vocab_size if vocab_size is None else vocab_size)
        mask[[config.pad_token_id, config.bos_token_id]] = float("-inf")
        return mask

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:  # non-persistent buffers are not loaded from checkpoints: rebuild them
            init.copy_(self.logit_mask, self._never_predicted_mask(self.config))

    def decoder_modules(self) -> list[nn.Module]:
        """The modules that make up p(x | z) and nothing of q(z | x): the decoder LSTM, the map from z to its initial
        state, the output layer and its projection. The word embedding is left out when the encoder reads it too
        (`share_embeddings`) or the output layer is tied to it."""
        names = ["decoder", "latent_highway", "latent_to_state", "output_projection"]
        if not self.config.tie_word_embeddings:
            names.append("lm_head")
        if hasattr(self, "encoder_embed_tokens"):
            names.append("embed_tokens")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    def inference_parameters(self) -> list[nn.Parameter]:
        """The parameters of q(z | x) alone (nothing of p(x | z) reads them): the encoder LSTM, its highway, the
        posterior layer (and BN-VAE's shift), and the encoder's own embedding when it has one (`share_embeddings=False`).
        Empty for the RNNLM."""
        names = ["encoder_embed_tokens", "encoder", "encoder_highway", "posterior"]
        params = [p for name in names if hasattr(self, name) for p in getattr(self, name).parameters()]
        if hasattr(self, "posterior_mean_shift"):
            params.append(self.posterior_mean_shift)
        return params

    @torch.no_grad()
    def reinitialize_decoder(self, seed: int) -> None:
        """Draw the decoder's weights afresh (as at construction, from a generator seeded with `seed`), keeping the
        encoder: the second phase of an encoder warm start (Li et al., 2019). With a tied output layer its bias is
        reset and its weight, the shared embedding, kept."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules = self.decoder_modules()
            for module in modules:
                for param in module.parameters():
                    param._is_hf_initialized = False
                module.apply(self._init_weights)
            if self.config.tie_word_embeddings:
                self.lm_head.bias.zero_()

    # ----------------------------------------------------------------- embeddings (transformers API)
    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        """`transformers`' resize of the embedding and the output layer, plus what else is sized by the vocabulary:
        the encoder's own embedding (when not shared), the bag-of-words layer and the never-predicted mask."""
        cfg = self.config
        if new_num_tokens is not None and new_num_tokens <= max(cfg.special_token_ids.values()):
            raise ValueError(
                f"new_num_tokens={new_num_tokens} would drop special tokens: the vocabulary must keep ids "
                f"{cfg.special_token_ids}"
            )
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.weight.shape[0]
        if hasattr(self, "encoder_embed_tokens"):
            resized = self._get_resized_embeddings(self.encoder_embed_tokens, size, mean_resizing=mean_resizing)
            resized.requires_grad_(self.encoder_embed_tokens.weight.requires_grad)
            self.encoder_embed_tokens = resized
        if hasattr(self, "bag_of_words_head"):
            self.bag_of_words_head = self._get_resized_lm_head(
                self.bag_of_words_head, size, mean_resizing=mean_resizing
            )
        mask = self._never_predicted_mask(cfg, size).to(self.logit_mask.device)
        self.register_buffer("logit_mask", mask, persistent=False)
        return embeddings

    # ----------------------------------------------------------------- building blocks
    def _initial_state(
        self, z: torch.Tensor | None, batch_size: int, device, dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's initial (h, c), each `(B, H)`: a linear map of z, or zeros for the RNNLM."""
        if z is None:
            zeros = torch.zeros(batch_size, self.config.decoder_hidden_size, device=device, dtype=dtype)
            return zeros, zeros
        h, c = self.latent_to_state(self.latent_highway(z)).chunk(2, dim=-1)
        return h.contiguous(), c.contiguous()

    def initial_decoder_state(
        self, latent: torch.Tensor | None, batch_size: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The state decoding starts from, as [`decoder_step`] takes it: `(h, c, z)` for a VAE, whose initial
        LSTM state `(h, c)` is a map of the codes `latent` `(B, Z)` (and which reads z again at each step where z is
        injected at the inputs or outputs); `(h, c)` of zeros with `batch_size` rows for the RNNLM (`latent=None`)."""
        if latent is None:
            if not self.config.is_rnnlm:
                raise ValueError(f"this model is a VAE: pass latent codes of shape (B, {self.config.latent_size})")
            if batch_size is None:
                raise ValueError("an RNNLM's initial decoder state needs batch_size")
            return self._initial_state(None, batch_size, self.device, self.dtype)
        if self.config.is_rnnlm:
            raise ValueError("latent was given but this model is an RNNLM (latent_size=0)")
        latent = latent.to(device=self.device, dtype=self.dtype)
        return (*self._initial_state(latent, latent.shape[0], self.device, self.dtype), latent)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        """`config.dropout` on `(B, T, D)` decoder activations in training mode: a fresh mask per element, or
        with `config.locked_dropout` one `(B, 1, D)` mask shared by every time step."""
        p = self.config.dropout
        if not self.training or p == 0.0:
            return x
        if not self.config.locked_dropout:
            return F.dropout(x, p, training=True)
        return x * _keep_mask(x.new_empty(x.shape[0], 1, x.shape[-1]), p)

    def _embedding_dropout(self, ids: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """`config.embedding_dropout` in training mode: zero every occurrence of a random subset of word types
        (one draw over the vocabulary per call), scaling the kept ones by 1/(1-p)."""
        p = self.config.embedding_dropout
        if not self.training or p == 0.0:
            return embedded
        keep = _keep_mask(embedded.new_empty(self.config.vocab_size), p)
        return embedded * keep[ids].unsqueeze(-1)

    def _decoder_inputs(
        self, ids: torch.Tensor, z: torch.Tensor | None, embedded: torch.Tensor | None = None
    ) -> torch.Tensor:
        embedded = self.embed_tokens(ids) if embedded is None else embedded
        embedded = self._dropout(self._embedding_dropout(ids, embedded))
        if z is not None and self._latent_in("inputs"):
            embedded = _append_latent(embedded, z)
        return embedded

    def _run_decoder(
        self, ids: torch.Tensor, z: torch.Tensor | None, embedded: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The output layer's input features `(B, T, F)` after reading `ids` `(B, T)` (whose embeddings may be
        given): the decoder's hidden states, with z appended to each when it is injected at the outputs; and the
        decoder LSTM's `(inputs, outputs)`."""
        h0, c0 = self._initial_state(z, ids.shape[0], ids.device, self.embed_tokens.weight.dtype)
        inputs = self._decoder_inputs(ids, z, embedded)
        weight_drop = self.config.decoder_weight_drop if self.training else 0.0
        outputs, _ = run_lstm(self.decoder, inputs, (h0.unsqueeze(0), c0.unsqueeze(0)), weight_drop)
        return self._output_features(self._dropout(outputs), z), (inputs, outputs)

    def _output_features(self, hidden: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Decoder states `(B, [T,] H)`, with z `(B, Z)` appended to each when it is injected at the outputs."""
        return _append_latent(hidden, z) if z is not None and self._latent_in("outputs") else hidden

    def _output_layer(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(features, weight)` with next-token logits = features @ weight.T + bias, for decoder states `hidden`.

        A tied output layer of another width (`output_projection` P, `(E, H)`) computes E (P h). For many rows it
        is cheaper to fold P into the weight once, (E P) h, which keeps the `(N, V)` product at the decoder's
        width (H) instead of the embedding's (E); for a few rows (a decoding step) h is projected instead."""
        projection = getattr(self, "output_projection", None)
        if projection is None:
            return hidden, self.lm_head.weight
        if self._fold_projection(hidden.numel() // hidden.shape[-1]):
            return hidden, self.lm_head.weight @ projection.weight
        return projection(hidden), self.lm_head.weight

    def _fold_projection(self, rows: int) -> bool:
        """Whether, for `rows` rows, folding the output projection into the tied weight (one `(V, E) @ (E, H)`
        product, then a product at width H) costs fewer operations than projecting the rows (`(rows, H) @ (H, E)`,
        then a product at width E)."""
        vocab, width = self.lm_head.weight.shape
        hidden_size = self.output_projection.weight.shape[1]
        return vocab * width * hidden_size + rows * hidden_size * vocab < rows * width * (hidden_size + vocab)

    def _output_bias(self, fill: float | None = None) -> torch.Tensor:
        """The output bias with `fill` (default -inf) at the never-predicted ids (`<pad>`, `<bos>`)."""
        bias = self.lm_head.bias
        if fill is None or fill == float("-inf"):
            return bias + self.logit_mask.to(bias.dtype)
        return bias.masked_fill(self.logit_mask.isinf(), fill)

    def _logits(self, hidden: torch.Tensor, finite: bool = False) -> torch.Tensor:
        """Next-token logits; `<pad>` and `<bos>` get -inf through the bias (a `(V,)` op, not `(N, V)`), or with
        `finite=True` the smallest number of the dtype the logits are computed in (what `forward` returns)."""
        features, weight = self._output_layer(hidden)
        fill = None
        if finite:
            device = features.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            fill = torch.finfo(dtype).min
        return F.linear(features, weight, self._output_bias(fill))

    def word_dropout(
        self,
        ids: torch.Tensor,
        keep_rate: float,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Replace word tokens (not padding, `<bos>` or `<eos>`) by `<unk>` with probability `1 - keep_rate`.

        `noise` (uniform in [0, 1), the shape of `ids`) supplies the randomness explicitly: a word is kept
        where `noise < keep_rate`."""
        if keep_rate >= 1.0:
            return ids
        cfg = self.config
        is_word = (ids != cfg.pad_token_id) & (ids != cfg.bos_token_id) & (ids != cfg.eos_token_id)
        if keep_rate <= 0.0:
            drop = is_word
        else:
            if noise is None:
                noise = torch.rand(ids.shape, device=ids.device, generator=generator)
            keep = noise[..., : ids.shape[-1]] < keep_rate
            drop = is_word & ~keep
        return ids.masked_fill(drop, cfg.unk_token_id)

    def to_decoder_order(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`<bos> words <eos>` rows in the order the decoder reads them: for right-to-left models the words between
        `<bos>` and `<eos>` reversed (the operation is its own inverse), else unchanged."""
        if not self.config.right_to_left:
            return ids
        return reverse_tokens(ids, attention_mask.sum(-1) - 2, offset=1)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        word_keep_rate: float | None = None,
        free_bits: float = 0.0,
        latent: torch.Tensor | None = None,
        sample_latent: bool | None = None,
        return_logits: bool = True,
        generator: torch.Generator | None = None,
        latent_noise: torch.Tensor | None = None,
        word_dropout_noise: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SentenceVAEOutput | tuple:
        """Encode, take z (a posterior sample in training mode, the posterior mean in evaluation mode), decode, and
        score.

        Args:
            input_ids: `(B, T)` `<bos> w_1 ... w_n <eos>` right-padded with `<pad>`.
            attention_mask: `(B, T)`; inferred from padding when None.
            labels: optional `(B, T)` targets aligned with `input_ids` (the autoencoder's target is the input
                itself, which is used when None); positions set to `-100` are ignored.
            kl_weight: weight of the KL term in `loss` (the annealing schedule's value).
            word_keep_rate: word-dropout keep rate; defaults to `config.word_keep_rate` in training mode and
                1 in evaluation mode, except that a keep rate of 0 (the inputless decoder) always applies.
            free_bits: minimum KL per latent dimension (nats, batch-averaged) in the loss (Kingma et al.,
                2016); 0 disables it. Reported `kl` stays the true KL.
            latent: decode from this `(B, Z)` code instead of encoding `input_ids` (no KL term then).
            sample_latent: True draws z from q(z|x) (the single-sample bound estimate), False uses the posterior mean.
                Default: sample in training mode (or when `latent_noise` is given), the mean in evaluation mode, so
                an evaluation-mode forward is deterministic.
            return_logits: also return the full `(B, T-1, V)` logits (finite: the never-predicted `<pad>` and `<bos>`
                get the dtype's smallest value). Training sets it to False so that the output layer is evaluated
                only at non-padding positions.
            generator: random generator for z and word dropout (reproducible evaluation).
            latent_noise: `(B, Z)` standard-normal noise for the reparameterisation z = mu + sigma * noise,
                instead of drawing it (the training loop draws it per global batch so that results do not
                depend on how a batch is split across processes).
            word_dropout_noise: `(B, >= T-1)` uniform noise deciding word dropout (a word is kept where
                noise < keep rate), instead of drawing it.
            output_hidden_states: also return the decoder's `hidden_states` (default `config.output_hidden_states`).
            return_dict: return a [`SentenceVAEOutput`] (default `config.return_dict`); False returns its non-None
                fields as a tuple.
        """
        if kwargs:
            logger.warning_once(f"SentenceVAEModel.forward ignores unexpected arguments: {sorted(kwargs)}")
        self._check_float_modules()
        cfg = self.config
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        if sample_latent is None:
            sample_latent = self.training or latent_noise is not None
        output_hidden_states = cfg.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = cfg.return_dict if return_dict is None else return_dict
        attention_mask = self.check_inputs(input_ids, attention_mask)
        batch_size = input_ids.shape[0]

        mu = logvar = None
        z = latent
        # Encoder and decoder read the same (shared) embedding table: one lookup serves both (the decoder's
        # inputs are the encoder's, shifted, with dropped words replaced by <unk>), so the backward builds one
        # dense (V, E) gradient instead of two plus their sum (~6% of a PTB training step at batch 32).
        one_lookup = (
            not cfg.is_rnnlm and z is None and not cfg.right_to_left and not hasattr(self, "encoder_embed_tokens")
        )
        encoder_embedded = unk_embedding = None
        if one_lookup:
            unk = input_ids.new_full((1,), cfg.unk_token_id)
            table = self.embed_tokens(torch.cat([input_ids.reshape(-1), unk]))
            encoder_embedded, unk_embedding = table[:-1].view(*input_ids.shape, -1), table[-1]
        if not cfg.is_rnnlm and z is None:
            mu, logvar = self._encode(input_ids, attention_mask, encoder_embedded)
            if not sample_latent:
                z = mu
            elif latent_noise is not None:
                z = mu + torch.exp(0.5 * logvar) * latent_noise.to(mu.dtype)
            else:
                z = reparameterize(mu, logvar, generator=generator)
        elif cfg.is_rnnlm and latent is not None:
            raise ValueError("latent was given but this model is an RNNLM (latent_size=0)")
        elif z is not None and z.shape != (batch_size, cfg.latent_size):
            raise ValueError(f"latent must have shape ({batch_size}, {cfg.latent_size}), got {tuple(z.shape)}")

        ordered = self.to_decoder_order(input_ids, attention_mask)
        if labels is None:
            targets = ordered[:, 1:]
            target_mask = attention_mask[:, 1:]
        else:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}"
                )
            labels = self.to_decoder_order(labels, attention_mask)
            targets = labels[:, 1:]
            target_mask = attention_mask[:, 1:] & (targets != -100)
        keep_rate = cfg.word_keep_rate if word_keep_rate is None else word_keep_rate
        if not (0.0 <= keep_rate <= 1.0):
            raise ValueError(f"word_keep_rate must be in [0, 1], got {keep_rate}")
        if not self.training and keep_rate > 0.0:
            keep_rate = 1.0
        decoder_ids = self.word_dropout(ordered[:, :-1], keep_rate, generator=generator, noise=word_dropout_noise)
        decoder_embedded = None
        if one_lookup:
            dropped = (decoder_ids != ordered[:, :-1]).unsqueeze(-1)
            decoder_embedded = torch.where(dropped, unk_embedding, encoder_embedded[:, :-1])
        hidden, decoder_states = self._run_decoder(decoder_ids, z, decoder_embedded)

        # The loss: the output layer and its cross-entropy in one node, at the scored positions only.
        rows = target_mask.nonzero(as_tuple=True)
        features, weight = self._output_layer(hidden[rows])
        token_nll = output_layer_nll(features, weight, self._output_bias(), targets[rows])
        reconstruction = torch.zeros(batch_size, device=hidden.device, dtype=token_nll.dtype)
        reconstruction = reconstruction.index_add(0, rows[0], token_nll)
        logits = self._logits(hidden, finite=True) if return_logits else None

        if mu is not None:
            kl_dims = gaussian_kl(mu.float(), logvar.float())
            kl_per_sentence = kl_dims.sum(-1)
            kl_term = kl_dims.mean(0).clamp(min=free_bits).sum() if free_bits > 0 else kl_per_sentence.mean()
        else:
            kl_per_sentence = torch.zeros(batch_size, device=hidden.device)
            kl_term = kl_per_sentence.sum()
        reconstruction_loss = reconstruction.mean()
        loss = reconstruction_loss + kl_weight * kl_term
        bag_of_words_loss = None
        if hasattr(self, "bag_of_words_head"):
            logits_z = self.bag_of_words_head(z) + self.logit_mask
            bag_of_words_loss = bag_of_words_nll(logits_z, targets, target_mask).mean()
            loss = loss + cfg.bag_of_words_weight * bag_of_words_loss
        output = SentenceVAEOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            kl=kl_per_sentence.mean(),
            bag_of_words_loss=bag_of_words_loss,
            logits=logits,
            mu=mu,
            logvar=logvar,
            z=z,
            reconstruction_per_sentence=reconstruction,
            kl_per_sentence=kl_per_sentence,
            num_tokens=target_mask.sum(),
            hidden_states=decoder_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()

    def log_likelihood_given_latent(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, latent: torch.Tensor | None
    ) -> torch.Tensor:
        """log p(x | z) per sentence `(B,)` with all words supplied (evaluation; no word dropout unless the
        model is inputless). For the RNNLM pass `latent=None`: this is then the exact log-likelihood."""
        keep_rate = 0.0 if self.config.word_keep_rate == 0.0 else 1.0
        out = self.forward(
            input_ids, attention_mask, latent=latent, word_keep_rate=keep_rate, return_logits=False, return_dict=True
        )
        return -out.reconstruction_per_sentence

    # ----------------------------------------------------------------- decoding
    def decoder_step(
        self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One decoding step: the `(N, V)` next-token log-probabilities after reading the `(N,)` `tokens`, and the new
        state. `state` is `(h, c)` or `(h, c, z)`, as [`initial_decoder_state`] gives it, every tensor with `N` rows;
        the `step_fn` of the searches in `decoding`."""
        features, state = self._decoder_features(tokens, state)
        return torch.log_softmax(self._logits(features).float(), dim=-1), state

    def _decoder_features(
        self,
        tokens: torch.Tensor,
        state: tuple[torch.Tensor, ...],
        word_gates: WordGateLSTM | None = None,
        packed_gates: PackedWeight | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The LSTM step of [`decoder_step`]: the `(N, F)` output-layer features after reading `tokens`, and the new
        state; through `word_gates` (a [`kernels.WordGateLSTM`] of the decoder) when given, else `kernels.lstm_step`
        (with `packed_gates`, [`kernels.packed_lstm_gates`] of the decoder, for its steps of a few rows)."""
        h, c = state[0], state[1]
        z = state[2] if len(state) > 2 else None
        if self.config.word_keep_rate == 0.0:
            tokens = self.word_dropout(tokens, 0.0)
        if word_gates is not None:
            h, c = word_gates(tokens, h, c, z if z is not None and self._latent_in("inputs") else None)
        else:
            inputs = self._decoder_inputs(tokens.unsqueeze(1), z)
            h, c = lstm_step(self.decoder, inputs[:, 0], h, c, packed_gates)
        return self._output_features(h, z), (h, c) + (() if z is None else (z,))

    def _word_gates(self) -> WordGateLSTM | None:
        """A [`kernels.WordGateLSTM`] of the decoder for one search, where its inputs are the embeddings (and z) as
        they are: in eval mode (or without dropout) and outside autocast; else None."""
        dropout = self.training and (self.config.dropout > 0 or self.config.embedding_dropout > 0)
        autocast = torch.is_autocast_enabled(self.decoder.weight_hh_l0.device.type)
        if dropout or autocast or not isinstance(self.embed_tokens, nn.Embedding):
            return None
        latent = self.config.latent_size if self._latent_in("inputs") else 0
        return WordGateLSTM(self.decoder, self.embed_tokens.weight, latent)

    def search_steps(self, batch_size: int, output_layer_dtype: torch.dtype | str = torch.float32) -> SearchSteps:
        """The steps of one search in `decoding`, as a [`SearchSteps`]: `step` (the full distribution, for
        `step_fn`) and the fast `greedy` and `top_k` steps (`greedy_step_fn`, `top_k_step_fn`): the LSTM step of
        [`decoder_step`], then the greedy choice or the `k` best tokens straight from the output layer
        (`kernels.greedy_tokens`, `kernels.top_k_tokens`), without the `(N, V)` log-probabilities. The output layer is
        prepared once for decoding `batch_size` rows: a tied layer's projection folded into its weight where that is
        cheaper, the weight in `output_layer_dtype` (`torch.bfloat16` runs its products in bfloat16, their results
        rounded to bfloat16 before the float32 bias is added: 1.1-1.8x faster decoding on a CPU with AVX-512 BF16 in
        BENCHMARKS.md, about half the speed on CPUs without bfloat16 instructions). `"mixed"` keeps the float32
        weight and a bfloat16 copy: the greedy choice is screened with bfloat16 products and made with float32 ones
        (`kernels.screened_greedy_tokens`: the float32 choice at close to bfloat16's speed; on a CPU with bfloat16
        instructions, whose bfloat16 GEMMs accumulate in float32 as its bound assumes, else the float32 layer); the
        greedy step with log-probabilities and the top-k step use the float32 products. With "bfloat16" and "mixed"
        (on CPU, steps of `WORD_GATES_MIN_ROWS` rows or more) the LSTM step looks each word's input-side gate
        pre-activations up ([`kernels.WordGateLSTM`], computed once per word and search; in float32, summed in another
        order than `nn.LSTM`'s, so the states agree with the float32 step to rounding): "mixed" then gives the float32
        sentences, greedy and beam, except where two scores tie to within that rounding.

        On CPU, steps of `kernels.PACKED_MIN_ROWS` to `kernels.PACKED_MAX_ROWS` rows take the float32 products of the
        LSTM cell and of the output layer from oneDNN on weights packed once per search ([`kernels.PackedWeight`]),
        in the fast steps and in `step` alike (with a float32 layer), so that a search computes the same states and
        scores whichever path it takes."""
        if output_layer_dtype not in (torch.float32, torch.bfloat16, "mixed"):
            raise ValueError(
                f"output_layer_dtype must be torch.float32, torch.bfloat16 or 'mixed', got {output_layer_dtype!r}"
            )
        projection = getattr(self, "output_projection", None)
        weight = self.lm_head.weight
        if projection is not None and self._fold_projection(batch_size):
            weight, projection = weight @ projection.weight, None
        # The screen's bound assumes float32 accumulation of the bfloat16 products, as oneDNN's CPU GEMMs do (cuBLAS
        # may reduce in lower precision): elsewhere "mixed" runs the float32 layer.
        mixed = output_layer_dtype == "mixed" and weight.device.type == "cpu"
        # Without bfloat16 instructions oneDNN emulates bfloat16 products at about half the float32 speed: "mixed"
        # then skips the screen (its float32 choice and looked-up LSTM inputs stay).
        native = weight.device.type != "cpu" or native_bfloat16_cpu()
        screen = mixed and native
        if output_layer_dtype == torch.bfloat16 and not native:
            logger.warning_once(
                "output_layer_dtype='bfloat16' on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX): its "
                "products are emulated at about half the float32 speed; 'mixed' decodes the float32 sentences faster"
            )
        weight = weight.detach().to(torch.float32 if output_layer_dtype == "mixed" else output_layer_dtype)
        bias = self._output_bias().detach().float()
        vocab = weight.shape[0]
        # Made on the first step that needs them (none for a batch under 16 rows): the screen's bfloat16 weight, row
        # norms and bias bound; the word-gate lookup of the LSTM (on CPU, "bfloat16" and "mixed").
        screen_terms = functools.cache(
            lambda: (weight.to(torch.bfloat16), weight.norm(dim=-1), finite_bias_bound(bias))
        )
        word_gates = functools.cache(self._word_gates)
        low = weight.device.type == "cpu" and (mixed or output_layer_dtype == torch.bfloat16)
        # Steps of a few rows (PACKED_MIN_ROWS to PACKED_MAX_ROWS) on CPU in float32: the output layer's and the LSTM
        # cell's products by oneDNN on weights packed for it (made on the first such step: a batch-1 search has none).
        autocast = torch.is_autocast_enabled(weight.device.type)
        packed = PackedWeight(weight, bias) if PackedWeight.supports(weight) and not autocast else None
        packed_gates = None if autocast else packed_lstm_gates(self.decoder)

        def features_of(tokens, state):
            gates = word_gates() if low and tokens.shape[0] >= WORD_GATES_MIN_ROWS else None
            features, state = self._decoder_features(tokens, state, gates, packed_gates)
            return (features if projection is None else projection(features)), state

        def greedy_step(tokens, state, banned, with_log_probs):
            if screen and not with_log_probs:
                features, state = features_of(tokens, state)
                if features.shape[0] < SCREEN_MIN_ROWS:  # the float32 products directly (as the screen would)
                    return greedy_tokens(features, weight, bias, banned, packed=packed)[0], None, state
                low_weight, weight_norms, bias_bound = screen_terms()
                choice = screened_greedy_tokens(features, weight, low_weight, bias, banned, weight_norms, bias_bound)
                return choice, None, state
            features, state = features_of(tokens, state)
            choice, log_probs = greedy_tokens(features, weight, bias, banned, with_log_probs, packed)
            return choice, log_probs, state

        def top_k_step(tokens, state, k, banned):
            features, state = features_of(tokens, state)
            log_probs, ids = top_k_tokens(features, weight, bias, min(k, vocab), banned, packed)
            return log_probs, ids, state

        def distribution_step(tokens, state):
            # `decoder_step` with this search's packed products (and its weight: folded or not as the fast steps)
            features, state = self._decoder_features(tokens, state, None, packed_gates)
            features = features if projection is None else projection(features)
            rows = features.shape[0]
            few = packed is not None and PACKED_MIN_ROWS <= rows <= PACKED_MAX_ROWS
            logits = packed(features) if few else F.linear(features, weight, bias)
            return torch.log_softmax(logits, dim=-1), state

        # (a model in another dtype, or a search under autocast, keeps `decoder_step`'s arithmetic)
        float32 = weight.dtype == self.lm_head.weight.dtype == torch.float32 and not autocast
        step = distribution_step if float32 else self.decoder_step
        return SearchSteps(step, greedy_step, top_k_step)

    def sample_prior(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(num_samples, Z)` codes drawn from the prior N(0, I) on the model's device."""
        if self.config.is_rnnlm:
            raise ValueError("this model is an RNNLM (latent_size=0): it has no latent space")
        return sample_standard_normal(
            num_samples, self.latent_size, device=self.device, dtype=self.dtype, generator=generator
        )

    @staticmethod
    def interpolate(start: torch.Tensor, end: torch.Tensor, steps: int = 5) -> torch.Tensor:
        """Homotopy between two codes (the paper's Section 6.3): `(steps, Z)` points from `start` to `end`."""
        return interpolate(start, end, steps)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        latent: torch.Tensor | None = None,
        num_samples: int | None = None,
        sample_latent: bool = False,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        forced_tokens: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        streamer: BaseStreamer | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | SentenceVAEGenerationOutput:
        """Decode sentences, batched, from one of three sources:

        - `generate(input_ids, attention_mask)` (e.g. `generate(**tokenizer(texts, padding=True,
          return_tensors="pt"))`): reconstruction: each sentence is encoded and decoded from its posterior mean (a
          posterior sample with `sample_latent=True`);
        - `generate(latent=z)`: decodes the `(B, Z)` codes `z` (from `sample_prior`, `encode`, `interpolate`, ...);
        - `generate()` / `generate(num_samples=n)`: decodes `n` (default 1) codes drawn from the prior (for the RNNLM:
          `n` unconditional sentences).

        Anything ambiguous raises a `ValueError`: both `input_ids` and `latent`, floating-point `input_ids` (codes go
        in `latent=`), integer `latent`, `num_samples` that differs from the batch, `input_ids` for an RNNLM.

        Decoding follows `transformers`: settings come from `generation_config` (default `model.generation_config`,
        read from `generation_config.json`), overridden by keyword arguments of the same names (asking for
        `do_sample=True` replaces a default beam width, asking for `num_beams > 1` a default of sampling). Supported:
        `num_beams` (1 = greedy; beam search, `length_penalty`, `num_return_sequences`), `do_sample` with
        `temperature`, `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon_cutoff`, `eta_cutoff`, `top_h`;
        `max_new_tokens` (or `max_length`: the sequences hold no prompt, so both count generated tokens, `<eos>`
        included; default `config.max_sentence_length`), `min_new_tokens` (or `min_length`); `max_time` (seconds:
        the search ends after the step during which it ran out, its open sentences as at the length limit);
        `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`, `sequence_bias`, `suppress_tokens`,
        `begin_suppress_tokens` (the first word; not for `right_to_left` models, which write it last),
        `forced_eos_token_id` (sentences at the length limit end with `<eos>`), `exponential_decay_length_penalty`
        (its start counted in generated tokens), `remove_invalid_values` and `renormalize_logits` (after the
        processors, before the `min_new_tokens` constraint) through `transformers`' logits processors, plus any
        `logits_processor` given (they see log-probabilities, as in `transformers`' beam search);
        `return_dict_in_generate`, `output_scores`, `output_logits` (the model's unprocessed log-probabilities of
        each step); and ours,
        `output_layer_dtype="bfloat16"` (or in the `generation_config`; to save it with the model, in a
        `GenerationConfig(..., output_layer_dtype="bfloat16")` of its own: `transformers` drops unknown fields from a
        generation config derived from the model config when it loads one): greedy and beam search run the output
        layer's products in bfloat16 (their results rounded to bfloat16), 1.1-1.8x faster on a CPU with AVX-512 BF16
        (slower on CPUs without bfloat16 instructions), at the cost of choosing another token where the top scores are
        within bfloat16's rounding (the default, "float32", gives the float32 model's sequences);
        `output_layer_dtype="mixed"`: greedy search screens the vocabulary with bfloat16 products and chooses among
        the ids within their proven rounding bound with float32 ones (on a CPU with bfloat16 instructions; elsewhere
        it skips the screen, which would be slower; greedy search with `return_dict_in_generate`, whose scores need
        every float32 logit, and beam search take the float32 products), and the float32 LSTM step
        of both searches looks each word's input-side gates up (summed in another order than `nn.LSTM`), so it gives
        the float32 sequences except where two scores tie to within float32 rounding, faster on such CPUs (models on
        other devices, and searches with logits processors or `output_scores`, run in float32). Other generation
        settings that would change decoding (e.g. `num_beam_groups`, `stop_strings`) and unknown
        arguments raise a `ValueError`.

        Args:
            input_ids, attention_mask: `(B, T)` sentences to reconstruct, as the tokenizer produces them (right- or
                left-padded).
            latent: `(B, Z)` codes to decode.
            num_samples: the number of prior samples when neither `input_ids` nor `latent` is given.
            sample_latent: reconstruct from a posterior sample (drawn with `generator`) instead of the mean.
            generation_config: a `transformers.GenerationConfig`.
            logits_processor: extra `transformers` logits processors, applied after the built-in ones.
            forced_tokens: `(B, T)` ids to pin at each step (`-1` = free), in the decoder's order.
            generator: random generator for prior samples, posterior samples and sampling.
            stopping_criteria: `transformers` stopping criteria (a `StoppingCriteriaList` or any callable
                `(generated_ids, scores) -> (N,) bool`), asked after each step about the sequences still open (every
                hypothesis in beam search) with the ids generated so far (no `<bos>`, in the decoder's order) and
                `scores=None`: a sequence they mark ends there, without `<eos>`.
            streamer: a `transformers` streamer (`TextStreamer`, `TextIteratorStreamer`, ...) fed as in `transformers`
                for one sentence decoded greedily or by sampling: `put` first with the `(1, 1)` `<bos>` the decoder
                starts from (in place of a prompt: `skip_prompt=True` skips it, `skip_special_tokens=True` hides
                it), then with each new token, and `end` once done. Several sentences, beam search and
                right-to-left models (whose tokens come last word first) raise a `ValueError`.

        Returns the `(B * num_return_sequences, L)` generated ids (a `torch.LongTensor`, no `<bos>`, right-padded;
        `tokenizer.batch_decode(ids, skip_special_tokens=True)` gives the text), or with
        `return_dict_in_generate=True` a [`SentenceVAEGenerationOutput`] (sequences, scores, the decoded codes).
        """
        if "inputs" in kwargs:  # GenerationMixin.generate's name for its first argument
            if input_ids is not None:
                raise ValueError("pass the sentences as input_ids or as inputs, not both")
            input_ids = kwargs.pop("inputs")
        self._check_float_modules()
        settings = resolve_generation_config(
            self.config, getattr(self, "generation_config", None), generation_config, kwargs
        )
        latent, batch_size = self._codes_to_decode(
            input_ids, attention_mask, latent, num_samples, sample_latent, generator
        )
        if forced_tokens is not None and forced_tokens.shape[0] != batch_size:
            raise ValueError(f"forced_tokens must have {batch_size} rows, got {forced_tokens.shape[0]}")
        processors, warpers = build_logits_processors(
            self.config, settings, logits_processor, forced_tokens, self.device
        )
        if streamer is not None:
            self._check_streamer(batch_size * settings.num_return_sequences, settings.num_beams)

        cfg = self.config
        max_new_tokens, min_new_tokens = settings.max_new_tokens, settings.min_new_tokens
        num_beams, num_return_sequences = settings.num_beams, settings.num_return_sequences
        output_scores = bool(settings.return_dict_in_generate and settings.output_scores)
        output_logits = bool(settings.return_dict_in_generate and settings.output_logits)
        stopping_fn = None
        if stopping_criteria is not None:
            if not callable(stopping_criteria):
                raise ValueError(
                    f"stopping_criteria must be a transformers StoppingCriteriaList or a callable, got "
                    f"{type(stopping_criteria).__name__}"
                )

            def stopping_fn(ids: torch.Tensor) -> torch.Tensor:
                return stopping_criteria(ids, None)  # scores: None, as documented

        state = self.initial_decoder_state(latent, batch_size)
        if streamer is not None:  # what the decoder starts from, where `transformers` puts the prompt first
            streamer.put(torch.full((1, 1), cfg.bos_token_id, dtype=torch.long))
        special = dict(bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)
        # Suppression alone is applied by the searches, whose fast steps then choose tokens without the full
        # distribution (see `decoding`); other processors see every step's log-probabilities.
        suppressed = suppressed_ids_only(processors)
        if suppressed is not None:
            processors = LogitsProcessorList()
        steps = self.search_steps(batch_size * num_beams, OUTPUT_LAYER_DTYPES[settings.output_layer_dtype])
        greedy_step = top_k_step = None
        if not settings.do_sample and not processors and forced_tokens is None and not (output_scores or output_logits):
            greedy_step, top_k_step = steps.greedy, steps.top_k
        if num_beams > 1:
            result = beam_search(
                steps.step,
                state,
                batch_size,
                num_beams,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                length_penalty=settings.length_penalty,
                num_return_sequences=num_return_sequences,
                forced_tokens=forced_tokens,
                logits_processor=processors or None,
                output_scores=output_scores,
                output_logits=output_logits,
                max_time=settings.max_time,
                stopping_fn=stopping_fn,
                suppress_tokens=suppressed,
                top_k_step_fn=top_k_step,
                **special,
            )
        else:
            if num_return_sequences > 1:
                state = tuple(s.repeat_interleave(num_return_sequences, dim=0) for s in state)
                if forced_tokens is not None:
                    forced_tokens = forced_tokens.repeat_interleave(num_return_sequences, dim=0)
            flat = sample_search(
                steps.step,
                state,
                batch_size * num_return_sequences,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=settings.do_sample,
                logits_processor=processors or None,
                logits_warper=warpers or None,
                forced_tokens=forced_tokens,
                generator=generator,
                output_scores=output_scores,
                output_logits=output_logits,
                max_time=settings.max_time,
                stopping_fn=stopping_fn,
                suppress_tokens=suppressed,
                greedy_step_fn=greedy_step,
                compute_scores=settings.return_dict_in_generate,
                on_tokens=None if streamer is None else (lambda ids: streamer.put(ids.cpu())),
                **special,
            )
            if streamer is not None:
                streamer.end()
            result = flat._replace(
                **{
                    name: getattr(flat, name).view(batch_size, num_return_sequences, *getattr(flat, name).shape[2:])
                    for name in ("sequences", "scores", "log_probs", "lengths")
                }
            )
        output = self._generation_output(result, latent)
        return output if settings.return_dict_in_generate else output.sequences

    def _check_streamer(self, num_sequences: int, num_beams: int) -> None:
        """A streamer follows one sentence, in reading order, token by token (as in `transformers`)."""
        if num_sequences != 1:
            raise ValueError(
                f"a streamer follows one sentence: decode one (batch size x num_return_sequences = 1), got "
                f"{num_sequences}"
            )
        if num_beams > 1:
            raise ValueError(f"a streamer cannot follow beam search (num_beams={num_beams}): its hypotheses change")
        if self.config.right_to_left:
            raise ValueError(
                "a streamer cannot follow a right_to_left model: it generates the sentence last word first"
            )

    def _codes_to_decode(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        latent: torch.Tensor | None,
        num_samples: int | None,
        sample_latent: bool,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor | None, int]:
        """`(codes, batch size)` for `generate`: the posterior of `input_ids`, the given `latent`, or prior samples
        (codes None for the RNNLM)."""
        cfg = self.config
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)):
            raise ValueError(f"num_samples must be an integer, got {num_samples!r}")
        if input_ids is not None:
            if latent is not None:
                raise ValueError(
                    "pass input_ids (sentences to reconstruct) or latent (codes to decode), not both: it is ambiguous "
                    "which to decode"
                )
            if not torch.is_tensor(input_ids) or input_ids.is_floating_point() or input_ids.dtype == torch.bool:
                kind = input_ids.dtype if torch.is_tensor(input_ids) else type(input_ids).__name__
                raise ValueError(
                    f"input_ids must be an integer tensor of token ids, got {kind}; pass latent codes as latent=..."
                )
            if cfg.is_rnnlm:
                raise ValueError(
                    "this model is an RNNLM (latent_size=0): it has no encoder, so input_ids cannot be "
                    "reconstructed; generate(num_samples=n) samples sentences"
                )
            input_ids, attention_mask = self._right_padded(
                input_ids.to(self.device), None if attention_mask is None else attention_mask.to(self.device)
            )
            attention_mask = self.check_inputs(input_ids, attention_mask)
            mu, logvar = self._encode(input_ids, attention_mask)
            latent = reparameterize(mu, logvar, generator=generator) if sample_latent else mu
            source = "input_ids"
        else:
            if attention_mask is not None:
                raise ValueError("attention_mask was given without input_ids")
            if sample_latent:
                raise ValueError("sample_latent=True samples the posterior of input_ids: pass input_ids")
            source = "latent"
        if latent is not None:
            if cfg.is_rnnlm:
                raise ValueError("latent was given but this model is an RNNLM (latent_size=0)")
            if not torch.is_tensor(latent) or not latent.is_floating_point():
                kind = latent.dtype if torch.is_tensor(latent) else type(latent).__name__
                raise ValueError(
                    f"latent must be a floating-point (B, {cfg.latent_size}) tensor of codes, got {kind}; token ids "
                    "go in input_ids"
                )
            if latent.dim() != 2 or latent.shape[1] != cfg.latent_size:
                raise ValueError(f"latent must have shape (B, {cfg.latent_size}), got {tuple(latent.shape)}")
            if not bool(torch.isfinite(latent).all()):
                raise ValueError("latent holds NaN or infinite values")
            latent = latent.to(device=self.device, dtype=self.dtype)
            batch_size = latent.shape[0]
            if num_samples is not None and num_samples != batch_size:
                raise ValueError(f"num_samples={num_samples} differs from the {batch_size} rows of {source}")
            return latent, batch_size
        num_samples = 1 if num_samples is None else num_samples
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if cfg.is_rnnlm:
            return None, num_samples
        return self.sample_prior(num_samples, generator=generator), num_samples

    def _generation_output(self, result: SearchResult, latent: torch.Tensor | None) -> SentenceVAEGenerationOutput:
        sequences = result.sequences.flatten(0, 1)
        if self.config.right_to_left:
            lengths = result.lengths.flatten()
            ends_with_eos = (
                sequences.gather(1, (lengths - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1) == self.config.eos_token_id
            )
            sequences = reverse_tokens(sequences, lengths - ends_with_eos.long())
        return SentenceVAEGenerationOutput(
            sequences=sequences,
            sequences_scores=result.scores.flatten(),
            scores=result.step_scores,
            beam_indices=None if result.beam_indices is None else result.beam_indices.flatten(0, 1),
            log_probs=result.log_probs.flatten(),
            latent=latent,
            logits=result.step_logits,
        )


class SentenceVAEForSequenceClassification(SentenceVAEPreTrainedModel):
    """A sentence VAE's encoder with a linear classifier (or regressor) on the posterior mean: the paper's sentence
    features (its TREC and MSRP experiments fit a classifier on them), fine-tuned end to end as `transformers`'
    `*ForSequenceClassification` models are. Its encoder modules carry the VAE's names, so
    `SentenceVAEForSequenceClassification.from_pretrained(vae_folder, num_labels=n)` (or
    `AutoModelForSequenceClassification`) starts from a trained VAE's encoder, leaves its decoder out and draws the
    classifier (`score`) afresh. The loss follows `config.problem_type` as in `transformers`: regression (mean
    squared error) for `num_labels=1`, cross entropy for integer labels, binary cross entropy for multi-label
    float targets. `config.classifier_dropout` (default 0) drops features before the classifier in training."""

    def __init__(self, config: SentenceVAEConfig):
        super().__init__(config)
        if config.is_rnnlm:
            raise ValueError(
                "SentenceVAEForSequenceClassification classifies posterior means: it needs latent_size > 0, got an "
                "RNNLM config (latent_size=0)"
            )
        self.num_labels = config.num_labels
        if config.share_embeddings:
            self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self._build_encoder(config)
        self.classifier_dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.0)
        self.score = nn.Linear(config.latent_size, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens if self.config.share_embeddings else self.encoder_embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        setattr(self, "embed_tokens" if self.config.share_embeddings else "encoder_embed_tokens", value)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> SequenceClassifierOutput | tuple:
        """Class scores of `(B, T)` sentences (right- or left-padded): `logits` `(B, num_labels)` from the posterior
        mean, with `loss` where `labels` are given (`(B,)` class ids, `(B,)` or `(B, 1)` regression targets, or
        `(B, num_labels)` multi-label targets), and the posterior mean itself as `hidden_states=(mu,)`."""
        self._check_float_modules()
        input_ids, attention_mask = self._right_padded(input_ids, attention_mask)
        attention_mask = self.check_inputs(input_ids, attention_mask)
        mu, _ = self._encode(input_ids, attention_mask)
        logits = self.score(self.classifier_dropout(mu))
        loss = None if labels is None else self._loss(logits, labels.to(logits.device))
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output = SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=(mu,))
        return output if return_dict else output.to_tuple()

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.problem_type is None:  # decided by the first labels seen, as in `transformers`
            if self.num_labels == 1:
                cfg.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                cfg.problem_type = "single_label_classification"
            else:
                cfg.problem_type = "multi_label_classification"
        if cfg.problem_type == "regression":
            return F.mse_loss(logits.view(labels.shape[0], -1), labels.float().view(labels.shape[0], -1))
        if cfg.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if cfg.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        raise ValueError(
            "problem_type must be 'regression', 'single_label_classification' or 'multi_label_classification', got "
            f"{cfg.problem_type!r}"
        )


__all__ = [
    "SentenceVAEModel",
    "SentenceVAEForSequenceClassification",
    "SentenceVAEPreTrainedModel",
    "SentenceVAEOutput",
    "SentenceVAEGenerationOutput",
]
