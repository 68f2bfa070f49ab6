"""How `SentenceVAEModel.generate` reads its settings: a `transformers.GenerationConfig` resolved against the
model's defaults and checked, and the `transformers` logits processors and sampling warpers it asks for.

Only `torch` and `transformers` are imported, so this module travels with the model's remote code.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    ExponentialDecayLengthPenalty,
    ForcedEOSTokenLogitsProcessor,
    InfNanRemoveLogitsProcessor,
    LogitNormalization,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopHLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from .configuration_sentence_vae import MAX_SENTENCE_LENGTH_LIMIT, SentenceVAEConfig

# `GenerationConfig` settings `generate` honours; any other one set to a value that would change decoding is refused.
GENERATION_SETTINGS = {
    "max_length",
    "max_new_tokens",
    "max_time",
    "min_length",
    "min_new_tokens",
    "do_sample",
    "num_beams",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "sequence_bias",
    "forced_eos_token_id",
    "exponential_decay_length_penalty",
    "remove_invalid_values",
    "renormalize_logits",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_h",
    "length_penalty",
    "num_return_sequences",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    # No effect on a recurrent decoder whose state is its cache, or on a search that ends a row when all its beams
    # have ended (transformers' `early_stopping=True`).
    "use_cache",
    "cache_implementation",
    "early_stopping",
    # Ours, not a `transformers` field: the precision of the output layer's products in greedy and beam search.
    "output_layer_dtype",
}
# `output_layer_dtype` values: "float32" (the default), "bfloat16" (products in bfloat16, for CPUs with AVX-512 BF16
# or AMX; greedy and beam search without logits processors other than `suppress_tokens`) or "mixed" (greedy search
# screens the vocabulary with bfloat16 products, on CPUs with bfloat16 instructions, and chooses with float32 ones;
# beam search and scores take float32 products; the LSTM step of both searches looks each word's input-side gates
# up: the float32 sequences up to near-ties within float32 rounding).
OUTPUT_LAYER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "mixed": "mixed"}
# Settings that change decoding in `transformers` and that `generate` does not implement: refused unless unset or
# at a value without effect (None, False, 0, the `transformers` default; 1 for `guidance_scale`).
UNSUPPORTED_SETTINGS = {
    "stop_strings",
    "encoder_repetition_penalty",
    "encoder_no_repeat_ngram_size",
    "forced_bos_token_id",
    "token_healing",
    "guidance_scale",
    "watermarking_config",
    "output_attentions",
    "output_hidden_states",
    "prompt_lookup_num_tokens",
    "penalty_alpha",
    "dola_layers",
    "diversity_penalty",
    "num_beam_groups",
    "constraints",
    "force_words_ids",
}


def resolve_generation_config(
    config: SentenceVAEConfig,
    model_default: GenerationConfig | None,
    generation_config: GenerationConfig | None,
    kwargs: dict[str, Any],
) -> GenerationConfig:
    """The `GenerationConfig` a `generate` call runs with: `generation_config` (else the model's `model_default`),
    its unset fields from `model_default`, then `kwargs`; checked against the model `config`, with the lengths
    resolved."""
    cfg = config
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        raise ValueError(
            f"generation_config must be a transformers.GenerationConfig, got {type(generation_config).__name__}"
        )
    model_default = model_default or GenerationConfig()
    settings = copy.deepcopy(generation_config if generation_config is not None else model_default)
    # What the caller chose (rather than the model's defaults).
    explicit = set(kwargs)
    if generation_config is not None:
        explicit |= {key for key, value in vars(generation_config).items() if value is not None}
        for key, value in model_default.to_dict().items():
            if key in vars(settings) and getattr(settings, key) is None:
                setattr(settings, key, value)
    unknown = sorted(
        key for key in kwargs if key.startswith("_") or (key not in vars(settings) and key != "output_layer_dtype")
    )
    if unknown:
        raise ValueError(
            f"generate() got arguments it does not use: {unknown}. Decoding settings are GenerationConfig fields "
            f"({', '.join(sorted(GENERATION_SETTINGS))}); sentences go in input_ids / attention_mask, codes "
            "in latent"
        )
    for key, value in kwargs.items():
        setattr(settings, key, value)
    defaults_of = getattr(GenerationConfig, "_get_default_generation_params", None)  # transformers' own defaults
    global_defaults = defaults_of() if defaults_of is not None else {}
    refused = {}
    for key in sorted(UNSUPPORTED_SETTINGS & set(vars(settings))):
        value = getattr(settings, key)
        inert = (
            value is None
            or value is False
            or (isinstance(value, (int, float)) and value == 0)
            or (key in global_defaults and value == global_defaults[key])
            or (key == "guidance_scale" and value == 1)
        )
        if not inert:
            refused[key] = value
    if refused:
        raise ValueError(
            f"generate() does not support these generation settings: {refused}; it supports "
            f"{', '.join(sorted(GENERATION_SETTINGS))}"
        )
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(settings, name)
        if value is not None and _as_id_list(value) != [getattr(cfg, name)]:
            raise ValueError(
                f"generation setting {name}={value!r} differs from the model's {name}={getattr(cfg, name)}"
            )

    def pick(*values, default):
        return next((v for v in values if v is not None), default)

    settings.output_layer_dtype = _output_layer_dtype(getattr(settings, "output_layer_dtype", None))
    settings.num_beams = pick(settings.num_beams, default=1)
    settings.do_sample = bool(pick(settings.do_sample, default=False))
    # Sampling and beam search exclude each other: one the caller asks for replaces the other from the defaults
    # (a trained VAE's 5 beams, an RNNLM's sampling).
    if settings.do_sample and "do_sample" in explicit and "num_beams" not in explicit:
        settings.num_beams = 1
    if settings.num_beams > 1 and "num_beams" in explicit and "do_sample" not in explicit:
        settings.do_sample = False
    settings.num_return_sequences = pick(settings.num_return_sequences, default=1)
    settings.length_penalty = pick(settings.length_penalty, default=1.0)
    settings.temperature = pick(settings.temperature, default=1.0)
    settings.return_dict_in_generate = bool(settings.return_dict_in_generate)
    settings.output_scores = bool(settings.output_scores)
    settings.output_logits = bool(settings.output_logits)
    # The sequences hold no prompt: max_length and max_new_tokens both count generated tokens.
    settings.max_new_tokens = pick(settings.max_new_tokens, settings.max_length, default=cfg.max_sentence_length)
    settings.min_new_tokens = pick(settings.min_new_tokens, settings.min_length, default=0)
    num_beams, num_return_sequences = settings.num_beams, settings.num_return_sequences
    if not isinstance(num_beams, int) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not isinstance(num_return_sequences, int) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an integer >= 1, got {num_return_sequences!r}")
    if settings.do_sample and num_beams > 1:
        raise ValueError(f"do_sample=True with num_beams={num_beams} is not supported: choose sampling or beam search")
    if not settings.do_sample and num_beams == 1 and num_return_sequences > 1:
        raise ValueError(
            f"greedy decoding returns one sequence per code, got num_return_sequences={num_return_sequences}; "
            "use num_beams >= num_return_sequences or do_sample=True"
        )
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} must be <= num_beams={num_beams}")
    if not settings.temperature > 0:  # also NaN
        raise ValueError(f"temperature must be > 0, got {settings.temperature}")
    if settings.top_p is not None and not 0.0 < settings.top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {settings.top_p}")
    for name in ("epsilon_cutoff", "eta_cutoff"):  # (transformers skips values outside the range silently)
        value = getattr(settings, name)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1) (0: off), got {value}")
    max_new, min_new = settings.max_new_tokens, settings.min_new_tokens
    limit = MAX_SENTENCE_LENGTH_LIMIT
    if not 1 <= max_new <= limit or min_new < 0 or min_new > max_new:
        raise ValueError(
            f"need 1 <= max_new_tokens <= {limit} and 0 <= min_new_tokens <= max_new_tokens, got "
            f"max_new_tokens={max_new}, min_new_tokens={min_new}"
        )
    if "user_set_attributes" in inspect.signature(settings.validate).parameters:
        settings.validate(user_set_attributes=set(kwargs))  # warnings only for what this call set
    else:
        settings.validate()
    return settings


def _output_layer_dtype(value: Any) -> str:
    """The name of an `output_layer_dtype` setting (None: "float32"); a `ValueError` naming any other value."""
    if value is None:
        return "float32"
    for name, dtype in OUTPUT_LAYER_DTYPES.items():
        if value == name or (isinstance(dtype, torch.dtype) and value is dtype):
            return name
    raise ValueError(f"output_layer_dtype must be one of {sorted(OUTPUT_LAYER_DTYPES)}, got {value!r}")


def build_logits_processors(
    config: SentenceVAEConfig,
    settings: GenerationConfig,
    logits_processor: LogitsProcessorList | None,
    forced_tokens: torch.Tensor | None,
    device: torch.device,
) -> tuple[LogitsProcessorList, LogitsProcessorList]:
    """`transformers` logits processors for the resolved `settings` (then `logits_processor`), and the sampling
    warpers, for a model with `config` on `device`."""
    cfg = config
    processors = LogitsProcessorList()
    if settings.repetition_penalty is not None and settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(penalty=settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if settings.bad_words_ids:
        bad_words = [_check_ids(cfg, "bad_words_ids", word) for word in settings.bad_words_ids]
        if cfg.right_to_left:  # the searches run in the decoder's order
            bad_words = [word[::-1] for word in bad_words]
        processors.append(NoBadWordsLogitsProcessor(bad_words, eos_token_id=cfg.eos_token_id))
    if settings.sequence_bias:
        processors.append(SequenceBiasLogitsProcessor(_sequence_bias(cfg, settings.sequence_bias)))
    if settings.forced_eos_token_id is not None:
        _check_forced_eos(cfg, settings)
        processors.append(ForcedEOSTokenLogitsProcessor(settings.max_new_tokens, cfg.eos_token_id, device=device))
    if settings.remove_invalid_values:
        processors.append(InfNanRemoveLogitsProcessor())
    if settings.exponential_decay_length_penalty is not None:
        # counted in generated tokens (the sequences hold no prompt)
        start, factor = _decay_length_penalty(settings.exponential_decay_length_penalty)
        processors.append(ExponentialDecayLengthPenalty((start, factor), cfg.eos_token_id, input_ids_seq_length=0))
    if settings.suppress_tokens:
        suppressed = _check_suppress_tokens(cfg, settings.suppress_tokens, forced_tokens, device)
        processors.append(SuppressTokensLogitsProcessor(suppressed.tolist(), device=device))
    if settings.begin_suppress_tokens:
        if cfg.right_to_left:
            raise ValueError(
                "begin_suppress_tokens cannot apply to a right_to_left model: its decoder writes the sentence's "
                "first word last"
            )
        begin = _check_ids(cfg, "begin_suppress_tokens", settings.begin_suppress_tokens)
        processors.append(SuppressTokensAtBeginLogitsProcessor(begin, begin_index=0, device=device))
    if logits_processor is not None:
        processors.extend(logits_processor)
    warpers = LogitsProcessorList()
    if settings.do_sample:
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_h is not None:
            warpers.append(TopHLogitsWarper(top_h=settings.top_h))
        if settings.top_k is not None and settings.top_k != 0:
            warpers.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p is not None and settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(settings.top_p))
        if settings.min_p is not None:
            warpers.append(MinPLogitsWarper(settings.min_p))
        if settings.typical_p is not None and settings.typical_p < 1.0:
            warpers.append(TypicalLogitsWarper(settings.typical_p))
        if settings.epsilon_cutoff is not None and 0.0 < settings.epsilon_cutoff < 1.0:
            warpers.append(EpsilonLogitsWarper(settings.epsilon_cutoff))
        if settings.eta_cutoff is not None and 0.0 < settings.eta_cutoff < 1.0:
            warpers.append(EtaLogitsWarper(settings.eta_cutoff, device=device))
    if settings.renormalize_logits:  # last, as in `transformers` (before the searches' length constraints)
        (warpers if settings.do_sample else processors).append(LogitNormalization())
    return processors, warpers


def _check_ids(cfg: SentenceVAEConfig, name: str, ids: Any) -> list[int]:
    """`ids` as a list of vocabulary ids; a `ValueError` naming `name` and any id outside the vocabulary."""
    values = [int(t) for t in ids]
    bad = [t for t in values if not 0 <= t < cfg.vocab_size]
    if bad:
        raise ValueError(f"{name} must be ids in [0, {cfg.vocab_size}), got {bad}")
    return values


def _sequence_bias(cfg: SentenceVAEConfig, sequence_bias: Any) -> list[list]:
    """`sequence_bias` (`[[ids, bias], ...]`, or a `{ids: bias}` dict) checked against the vocabulary, its sequences
    in the decoder's order."""
    items = sequence_bias.items() if isinstance(sequence_bias, dict) else sequence_bias
    biases = []
    for item in items:
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[1], (int, float)):
            raise ValueError(f"sequence_bias must hold [token ids, bias] pairs, got {item!r}")
        ids = _check_ids(cfg, "sequence_bias", item[0])
        if not ids:
            raise ValueError("sequence_bias holds an empty sequence of ids")
        biases.append([ids[::-1] if cfg.right_to_left else ids, float(item[1])])
    return biases


