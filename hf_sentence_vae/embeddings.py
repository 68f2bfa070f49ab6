"""Posterior means as sentence embeddings (the paper's appendix, Tables 9 and 10).

- TREC question classification (Li and Roth, 2002): 6 coarse classes; an L2-regularised (multinomial)
  logistic regression on the posterior means, its strength chosen by 10-fold cross-validation on the
  training set; test accuracy.
- MSRP paraphrase detection (Dolan et al., 2004): features `[|u - v|, u * v]` of the two sentences' means
  (as in Kiros et al., 2015), an L2 logistic regression with cross-validated strength; test accuracy and F1.

A model trained on the Penn Treebank sees lower-cased text without punctuation, numbers as `N` and a
10k-word vocabulary: [`ptb_normalize`] maps TREC and MSRP text to that form (`normalize="auto"` does so for
tokenizers in `"pretokenized"` mode), and the results report the share of words that are still out of
vocabulary. Expect these numbers to be far below the paper's, whose 1200-unit VAE was trained on the Books
Corpus.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_C_GRID = tuple(2.0**k for k in range(-4, 9))
NORMALIZATIONS = ("auto", "ptb", "lower", "none")
TREC_FILES = ("train_5500.label", "TREC_10.label")
MSRP_FILES = ("msr_paraphrase_train.txt", "msr_paraphrase_test.txt")
MSRP_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


# --------------------------------------------------------------------------------------------- data
def _read_text(path: str | os.PathLike) -> str:
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass
class TRECData:
    """Questions with their coarse (`ABBR DESC ENTY HUM LOC NUM`) and fine (`DESC:manner`) labels."""

    texts: list[str]
    labels: list[str]
    fine_labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int) -> TRECData:
        return TRECData(self.texts[:n], self.labels[:n], self.fine_labels[:n])


def read_trec(path: str | os.PathLike) -> TRECData:
    """Read a TREC file (`train_5500.label` or `TREC_10.label`): one `COARSE:fine question` a line."""
    texts, labels, fine = [], [], []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        label, _, question = line.partition(" ")
        coarse, colon, _ = label.partition(":")
        if not colon or not question.strip():
            raise ValueError(f"{path}:{number}: expected 'COARSE:fine question', got {line[:80]!r}")
        texts.append(question.strip())
        labels.append(coarse)
        fine.append(label)
    return TRECData(texts, labels, fine)


@dataclass
class MSRPData:
    """Sentence pairs with labels 1 (paraphrase) or 0."""

    first: list[str]
    second: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.first)

    def subset(self, n: int) -> MSRPData:
        return MSRPData(self.first[:n], self.second[:n], self.labels[:n])


def read_msrp(path: str | os.PathLike) -> MSRPData:
    """Read an MSRP file: UTF-8 with BOM, CRLF, tab-separated, header `Quality #1 ID #2 ID #1 String #2 String`.

    Fields are split on tabs only (sentences contain quotes that are not CSV quoting)."""
    lines = _read_text(path).splitlines()
    if not lines or lines[0].split("\t") != MSRP_HEADER:
        raise ValueError(f"{path}: expected the MSRP header {MSRP_HEADER}, got {lines[:1]}")
    first, second, labels = [], [], []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 5 or fields[0] not in ("0", "1"):
            raise ValueError(f"{path}:{number}: expected 5 tab-separated fields with quality 0/1, got {line[:80]!r}")
        labels.append(int(fields[0]))
        first.append(fields[3].strip())
        second.append(fields[4].strip())
    return MSRPData(first, second, np.asarray(labels, dtype=np.int64))


# --------------------------------------------------------------------------------------------- normalisation
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "`": "'"})
_NEGATION = re.compile(r"(\w)n't\b")
_CLITIC = re.compile(r"(\w)'(s|re|ve|m|ll|d)\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|m|ll|d)\b|\d+(?:[,.:/-]\d+)*(?![a-z0-9-])|[a-z0-9]+(?:[-.&/][a-z0-9]+)*\.?|\S")
_NUMBER = re.compile(r"^\d[\d,.:/-]*$")
PTB_SYMBOLS = frozenset({"$", "&", "#"})


def ptb_normalize(text: str, vocab: set[str] | dict | None = None) -> str:
    """Map raw (or differently tokenized) English to the Penn Treebank language-modelling form: lower case,
    clitics split (`don't` -> `do n't`, `john's` -> `john 's`), numbers (and `%`) as `N`, punctuation
    dropped (except PTB's `$ & #`). A trailing period is kept on abbreviations found in `vocab` (`u.s.`)."""
    text = text.translate(_QUOTES).lower()
    text = _NEGATION.sub(r"\1 n't", text)
    text = _CLITIC.sub(r"\1 '\2", text)
    tokens = []
    for token in _TOKEN.findall(text):
        if token == "%":
            tokens.append("N")
            continue
        if len(token) > 1 and token.endswith(".") and (vocab is None or token not in vocab):
            token = token[:-1]
        if any(ch.isdigit() for ch in token) and _NUMBER.match(token):
            tokens.append("N")
        elif any(ch.isalnum() for ch in token) or token in PTB_SYMBOLS:
            tokens.append(token)
    return " ".join(tokens)


def resolve_normalization(tokenizer, normalize: str) -> str:
    """`"auto"` -> `"ptb"` for a tokenizer in `"pretokenized"` mode (e.g. PTB's), else `"none"` (a `"raw"`
    tokenizer lower-cases and splits punctuation itself)."""
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if normalize == "auto":
        return "ptb" if getattr(tokenizer, "text_mode", "pretokenized") == "pretokenized" else "none"
    return normalize


def normalize_texts(texts: Sequence[str], tokenizer, normalize: str = "auto") -> list[str]:
    """Apply the chosen normalisation (see [`resolve_normalization`])."""
    mode = resolve_normalization(tokenizer, normalize)
    if mode == "ptb":
        vocab = tokenizer.get_vocab()
        return [ptb_normalize(t, vocab) for t in texts]
    if mode == "lower":
        return [t.lower() for t in texts]
    return list(texts)


def oov_rate(tokenizer, texts: Sequence[str]) -> float:
    """Share of word tokens the tokenizer maps to `<unk>`."""
    total = unknown = 0
    special = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    for ids in tokenizer(list(texts))["input_ids"]:
        words = [i for i in ids if i not in special]
        total += len(words)
        unknown += sum(i == tokenizer.unk_token_id for i in words)
    return unknown / max(total, 1)


# --------------------------------------------------------------------------------------------- features
def embed(model, tokenizer, texts: Sequence[str], batch_size: int = 128, normalize: str = "auto") -> np.ndarray:
    """`(N, Z)` posterior means of the (normalised) texts, as float64 numpy."""
    from .analysis import posterior_means

    if model.config.is_rnnlm:
        raise ValueError("sentence embeddings need a VAE (latent_size > 0); this model is an RNNLM")
    mu, _ = posterior_means(model, tokenizer, normalize_texts(texts, tokenizer, normalize), batch_size=batch_size)
    return mu.double().numpy()


def pair_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Kiros et al. (2015)'s pair features: the concatenation `[|u - v|, u * v]`."""
    return np.concatenate([np.abs(u - v), u * v], axis=1)


def _cv_logistic_regression(x, y, c_grid, cv_folds, seed, standardize):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make(c):
        clf = LogisticRegression(C=c, max_iter=5000)
        return make_pipeline(StandardScaler(), clf) if standardize else clf

    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    scores = {c: float(np.mean(cross_val_score(make(c), x, y, cv=folds, scoring="accuracy"))) for c in c_grid}
    best_c = max(c_grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    model = make(best_c).fit(x, y)
    return model, best_c, scores[best_c]


def evaluate_trec(
    model,
    tokenizer,
    train: TRECData,
    test: TRECData,
    normalize: str = "auto",
    cv_folds: int = 10,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    standardize: bool = False,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, object]:
    """TREC coarse question classification on posterior means (Table 10)."""
    mode = resolve_normalization(tokenizer, normalize)
    x_train = embed(model, tokenizer, train.texts, batch_size, mode)
    x_test = embed(model, tokenizer, test.texts, batch_size, mode)
    clf, c, cv_accuracy = _cv_logistic_regression(
        x_train, np.asarray(train.labels), c_grid, cv_folds, seed, standardize
    )
    accuracy = float((clf.predict(x_test) == np.asarray(test.labels)).mean())
    majority = max(set(train.labels), key=train.labels.count)
    return {
        "task": "trec",
        "accuracy": 100.0 * accuracy,
        "majority_class_accuracy": 100.0 * float(np.mean(np.asarray(test.labels) == majority)),
        "cv_accuracy": 100.0 * cv_accuracy,
        "C": c,
        "cv_folds": cv_folds,
        "standardize": standardize,
        "num_train": len(train),
        "num_test": len(test),
        "num_classes": len(set(train.labels)),
        "feature_dim": int(x_train.shape[1]),
        "normalize": mode,
        "oov_rate_test": oov_rate(tokenizer, normalize_texts(test.texts, tokenizer, mode)),
    }


def fine_tune_trec(
    model_name_or_path: str | os.PathLike,
    tokenizer,
    train: TRECData,
    test: TRECData,
    normalize: str = "auto",
    epochs: int = 10,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, object]:
    """TREC coarse question classification by fine-tuning: the VAE's encoder in `model_name_or_path` with a linear
    classifier on its posterior mean ([`SentenceVAEForSequenceClassification`]), trained end to end by
    `transformers.Trainer` (Adam, linear decay, cross entropy) for `epochs` on the training set; test accuracy after
    the last epoch (nothing is selected on the test set). Needs the `train` extra (`accelerate`)."""
    import tempfile

    import torch
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    from .modeling_sentence_vae import SentenceVAEForSequenceClassification

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    classes = sorted(set(train.labels))
    unseen = sorted(set(test.labels) - set(classes))
    if unseen:
        raise ValueError(f"test labels {unseen} do not occur in the training set")
    label_ids = {label: i for i, label in enumerate(classes)}
    mode = resolve_normalization(tokenizer, normalize)

    def rows(data: TRECData) -> list[dict]:
        encoded = tokenizer(normalize_texts(data.texts, tokenizer, mode))
        return [
            {"input_ids": ids, "attention_mask": mask, "labels": label_ids[label]}
            for ids, mask, label in zip(encoded["input_ids"], encoded["attention_mask"], data.labels)
        ]

    torch.manual_seed(seed)  # the classifier's initial weights
    model = SentenceVAEForSequenceClassification.from_pretrained(
        model_name_or_path, num_labels=len(classes), id2label=dict(enumerate(classes)), label2id=label_ids
    )
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=str(output_dir or scratch),
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=batch_size,
            learning_rate=learning_rate,
            num_train_epochs=epochs,
            lr_scheduler_type="linear",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            seed=seed,
        )
        collator = DataCollatorWithPadding(tokenizer)
        trainer = Trainer(model=model, args=args, train_dataset=rows(train), data_collator=collator)
        trainer.remove_callback(PrinterCallback)  # stdout carries the scripts' JSON
        trained = trainer.train()
        test_rows = rows(test)
        predictions = trainer.predict(test_rows)
    logits = predictions.predictions[0] if isinstance(predictions.predictions, tuple) else predictions.predictions
    accuracy = float((np.asarray(logits).argmax(-1) == np.asarray([row["labels"] for row in test_rows])).mean())
    return {
        "task": "trec",
        "method": "fine-tuned encoder + linear classifier on the posterior mean",
        "accuracy": 100.0 * accuracy,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "batch_size": batch_size,
        "final_training_loss": float(trained.training_loss),
        "num_train": len(train),
        "num_test": len(test),
        "classes": classes,
        "normalize": mode,
    }


def evaluate_msrp(
    model,
    tokenizer,
    train: MSRPData,
    test: MSRPData,
    normalize: str = "auto",
    cv_folds: int = 10,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    standardize: bool = False,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, object]:
    """MSRP paraphrase detection on `[|u - v|, u * v]` of posterior means (Table 9): accuracy and F1."""
    from sklearn.metrics import f1_score

    mode = resolve_normalization(tokenizer, normalize)

    def features(data: MSRPData) -> np.ndarray:
        both = embed(model, tokenizer, data.first + data.second, batch_size, mode)
        return pair_features(both[: len(data)], both[len(data) :])

    x_train, x_test = features(train), features(test)
    clf, c, cv_accuracy = _cv_logistic_regression(x_train, train.labels, c_grid, cv_folds, seed, standardize)
    predicted = clf.predict(x_test)
    return {
        "task": "msrp",
        "accuracy": 100.0 * float((predicted == test.labels).mean()),
        "f1": 100.0 * float(f1_score(test.labels, predicted)),
        "majority_class_accuracy": 100.0 * float(max(test.labels.mean(), 1.0 - test.labels.mean())),
        "cv_accuracy": 100.0 * cv_accuracy,
        "C": c,
        "cv_folds": cv_folds,
        "standardize": standardize,
        "num_train": len(train),
        "num_test": len(test),
        "feature_dim": int(x_train.shape[1]),
        "normalize": mode,
        "oov_rate_test": oov_rate(tokenizer, normalize_texts(test.first + test.second, tokenizer, mode)),
    }


__all__ = [
    "MSRPData",
    "TRECData",
    "embed",
    "evaluate_msrp",
    "evaluate_trec",
    "normalize_texts",
    "oov_rate",
    "pair_features",
    "ptb_normalize",
    "read_msrp",
    "read_trec",
    "resolve_normalization",
]
