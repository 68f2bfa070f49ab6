"""Word-level tokenizer for the sentence VAE, built with `tokenizers` and wrapped as a fast tokenizer.

Two text modes, both stored in `tokenizer.json` so that a saved tokenizer behaves the same everywhere:

- ``"pretokenized"``: the text is already tokenized (like the Penn Treebank): split on whitespace only;
  PTB's literal ``<unk>`` is the unknown token itself.
- ``"raw"``: lower-case (NFKC-normalised), split on whitespace and split punctuation off, so
  ``"Hello, world!"`` becomes ``hello , world !``.

Every encoded sentence is ``<bos> w_1 ... w_n <eos>``; ids 0-3 are ``<pad> <unk> <bos> <eos>``. The strings
``<pad>``, ``<bos>`` and ``<eos>`` inside the text encode to ``<unk>``: only the tokenizer's own ``<bos>``/``<eos>``
around a sentence carry those ids (a ``<pad>`` or ``<bos>`` target would have probability zero, an inner ``<eos>``
would end the sentence early). PTB's literal ``<unk>`` stays ``<unk>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]
TEXT_MODES = ("pretokenized", "raw")


class SentenceVAETokenizerFast(PreTrainedTokenizerFast):
    """A `PreTrainedTokenizerFast` over a word-level `tokenizers` model (build one with [`build_tokenizer`]).

    It defines no `__init__` of its own, so `from_pretrained` restores it from `tokenizer.json` unchanged.
    Special-token strings found in the text (``<pad>``, ``<bos>``, ``<eos>``) encode to ``<unk>``, whatever the
    entry point (`__call__`, `encode`, batches, pairs); count them in texts with [`special_token_string_counts`].
    """

    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "right"
    truncation_side = "right"

    @property
    def text_mode(self) -> str:
        """`"raw"` when the tokenizer lower-cases and splits punctuation, else `"pretokenized"`."""
        return "raw" if self.backend_tokenizer.normalizer is not None else "pretokenized"

    def _text_special_ids(self) -> tuple[frozenset[int], int | None]:
        """The ids that text must not produce (`<pad>`, `<bos>`, `<eos>`) and the `<unk>` id, memoised per set of
        special tokens (reading `*_token_id` costs microseconds, and this runs once per encoded sentence)."""
        names = ("pad_token", "bos_token", "eos_token", "unk_token")
        key = tuple(str(self._special_tokens_map.get(name)) for name in names)
        memo = self.__dict__.get("_text_special_memo")
        if memo is None or memo[0] != key:
            unk = self.unk_token_id
            inner = frozenset({self.pad_token_id, self.bos_token_id, self.eos_token_id} - {None, unk})
            memo = self.__dict__["_text_special_memo"] = (key, inner, unk)
        return memo[1], memo[2]

    def _convert_encoding(self, encoding, *args, **kwargs):
        encoding_dict, encodings = super()._convert_encoding(encoding, *args, **kwargs)
        inner, unk = self._text_special_ids()
        # The post-processor's own <bos>/<eos> are flagged in the special-tokens mask; those matched in the text are not.
        encoding_dict["input_ids"] = [_unk_text_specials(e.ids, e.special_tokens_mask, inner, unk) for e in encodings]
        return encoding_dict, encodings


def _unk_text_specials(ids: list[int], added: list[int], inner: frozenset[int], unk: int | None) -> list[int]:
    """`ids` with every id of `inner` that the text produced (not added by the post-processor) replaced by `unk`."""
    if unk is None or inner.isdisjoint(ids):
        return ids
    return [unk if i in inner and not flag else i for i, flag in zip(ids, added)]


def special_token_string_counts(texts: Iterable[str], tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """For each text, how many of the tokenizer's ``<pad>``, ``<bos>`` and ``<eos>`` strings it holds (matched
    anywhere in the raw text, as in ``dog<bos>ran``): [`SentenceVAETokenizerFast`] encodes each of them to `<unk>`."""
    strings = [t for t in (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) if t]
    return [sum(text.count(s) for s in strings) for text in texts]


def _backend(mode: str) -> Tokenizer:
    if mode not in TEXT_MODES:
        raise ValueError(f"mode must be one of {TEXT_MODES}, got {mode!r}")
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    if mode == "raw":
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="\x00", cleanup=False)
    return tokenizer


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(
                f"build_tokenizer expects an iterable of str lines, got an item of type {type(text).__name__}"
            )
        yield text


def build_tokenizer(
    texts: Iterable[str],
    vocab_size: int | None = None,
    min_frequency: int = 0,
    mode: str = "pretokenized",
    model_max_length: int = 512,
) -> SentenceVAETokenizerFast:
    """Train a word-level vocabulary on an iterable of lines (a list, a file object, a `datasets` column).

    Args:
        texts: one sentence per item.
        vocab_size: maximum vocabulary size including the 4 special tokens; None keeps every word.
        min_frequency: drop words seen fewer times than this.
        mode: `"pretokenized"` (whitespace split; PTB) or `"raw"` (lower-case, split punctuation).
        model_max_length: the longest encoding (special tokens included) the tokenizer reports.

    On PTB's training split with no limits this keeps all 9,998 words besides `<unk>` (vocabulary 10,002).
    """
    if vocab_size is not None and vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    backend = _backend(mode)
    # One spare entry: a corpus word equal to a special token (PTB's literal "<unk>") takes a slot.
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size + 1 if vocab_size is not None else 2**31 - 1,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    backend.train_from_iterator(_lines(texts), trainer=trainer)
    # The trainer gives such a word a second id; renumber: specials 0-3, then words by trainer rank.
    trained = sorted(backend.get_vocab().items(), key=lambda item: item[1])
    words = [token for token, _ in trained if token not in SPECIAL_TOKENS]
    if vocab_size is not None:
        words = words[: vocab_size - len(SPECIAL_TOKENS)]
    if not words:
        raise ValueError("build_tokenizer found no words in the training texts (empty corpus?)")
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + words)}
    backend.model = models.WordLevel(vocab=vocab, unk_token=UNK)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        # Our ids, not backend.token_to_id: that can return a stale trainer id when the corpus contains "<eos>".
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    return SentenceVAETokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def check_tokenizer_matches_model(tokenizer: PreTrainedTokenizerFast, config) -> None:
    """Raise a `ValueError` if the tokenizer's vocabulary or special ids differ from the model config's."""
    if len(tokenizer) != config.vocab_size:
        raise ValueError(
            f"tokenizer vocabulary size {len(tokenizer)} does not match the model's vocab_size {config.vocab_size}"
        )
    for name in ("pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) != getattr(config, name):
            raise ValueError(
                f"tokenizer {name}={getattr(tokenizer, name)} does not match the model's {name}={getattr(config, name)}"
            )


__all__ = [
    "SentenceVAETokenizerFast",
    "build_tokenizer",
    "check_tokenizer_matches_model",
    "special_token_string_counts",
    "SPECIAL_TOKENS",
]
