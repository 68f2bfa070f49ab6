"""Configuration of the sentence VAE of Bowman et al. (2016), "Generating Sentences from a Continuous Space"."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

LATENT_INJECTIONS = ("initial_state", "initial_state_and_inputs", "initial_state_inputs_and_outputs")
VARIANCE_PARAMETERIZATIONS = ("exp", "softplus")
# Decoding buffers are sized by the longest sentence: a sentence VAE models sentences, not documents.
MAX_SENTENCE_LENGTH_LIMIT = 10_000
# A Hub-ready folder's config.json declares the bundled `pipelines.py` under this key (see `hub.add_pipeline`).
CUSTOM_PIPELINES_KEY = "custom_pipelines"
# Fields set from the tokenizer (its vocabulary and special ids), not chosen as settings.
TOKENIZER_FIELDS = ("vocab_size", "pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id")
# Fields that fix the weights' shapes or meaning: a saved model (or a checkpoint) cannot change them.
ARCHITECTURE_FIELDS = (
    "embedding_size",
    "encoder_hidden_size",
    "decoder_hidden_size",
    "latent_size",
    "bidirectional_encoder",
    "num_highway_layers",
    "latent_injection",
    "variance_parameterization",
    "posterior_mean_bn_scale",
    "tie_word_embeddings",
    "share_embeddings",
    "right_to_left",
)
# Fields whose value the weights fix only through whether it is on (> 0): the layer it adds exists or not.
ON_OFF_ARCHITECTURE_FIELDS = ("bag_of_words_weight",)
# The allowed values of the fields that have a fixed set of them.
FIELD_CHOICES = {"latent_injection": LATENT_INJECTIONS, "variance_parameterization": VARIANCE_PARAMETERIZATIONS}


class SentenceVAEConfig(PretrainedConfig):
    r"""
    Configuration of a [`SentenceVAEModel`]: a single-layer LSTM encoder, a diagonal-Gaussian posterior
    q(z|x) and a single-layer LSTM decoder conditioned on z (the paper's Figure 1).

    The defaults are the paper's standard-decoder VAE for the Penn Treebank (Table 11: embedding 353,
    LSTM 191, z 13, word keep rate 0.62) over the 10,002-entry PTB vocabulary built by
    [`build_tokenizer`] (9,998 words, `<unk>`, `<eos>`, and the never-predicted `<pad>` and `<bos>`).

    Args:
        vocab_size (`int`): number of token ids, special tokens included.
        embedding_size (`int`): word embedding size (shared by encoder and decoder unless
            `share_embeddings=False`).
        encoder_hidden_size (`int`): LSTM state size of the encoder (per direction).
        decoder_hidden_size (`int`): LSTM state size of the decoder.
        latent_size (`int`): size of z. `0` gives the RNNLM baseline: no encoder, no KL term.
        bidirectional_encoder (`bool`): read the sentence in both directions; the two final states are
            concatenated.
        num_highway_layers (`int`): highway layers (Srivastava et al., 2015) between the encoder state and
            the posterior parameters, and between z and the decoder's initial state.
        latent_injection (`str`): `"initial_state"` (z sets the decoder's initial state, the paper's model)
            or `"initial_state_and_inputs"` (also concatenated to every decoder input), or
            `"initial_state_inputs_and_outputs"` (also concatenated to every decoder output, before the output
            layer: a skip connection from z to the word distribution, Dieng et al., 2019).
        variance_parameterization (`str`): `"exp"` (the network predicts log sigma^2) or `"softplus"`
            (sigma^2 = softplus(.)).
        posterior_mean_bn_scale (`float`): batch-normalise the posterior means and scale them by this fixed gamma,
            with a learned shift (BN-VAE, Zhu et al., 2020). Over a batch, each dimension's KL is then at least
            gamma^2 / 2 on average, so no dimension can collapse. Not in the paper; 0 (the default) turns it off.
        bag_of_words_weight (`float`): weight of a bag-of-words loss on z (Zhao et al., 2017): a linear layer
            from z to the vocabulary, whose log-softmax must score every target word of the sentence, order
            ignored; its summed negative log-likelihood is added to `loss` with this weight. It pushes the code
            to carry the sentence's words (whether the decoder then reads them is for the latent report to show).
            Not in the paper; 0 (the default) turns it off and leaves the model without the layer. Training only:
            it changes no likelihood or bound. A saved model can be trained on with another positive weight, not
            switched on or off (that would add or drop the layer).
        tie_word_embeddings (`bool`): tie the output layer's weights to the decoder's input embedding (Press &
            Wolf, 2017; Inan et al., 2017). When `embedding_size != decoder_hidden_size` the decoder state goes
            through a learned `decoder_hidden_size -> embedding_size` projection first.
        share_embeddings (`bool`): encoder and decoder read the same embedding matrix.
        word_keep_rate (`float`): the word-dropout keep rate k used at training time; `0.0` is the
            inputless decoder (applied at evaluation too, as in the paper).
        dropout (`float`): standard dropout on decoder input embeddings and LSTM outputs (not in the
            paper; 0 reproduces it).
        locked_dropout (`bool`): draw the `dropout` masks once per sentence and feature and share them across
            time steps (variational dropout, Gal & Ghahramani, 2016; Merity et al., 2018's locked dropout)
            instead of independently per token. Not in the paper; False (the default) is standard dropout.
        embedding_dropout (`float`): at training time, drop whole word types from the decoder's input embedding
            (one mask over the vocabulary per batch, every occurrence of a dropped word reads a zero vector,
            the kept rows are scaled by 1/(1-p); Gal & Ghahramani, 2016). The encoder and a tied output layer
            are unaffected. Not in the paper; 0 (the default) turns it off.
        decoder_weight_drop (`float`): DropConnect on the decoder LSTM's recurrent (hidden-to-hidden) weights
            at training time, one mask per batch (Wan et al., 2013; Merity et al., 2018's AWD-LSTM). Not in the
            paper; 0 (the default) turns it off.
        right_to_left (`bool`): the decoder generates sentences from the last word to the first
            (the paper's imputation models, Section 5).
        max_sentence_length (`int`): the longest sequence (words + end of sentence) generated by default, at most
            `MAX_SENTENCE_LENGTH_LIMIT` (10,000: decoding buffers are sized by it).
        initializer_range (`float`): standard deviation of the normal initialisation of embeddings and
            linear layers.
        pad_token_id, unk_token_id, bos_token_id, eos_token_id (`int`): special token ids.

    Invalid values raise a `ValueError` naming the field and the value.

    Example:

    ```python
    >>> from hf_sentence_vae import SentenceVAEConfig, SentenceVAEModel
    >>> config = SentenceVAEConfig(vocab_size=10002)  # the paper's standard PTB VAE
    >>> model = SentenceVAEModel(config)
    ```
    """

    model_type = "sentence-vae"

    vocab_size: int = 10002
    embedding_size: int = 353
    encoder_hidden_size: int = 191
    decoder_hidden_size: int = 191
    latent_size: int = 13
    bidirectional_encoder: bool = False
    num_highway_layers: int = 0
    latent_injection: str = "initial_state"
    variance_parameterization: str = "exp"
    posterior_mean_bn_scale: float = 0.0
    bag_of_words_weight: float = 0.0
    tie_word_embeddings: bool = False
    share_embeddings: bool = True
    word_keep_rate: float = 0.62
    dropout: float = 0.0
    locked_dropout: bool = False
    embedding_dropout: float = 0.0
    decoder_weight_drop: float = 0.0
    right_to_left: bool = False
    max_sentence_length: int = 100
    initializer_range: float = 0.02
    pad_token_id: int = 0
    unk_token_id: int = 1
    bos_token_id: int = 2
    eos_token_id: int = 3

    def __post_init__(self, **kwargs):
        _check_fields(self)
        super().__post_init__(**kwargs)

    def validate(self) -> None:
        """Check every field (`transformers`' checks, then this model's): a `ValueError` naming the first impossible
        field and its value. Run on construction; call it again after changing fields."""
        super().validate()
        _check_fields(self)

    def _remove_keys_not_serialized(self, d: dict) -> None:
        """`custom_pipelines` is never saved with the config: it names a `pipelines.py` that `save_pretrained` does
        not write (so a loaded model saved again would point at a missing file); `hub.add_pipeline` writes both."""
        super()._remove_keys_not_serialized(d)
        d.pop(CUSTOM_PIPELINES_KEY, None)

    @property
    def special_token_ids(self) -> dict[str, int]:
        """The four special token ids by name."""
        return {
            "pad_token_id": self.pad_token_id,
            "unk_token_id": self.unk_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }

    @property
    def is_rnnlm(self) -> bool:
        """True for the RNNLM baseline (`latent_size == 0`): no encoder, no latent code, no KL term."""
        return self.latent_size == 0

    @classmethod
    def settings(cls) -> tuple[str, ...]:
        """The fields a user chooses (every field but those the tokenizer sets), in declaration order: what a
        training run exposes as model flags."""
        return tuple(name for name in cls.__annotations__ if name not in TOKENIZER_FIELDS)


def _check(condition: bool, field: str, value, requirement: str) -> None:
    if not condition:
        raise ValueError(f"SentenceVAEConfig: invalid {field}={value!r}: {requirement}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(config: SentenceVAEConfig) -> None:
    """Raise a `ValueError` naming the first impossible field."""
    for name in ("vocab_size", "embedding_size", "encoder_hidden_size", "decoder_hidden_size", "max_sentence_length"):
        value = getattr(config, name)
        _check(_is_int(value) and value > 0, name, value, "must be a positive integer")
    _check(
        config.max_sentence_length <= MAX_SENTENCE_LENGTH_LIMIT,
        "max_sentence_length",
        config.max_sentence_length,
        f"must be at most {MAX_SENTENCE_LENGTH_LIMIT:,} (decoding buffers are sized by it)",
    )
    for name in ("latent_size", "num_highway_layers"):
        value = getattr(config, name)
        _check(_is_int(value) and value >= 0, name, value, "must be a non-negative integer")
    for name in ("bidirectional_encoder", "tie_word_embeddings", "share_embeddings", "locked_dropout", "right_to_left"):
        value = getattr(config, name)
        _check(isinstance(value, bool), name, value, "must be True or False")
    _check(
        config.latent_injection in LATENT_INJECTIONS,
        "latent_injection",
        config.latent_injection,
        f"must be one of {LATENT_INJECTIONS}",
    )
    _check(
        config.variance_parameterization in VARIANCE_PARAMETERIZATIONS,
        "variance_parameterization",
        config.variance_parameterization,
        f"must be one of {VARIANCE_PARAMETERIZATIONS}",
    )
    _check(
        _is_number(config.word_keep_rate) and 0.0 <= config.word_keep_rate <= 1.0,
        "word_keep_rate",
        config.word_keep_rate,
        "must be a number in [0, 1]",
    )
    for name in ("dropout", "embedding_dropout", "decoder_weight_drop"):
        value = getattr(config, name)
        _check(_is_number(value) and 0.0 <= value < 1.0, name, value, "must be in [0, 1)")
    _check(
        _is_number(config.posterior_mean_bn_scale) and 0.0 <= config.posterior_mean_bn_scale < math.inf,
        "posterior_mean_bn_scale",
        config.posterior_mean_bn_scale,
        "must be a finite number >= 0 (0 turns the batch normalisation off)",
    )
    _check(
        _is_number(config.bag_of_words_weight) and 0.0 <= config.bag_of_words_weight < math.inf,
        "bag_of_words_weight",
        config.bag_of_words_weight,
        "must be a finite number >= 0 (0 turns the bag-of-words loss off)",
    )
    _check(
        _is_number(config.initializer_range) and config.initializer_range > 0,
        "initializer_range",
        config.initializer_range,
        "must be a positive number",
    )
    ids = {}
    for name, value in config.special_token_ids.items():
        _check(
            _is_int(value) and 0 <= value < config.vocab_size,
            name,
            value,
            f"must be a token id in [0, vocab_size={config.vocab_size})",
        )
        _check(value not in ids, name, value, f"is already used by {ids.get(value)}")
        ids[value] = name
    _check(
        config.vocab_size > len(ids),
        "vocab_size",
        config.vocab_size,
        "must leave room for words besides the 4 specials",
    )
    if config.is_rnnlm:
        for name in ("posterior_mean_bn_scale", "bag_of_words_weight"):
            value = getattr(config, name)
            _check(value == 0.0, name, value, "has no effect without a latent variable (latent_size=0); leave it at 0")
        _check(
            config.latent_injection == "initial_state",
            "latent_injection",
            config.latent_injection,
            "has no effect without a latent variable (latent_size=0); leave it at 'initial_state'",
        )


def architecture_changes(changes: dict[str, tuple]) -> dict[str, tuple]:
    """The entries of `changes` (field -> (saved value, asked value)) that the saved weights cannot follow: any change
    of an `ARCHITECTURE_FIELDS` field, and switching an `ON_OFF_ARCHITECTURE_FIELDS` field on or off."""
    return {
        name: (old, new)
        for name, (old, new) in changes.items()
        if name in ARCHITECTURE_FIELDS or (name in ON_OFF_ARCHITECTURE_FIELDS and (old > 0) != (new > 0))
    }
