"""hf_sentence_vae: the sentence VAE of Bowman et al. (2016) as a Hugging Face transformers plugin."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

EXTRAS = {
    "train": ["accelerate>=1.3", "datasets>=3.0", "tqdm", "pyyaml", "matplotlib", "tensorboard"],
    "eval": ["evaluate>=0.4", "scikit-learn>=1.4.2", "sacrebleu>=2.0"],
    "hub": ["huggingface_hub>=1.0", "jinja2"],
    "test": ["pytest>=8", "pytest-timeout", "hypothesis"],
    "dev": ["ruff"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="hf_sentence_vae",
    version="0.1.0",
    description="The sentence VAE of Bowman et al. (2016) as a Hugging Face transformers model and tokenizer plugin",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_sentence_vae", "hf_sentence_vae.*"]),
    package_data={"hf_sentence_vae": ["templates/*.j2"]},  # the model card's template
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6,<=2.14.1",
        "transformers>=5.18,<6",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        "numpy>=1.17",
    ],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