def _as_id_list(value: Any) -> list:
    """A token-id setting (an id, a list of ids or a tensor of them) as a list."""
    values = value.tolist() if torch.is_tensor(value) else value
    return list(values) if isinstance(values, (list, tuple)) else [values]


def _check_forced_eos(cfg: SentenceVAEConfig, settings: GenerationConfig) -> None:
    value = settings.forced_eos_token_id
    if _as_id_list(value) != [cfg.eos_token_id]:
        raise ValueError(
            f"forced_eos_token_id={value!r}: the model ends sentences with eos_token_id={cfg.eos_token_id} only"
        )
    if settings.min_new_tokens >= settings.max_new_tokens:
        raise ValueError(
            f"forced_eos_token_id ends sentences at max_new_tokens={settings.max_new_tokens}, where "
            f"min_new_tokens={settings.min_new_tokens} forbids the end of sentence"
        )


def _decay_length_penalty(value: Any) -> tuple[int, float]:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not isinstance(value[0], int)
        or value[0] < 0
        or not isinstance(value[1], (int, float))
        or not value[1] > 0
    ):
        raise ValueError(
            f"exponential_decay_length_penalty must be (start index >= 0, decay factor > 0), got {value!r}"
        )
    return value[0], float(value[1])


def _check_suppress_tokens(
    cfg: SentenceVAEConfig, suppress_tokens: list[int], forced_tokens: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    ids = _check_ids(cfg, "suppress_tokens", suppress_tokens)
    if cfg.eos_token_id in ids:
        raise ValueError(f"suppress_tokens may not contain the end-of-sentence id {cfg.eos_token_id}")
    suppressed = torch.tensor(sorted(set(ids)), dtype=torch.long, device=device)
    if forced_tokens is not None and bool(torch.isin(forced_tokens.to(device), suppressed).any()):
        raise ValueError("forced_tokens pins a token that suppress_tokens forbids")
    return suppressed


def suppressed_ids_only(processors: LogitsProcessorList) -> torch.Tensor | None:
    """The suppressed ids when `processors` is nothing but token suppression (one `SuppressTokensLogitsProcessor`):
    the searches then apply it themselves and can choose tokens without the full distribution; None otherwise."""
    if len(processors) == 1 and type(processors[0]) is SuppressTokensLogitsProcessor:
        return processors[0].suppress_tokens.long()
    return None


__all__ = [
    "GENERATION_SETTINGS",
    "OUTPUT_LAYER_DTYPES",
    "UNSUPPORTED_SETTINGS",
    "build_logits_processors",
    "resolve_generation_config",
    "suppressed_ids_only",
]
