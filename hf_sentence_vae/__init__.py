"""hf_sentence_vae: the sentence VAE of Bowman et al. (2016) as a Hugging Face `transformers` plugin.

Importing the package registers `SentenceVAEConfig`, `SentenceVAEModel`, `SentenceVAEForSequenceClassification` and
`SentenceVAETokenizerFast` with `AutoConfig`, `AutoModel`, `AutoModelForSequenceClassification` and `AutoTokenizer`,
and marks them for `trust_remote_code` saving, so `save_pretrained` folders load in processes that do not have this
package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from . import pipelines  # noqa: F401  (registers the "sentence-vae" pipeline task)
from .configuration_sentence_vae import SentenceVAEConfig
from .modeling_sentence_vae import (
    SentenceVAEForSequenceClassification,
    SentenceVAEGenerationOutput,
    SentenceVAEModel,
    SentenceVAEOutput,
    SentenceVAEPreTrainedModel,
)
from .tokenization_sentence_vae_fast import (
    SentenceVAETokenizerFast,
    build_tokenizer,
    check_tokenizer_matches_model,
)

__version__ = "0.1.0"

AutoConfig.register(SentenceVAEConfig.model_type, SentenceVAEConfig, exist_ok=True)
AutoModel.register(SentenceVAEConfig, SentenceVAEModel, exist_ok=True)
AutoModelForSequenceClassification.register(SentenceVAEConfig, SentenceVAEForSequenceClassification, exist_ok=True)
AutoTokenizer.register(SentenceVAEConfig, fast_tokenizer_class=SentenceVAETokenizerFast, exist_ok=True)
SentenceVAEConfig.register_for_auto_class()
SentenceVAEModel.register_for_auto_class("AutoModel")
SentenceVAEForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
SentenceVAETokenizerFast.register_for_auto_class("AutoTokenizer")

__all__ = [
    "SentenceVAEConfig",
    "SentenceVAEModel",
    "SentenceVAEForSequenceClassification",
    "SentenceVAEPreTrainedModel",
    "SentenceVAEOutput",
    "SentenceVAEGenerationOutput",
    "SentenceVAETokenizerFast",
    "build_tokenizer",
    "check_tokenizer_matches_model",
]
