"""A peer-style reference for the speed benchmarks: our standard sentence VAE written the way the public peer
implementation (timbmg/Sentence-VAE) is written, at the sizes under test.

The design, re-implemented here (no code is taken from the peer):

- training: shuffled batches (no length bucketing) padded to their own longest sentence; the LSTMs read packed
  sequences (`pack_padded_sequence`) or, with `packed=False`, the padded batch; the decoder's outputs are padded back
  and the output layer, the log-softmax and the NLL run over every position of the padded `(B, T)` grid, padding
  included (the NLL ignores padding targets, the computation does not); Adam as in `torch.optim.Adam`'s defaults;
- decoding: one `nn.LSTM` call per step, the full output layer, the top-1 token of the logits, rows that produced
  end of sentence pruned from the batch (greedy); beam search written the textbook way on top of the same step:
  the log-softmax over the full vocabulary and the next beam chosen among all `k * V` extensions of a row's beams.

Same parameters (names included, so a `SentenceVAEModel`'s `state_dict` loads into it), the same word dropout
(same noise), the never-predicted `<pad>`/`<bos>` (masked through the bias) and the same objective as
`hf_sentence_vae.SentenceVAEModel`: for the same weights, batch and noise the loss is the library's (the tests check
it), and the searches return the library's sequences.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import rnn as rnn_utils


class PeerStyleVAE(nn.Module):
    """The standard sentence VAE (unidirectional encoder, z -> decoder initial state, optionally z at every decoder
    input; untied output layer; no highway layers, no dropout other than word dropout), peer style."""

    def __init__(self, config, packed: bool = True):
        super().__init__()
        unsupported = {
            "latent_size": config.latent_size < 1,
            "bidirectional_encoder": config.bidirectional_encoder,
            "num_highway_layers": config.num_highway_layers > 0,
            "tie_word_embeddings": config.tie_word_embeddings,
            "share_embeddings": not config.share_embeddings,
            "right_to_left": config.right_to_left,
            "latent_injection": config.latent_injection not in ("initial_state", "initial_state_and_inputs"),
            "dropout": config.dropout > 0 or config.embedding_dropout > 0 or config.decoder_weight_drop > 0,
            "posterior_mean_bn_scale": config.posterior_mean_bn_scale > 0,
            "bag_of_words_weight": config.bag_of_words_weight > 0,
            "variance_parameterization": config.variance_parameterization != "exp",
        }
        bad = sorted(name for name, is_bad in unsupported.items() if is_bad)
        if bad:
            raise ValueError(
                f"the peer-style reference covers the standard VAE only; this config differs in {bad} "
                f"({', '.join(f'{name}={getattr(config, name)!r}' for name in bad)})"
            )
        self.config = config
        self.packed = packed
        self.latent_inputs = config.latent_injection == "initial_state_and_inputs"
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.encoder = nn.LSTM(config.embedding_size, config.encoder_hidden_size, batch_first=True)
        self.posterior = nn.Linear(config.encoder_hidden_size, 2 * config.latent_size)
        self.latent_to_state = nn.Linear(config.latent_size, 2 * config.decoder_hidden_size)
        decoder_in = config.embedding_size + (config.latent_size if self.latent_inputs else 0)
        self.decoder = nn.LSTM(decoder_in, config.decoder_hidden_size, batch_first=True)
        self.lm_head = nn.Linear(config.decoder_hidden_size, config.vocab_size)
        mask = torch.zeros(config.vocab_size)
        mask[[config.pad_token_id, config.bos_token_id]] = float("-inf")
        self.register_buffer("logit_mask", mask, persistent=False)

    # ------------------------------------------------------------------ training
    def _run(self, lstm: nn.LSTM, inputs: torch.Tensor, lengths: torch.Tensor, state=None) -> torch.Tensor:
        """`(B, T, H)` outputs of `lstm` over right-padded `inputs` (packed, as the peer does, or padded)."""
        if not self.packed:
            return lstm(inputs, state)[0]
        packed = rnn_utils.pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = lstm(packed, state)
        return rnn_utils.pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])[0]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        kl_weight: float,
        keep_rate: float,
        latent_noise: torch.Tensor,
        word_dropout_noise: torch.Tensor,
    ) -> torch.Tensor:
        """The training loss of a `(B, T)` batch: (sum of token NLLs + kl_weight * sum of KLs) / B."""
        cfg = self.config
        batch = input_ids.shape[0]
        lengths = attention_mask.sum(-1)
        encoded = self._run(self.encoder, self.embed_tokens(input_ids), lengths)
        final = encoded[torch.arange(batch), lengths - 1]
        mu, logvar = self.posterior(final).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * latent_noise
        h0, c0 = self.latent_to_state(z).chunk(2, dim=-1)
        decoder_ids = input_ids[:, :-1]
        special = (decoder_ids == cfg.pad_token_id) | (decoder_ids == cfg.bos_token_id)
        special |= decoder_ids == cfg.eos_token_id
        drop = ~special & ~(word_dropout_noise[:, : decoder_ids.shape[1]] < keep_rate)
        decoder_inputs = self.embed_tokens(decoder_ids.masked_fill(drop, cfg.unk_token_id))
        if self.latent_inputs:
            decoder_inputs = torch.cat([decoder_inputs, z.unsqueeze(1).expand(-1, decoder_ids.shape[1], -1)], -1)
        state = (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous())
        hidden = self._run(self.decoder, decoder_inputs, lengths - 1, state)
        logits = F.linear(
            hidden.reshape(-1, hidden.shape[-1]), self.lm_head.weight, self.lm_head.bias + self.logit_mask
        )
        log_probs = torch.log_softmax(logits, dim=-1)
        nll = F.nll_loss(log_probs, input_ids[:, 1:].reshape(-1), ignore_index=cfg.pad_token_id, reduction="sum")
        kl = -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp())
        return (nll + kl_weight * kl) / batch

    # ------------------------------------------------------------------ decoding
    def _initial_state(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h0, c0 = self.latent_to_state(z).chunk(2, dim=-1)
        return h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()

    def _step(self, tokens: torch.Tensor, z: torch.Tensor, state):
        """One decoder step: one `nn.LSTM` call on `(N,)` tokens, the full `(N, V)` logits."""
        inputs = self.embed_tokens(tokens).unsqueeze(1)
        if self.latent_inputs:
            inputs = torch.cat([inputs, z.unsqueeze(1)], -1)
        output, state = self.decoder(inputs, state)
        logits = F.linear(output[:, 0], self.lm_head.weight, self.lm_head.bias + self.logit_mask)
        return logits, state

    @torch.no_grad()
    def greedy(self, z: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """`(B, L)` greedy decodes of the codes `z` `(B, Z)` (end of sentence included, then padding)."""
        cfg = self.config
        batch = z.shape[0]
        state = self._initial_state(z)
        generations = torch.full((batch, max_new_tokens), cfg.pad_token_id, dtype=torch.long)
        running = torch.arange(batch)  # rows still generating, as indices into the batch
        tokens = torch.full((batch,), cfg.bos_token_id, dtype=torch.long)
        steps = 0
        for t in range(max_new_tokens):
            steps = t + 1
            logits, state = self._step(tokens, z, state)
            tokens = logits.topk(1, dim=-1).indices.view(-1)
            generations[running, t] = tokens
            keep = tokens != cfg.eos_token_id
            if not bool(keep.any()):
                break
            if not bool(keep.all()):
                running, tokens, z = running[keep], tokens[keep], z[keep]
                state = (state[0][:, keep], state[1][:, keep])
        return generations[:, :steps]

    @torch.no_grad()
    def beam(self, z: torch.Tensor, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0) -> torch.Tensor:
        """`(B, L)` best beam-search decodes (ranked by summed log-probability / length ** length_penalty; finished
        hypotheses stay in the beam, extended by padding at no cost; a row ends when all its beams have ended)."""
        cfg = self.config
        batch, k = z.shape[0], num_beams
        vocab = cfg.vocab_size
        z = z.repeat_interleave(k, dim=0)
        state = self._initial_state(z)
        scores = torch.full((batch, k), float("-inf"))
        scores[:, 0] = 0.0
        sequences = torch.empty((batch, k, 0), dtype=torch.long)
        finished = torch.zeros((batch, k), dtype=torch.bool)
        lengths = torch.zeros((batch, k), dtype=torch.long)
        tokens = torch.full((batch * k,), cfg.bos_token_id, dtype=torch.long)
        active = torch.arange(batch)
        out_sequences = torch.full((batch, k, max_new_tokens), cfg.pad_token_id, dtype=torch.long)
        out_scores = torch.empty((batch, k))
        out_lengths = torch.zeros((batch, k), dtype=torch.long)
        ended = torch.full((vocab,), float("-inf"))
        ended[cfg.pad_token_id] = 0.0
        steps = 0
        for t in range(max_new_tokens):
            steps = t + 1
            n = active.numel()
            logits, state = self._step(tokens, z, state)
            log_probs = torch.log_softmax(logits, dim=-1)
            log_probs = torch.where(finished.view(-1, 1), ended, log_probs)
            candidates = (scores.unsqueeze(-1) + log_probs.view(n, k, vocab)).view(n, k * vocab)
            scores, flat = candidates.topk(k, dim=-1)
            beam = torch.div(flat, vocab, rounding_mode="floor")
            next_tokens = flat % vocab
            was_finished = finished.gather(1, beam)
            sequences = torch.cat(
                [sequences.gather(1, beam.unsqueeze(-1).expand_as(sequences)), next_tokens[..., None]], -1
            )
            lengths = lengths.gather(1, beam) + (~was_finished).long()
            finished = was_finished | (next_tokens == cfg.eos_token_id)
            source = (torch.arange(n).unsqueeze(-1) * k + beam).view(-1)
            row_done = finished.all(-1)
            if bool(row_done.any()):
                rows = active[row_done]
                out_sequences[rows, :, :steps] = sequences[row_done]
                out_scores[rows], out_lengths[rows] = scores[row_done], lengths[row_done]
                keep = (~row_done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                active, scores, sequences = active[keep], scores[keep], sequences[keep]
                lengths, finished, next_tokens = lengths[keep], finished[keep], next_tokens[keep]
                source = source.view(n, k)[keep].view(-1)
            state = (state[0][:, source], state[1][:, source])
            z = z[source]
            tokens = next_tokens.reshape(-1)
        else:
            out_sequences[active, :, :steps] = sequences
            out_scores[active], out_lengths[active] = scores, lengths
        ranking = out_scores / out_lengths.clamp(min=1).float().pow(length_penalty) if length_penalty else out_scores
        best = ranking.argmax(-1)
        return out_sequences[torch.arange(batch), best, :steps]


def peer_batches(num_sentences: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffled batches, no length bucketing (each is then padded to its own longest sentence)."""
    order = np.random.default_rng(seed).permutation(num_sentences)
    return [order[i : i + batch_size] for i in range(0, num_sentences - batch_size + 1, batch_size)]
