"""Adversarial evaluation of imputations (the paper's Section 5, Table 4).

Given true sentences and the same sentences with imputed endings, two discriminators are trained to tell
them apart: a bag-of-unigrams logistic regression (scikit-learn) and an LSTM classifier that reads the
sentence up to its end token (torch). The data set is balanced (each true sentence is a positive example,
its imputed version a negative one) and split 80/10/10 into train/dev/test by source sentence, so that a
sentence and its imputation always fall in the same split. Model selection uses the dev split (early
stopping for the LSTM, the regularisation strength for the logistic regression) and accuracy is measured on
the test split.

The paper defines the adversarial error as "the gap between the ideal accuracy of the discriminator (50%)
and the actual accuracy attained"; we report `adversarial_error = test accuracy (%) - 50`. Lower is
better: 0 means the imputations are indistinguishable from the truth, 50 that they are perfectly separable.
(A discriminator below chance gives a slightly negative value, which is noise around 0.)

The NLL column of Table 4 is [`sentence_nll`]: `-log p(x)` of the completed sentences under a separately
trained RNNLM, averaged over sentences.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .data import TokenizedCorpus

DEFAULT_SPLIT = (0.8, 0.1, 0.1)
DEFAULT_C_GRID = tuple(2.0**k for k in range(-6, 9))


def adversarial_error(accuracy: float) -> float:
    """The paper's adversarial error, in percentage points: `100 * accuracy - 50` (accuracy in [0, 1])."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    return 100.0 * accuracy - 50.0


@dataclass
class DiscriminatorResult:
    """Test accuracy (in [0, 1]), the adversarial error (percentage points), the dev accuracy of the selected
    model and the split sizes (in sentences, positives and negatives together)."""

    name: str
    test_accuracy: float
    adversarial_error: float
    dev_accuracy: float
    num_train: int
    num_dev: int
    num_test: int
    selected: dict

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class AdversarialSplits:
    """Balanced train/dev/test sets of texts with labels 1 (true sentence) and 0 (imputed sentence)."""

    train_texts: list[str]
    train_labels: np.ndarray
    dev_texts: list[str]
    dev_labels: np.ndarray
    test_texts: list[str]
    test_labels: np.ndarray

    def split(self, name: str) -> tuple[list[str], np.ndarray]:
        return getattr(self, f"{name}_texts"), getattr(self, f"{name}_labels")


def build_splits(
    true_texts: Sequence[str],
    imputed_texts: Sequence[str],
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
) -> AdversarialSplits:
    """Pair `true_texts[i]` (label 1) with `imputed_texts[i]` (label 0) and split the pairs train/dev/test.

    Splitting by pair keeps every split balanced and keeps a sentence's known prefix out of the other splits.
    """
    if len(true_texts) != len(imputed_texts):
        raise ValueError(f"got {len(true_texts)} true and {len(imputed_texts)} imputed texts: they must pair up")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    num_pairs = len(true_texts)
    num_dev = int(round(fractions[1] * num_pairs))
    num_test = int(round(fractions[2] * num_pairs))
    num_train = num_pairs - num_dev - num_test
    if min(num_train, num_dev, num_test) < 1:
        raise ValueError(f"{num_pairs} sentence pairs are too few for a train/dev/test split of {fractions}")
    order = np.random.default_rng(seed).permutation(num_pairs)
    parts = np.split(order, [num_train, num_train + num_dev])

    def gather(indices: np.ndarray) -> tuple[list[str], np.ndarray]:
        texts = [true_texts[i] for i in indices] + [imputed_texts[i] for i in indices]
        labels = np.concatenate([np.ones(len(indices), dtype=np.int64), np.zeros(len(indices), dtype=np.int64)])
        return texts, labels

    (tr, trl), (dv, dvl), (te, tel) = (gather(p) for p in parts)
    return AdversarialSplits(tr, trl, dv, dvl, te, tel)


