"""The straightforward baseline for the speed benchmarks: the same sentence VAE written the obvious way.

Same architecture, parameters (names included, so a library model's `state_dict` loads into it), word dropout,
never-predicted `<pad>`/`<bos>` and loss as `hf_sentence_vae.SentenceVAEModel`, but:

- every batch is padded to the longest sentence of the corpus (no length bucketing; batches are drawn at random),
- the output layer and `nn.CrossEntropyLoss` run over all positions, padding included (`ignore_index` drops the
  padding from the loss, not from the computation),
- the logits are materialised as a `(B, T, V)` tensor and `<pad>`/`<bos>` are masked by adding a `(V,)` vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class StraightforwardVAE(nn.Module):
    """The standard sentence VAE (unidirectional encoder, z -> decoder initial state, no highway layers)."""

    def __init__(self, config):
        super().__init__()
        if config.latent_size < 1 or config.bidirectional_encoder or config.num_highway_layers:
            raise ValueError("the baseline covers the standard VAE only (latent_size > 0, unidirectional, no highway)")
        self.pad_token_id = config.pad_token_id
        self.unk_token_id = config.unk_token_id
        self.special_ids = (config.pad_token_id, config.bos_token_id, config.eos_token_id)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.encoder = nn.LSTM(config.embedding_size, config.encoder_hidden_size, batch_first=True)
        self.posterior = nn.Linear(config.encoder_hidden_size, 2 * config.latent_size)
        self.latent_to_state = nn.Linear(config.latent_size, 2 * config.decoder_hidden_size)
        self.decoder = nn.LSTM(config.embedding_size, config.decoder_hidden_size, batch_first=True)
        self.lm_head = nn.Linear(config.decoder_hidden_size, config.vocab_size)
        mask = torch.zeros(config.vocab_size)
        mask[[config.pad_token_id, config.bos_token_id]] = float("-inf")
        self.register_buffer("logit_mask", mask, persistent=False)
        self.criterion = nn.CrossEntropyLoss(ignore_index=config.pad_token_id, reduction="sum")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        kl_weight: float,
        keep_rate: float,
        latent_noise: torch.Tensor,
        word_dropout_noise: torch.Tensor,
    ) -> torch.Tensor:
        batch = input_ids.shape[0]
        lengths = attention_mask.sum(-1)
        outputs, _ = self.encoder(self.embed_tokens(input_ids))
        final = outputs[torch.arange(batch), lengths - 1]
        mu, logvar = self.posterior(final).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * latent_noise
        h0, c0 = self.latent_to_state(z).chunk(2, dim=-1)
        decoder_ids = input_ids[:, :-1]
        is_word = torch.ones_like(decoder_ids, dtype=torch.bool)
        for special in self.special_ids:
            is_word &= decoder_ids != special
        drop = is_word & ~(word_dropout_noise[:, : decoder_ids.shape[1]] < keep_rate)
        decoder_ids = decoder_ids.masked_fill(drop, self.unk_token_id)
        hidden, _ = self.decoder(
            self.embed_tokens(decoder_ids), (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous())
        )
        logits = self.lm_head(hidden) + self.logit_mask
        targets = input_ids[:, 1:]
        reconstruction = self.criterion(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)) / batch
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        return reconstruction + kl_weight * kl


def straightforward_batches(num_sentences: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Random batches (a shuffled order cut into pieces), no length bucketing."""
    order = np.random.default_rng(seed).permutation(num_sentences)
    return [order[i : i + batch_size] for i in range(0, num_sentences - batch_size + 1, batch_size)]