# --------------------------------------------------------------------------------------------- unigram classifier
def train_unigram_discriminator(
    splits: AdversarialSplits, c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0
) -> DiscriminatorResult:
    """Bag-of-unigrams (binary word presence) L2 logistic regression; C chosen by dev accuracy."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = CountVectorizer(tokenizer=str.split, lowercase=False, binary=True, token_pattern=None)
    x_train = vectorizer.fit_transform(splits.train_texts)
    x_dev = vectorizer.transform(splits.dev_texts)
    x_test = vectorizer.transform(splits.test_texts)
    best = None
    for c in c_grid:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(x_train, splits.train_labels)
        dev_accuracy = float((clf.predict(x_dev) == splits.dev_labels).mean())
        if best is None or dev_accuracy > best[0]:
            best = (dev_accuracy, c, clf)
    dev_accuracy, c, clf = best
    test_accuracy = float((clf.predict(x_test) == splits.test_labels).mean())
    return DiscriminatorResult(
        "unigram",
        test_accuracy,
        adversarial_error(test_accuracy),
        dev_accuracy,
        len(splits.train_texts),
        len(splits.dev_texts),
        len(splits.test_texts),
        {"C": c, "vocabulary_size": len(vectorizer.vocabulary_)},
    )


# --------------------------------------------------------------------------------------------- LSTM classifier
class LSTMDiscriminator(nn.Module):
    """Embeds the words, runs an LSTM over `w_1 ... w_n <eos>` and maps its state at `<eos>` to a logit."""

    PAD, UNK, EOS = 0, 1, 2

    def __init__(self, vocab_size: int, embedding_size: int = 64, hidden_size: int = 128, dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_size, padding_idx=self.PAD)
        self.lstm = nn.LSTM(embedding_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(self.dropout(self.embed(ids)))
        index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
        return self.out(self.dropout(outputs.gather(1, index).squeeze(1))).squeeze(-1)


def _build_vocab(texts: Sequence[str], min_count: int = 1) -> dict[str, int]:
    counts = Counter(word for text in texts for word in text.split())
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return {w: i + 3 for i, w in enumerate(words)}


def _encode(texts: Sequence[str], vocab: dict[str, int]) -> list[list[int]]:
    unk, eos = LSTMDiscriminator.UNK, LSTMDiscriminator.EOS
    return [[vocab.get(w, unk) for w in text.split()] + [eos] for text in texts]


def _batches(encoded: list[list[int]], labels: np.ndarray, batch_size: int, order: np.ndarray, device):
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        lengths = torch.tensor([len(encoded[i]) for i in chunk])
        ids = torch.zeros((len(chunk), int(lengths.max())), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        yield ids.to(device), lengths.to(device), torch.tensor(labels[chunk], dtype=torch.float32, device=device)


def _accuracy(model, encoded, labels, batch_size, device) -> float:
    model.eval()
    correct = 0
    order = np.argsort([len(e) for e in encoded], kind="stable")
    with torch.no_grad():
        for ids, lengths, y in _batches(encoded, labels, batch_size, order, device):
            correct += int(((model(ids, lengths) > 0).float() == y).sum())
    return correct / max(len(encoded), 1)


def train_lstm_discriminator(
    splits: AdversarialSplits,
    embedding_size: int = 64,
    hidden_size: int = 128,
    dropout: float = 0.2,
    learning_rate: float = 1e-3,
    batch_size: int = 64,
    max_epochs: int = 30,
    patience: int = 3,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> DiscriminatorResult:
    """An LSTM logistic-regression classifier reading the sentence to its end token, trained with Adam and
    early stopping on dev accuracy (the best epoch's weights are restored before testing)."""
    if max_epochs < 1 or patience < 1:
        raise ValueError(f"need max_epochs >= 1 and patience >= 1, got {max_epochs} and {patience}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    vocab = _build_vocab(splits.train_texts)
    train_x = _encode(splits.train_texts, vocab)
    dev_x = _encode(splits.dev_texts, vocab)
    test_x = _encode(splits.test_texts, vocab)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):  # seeded, without touching the caller's random state
        torch.manual_seed(seed)
        model = LSTMDiscriminator(len(vocab) + 3, embedding_size, hidden_size, dropout).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        loss_fn = nn.BCEWithLogitsLoss()
        best_accuracy, best_state, best_epoch, waited = -1.0, None, 0, 0
        rng = np.random.default_rng(seed)
        epochs_run = 0
        for epoch in range(1, max_epochs + 1):
            epochs_run = epoch
            model.train()
            order = rng.permutation(len(train_x))
            for ids, lengths, y in _batches(train_x, splits.train_labels, batch_size, order, device):
                loss = loss_fn(model(ids, lengths), y)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
            dev_accuracy = _accuracy(model, dev_x, splits.dev_labels, 256, device)
            if dev_accuracy > best_accuracy:
                best_accuracy, best_epoch, waited = dev_accuracy, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                waited += 1
                if waited >= patience:
                    break
    model.load_state_dict(best_state)
    test_accuracy = _accuracy(model, test_x, splits.test_labels, 256, device)
    return DiscriminatorResult(
        "lstm",
        test_accuracy,
        adversarial_error(test_accuracy),
        best_accuracy,
        len(splits.train_texts),
        len(splits.dev_texts),
        len(splits.test_texts),
        {"best_epoch": best_epoch, "epochs_run": epochs_run, "vocabulary_size": len(vocab) + 3},
    )


def adversarial_evaluation(
    true_texts: Sequence[str],
    imputed_texts: Sequence[str],
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    lstm_kwargs: dict | None = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
) -> dict[str, dict]:
    """Both discriminators on one split of the pairs: `{"unigram": {...}, "lstm": {...}}`
    (see [`DiscriminatorResult`])."""
    splits = build_splits(true_texts, imputed_texts, fractions=fractions, seed=seed)
    unigram = train_unigram_discriminator(splits, c_grid=c_grid, seed=seed)
    lstm = train_lstm_discriminator(splits, seed=seed, **(lstm_kwargs or {}))
    return {"unigram": unigram.to_dict(), "lstm": lstm.to_dict()}


# --------------------------------------------------------------------------------------------- NLL under a scorer
def sentence_nll(model, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """`-log p(x)` of each text (nats, whole sentence with its end token) under an RNNLM scorer, in input order."""
    if not model.config.is_rnnlm:
        raise ValueError("the scorer must be an RNNLM (latent_size=0), whose log-likelihood is exact")
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not a single string")
    corpus, _ = TokenizedCorpus.from_sentences(tokenizer, list(texts))
    nll = np.zeros(len(texts), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for positions, batch in corpus.sorted_batches(batch_size):
                ids = batch["input_ids"].to(model.device)
                log_p = model.log_likelihood_given_latent(ids, batch["attention_mask"].to(model.device), None)
                nll[positions] = -log_p.double().cpu().numpy()
    finally:
        model.train(was_training)
    return nll


__all__ = [
    "AdversarialSplits",
    "DiscriminatorResult",
    "LSTMDiscriminator",
    "adversarial_error",
    "adversarial_evaluation",
    "build_splits",
    "sentence_nll",
    "train_lstm_discriminator",
    "train_unigram_discriminator",
]
