"""Explore a trained sentence VAE's latent space (the paper's Section 6): decodes of prior samples (Table 5),
of stretched lower-probability prior samples (Table 6), of posterior means and samples (Table 7), and
homotopies (Tables 8 and 12); `report` writes all of them to a markdown file with a PNG of posterior means
projected to 2-D by PCA, coloured by sentence length.

    python train_scripts/generate.py prior      --model_name_or_path runs/ptb/vae_standard/best --num_samples 10
    python train_scripts/generate.py stretched  --model_name_or_path ... --num_samples 10 --c 0.1
    python train_scripts/generate.py posterior  --model_name_or_path ... --texts "the company said ..." ...
    python train_scripts/generate.py homotopy   --model_name_or_path ... --start "..." --end "..." --steps 7
    python train_scripts/generate.py homotopy   --model_name_or_path ... --random --num_paths 5
    python train_scripts/generate.py report     --model_name_or_path ... \
        --texts_file ../shared/data/ptb/ptb.test.txt --output_dir results/analysis

Every subcommand prints JSON (and writes it to --output_file when given). Decoding follows the model's
`generation_config.json` (a trained model's: beam search with 5 beams, `<unk>` suppressed where the training text
had it); `--num_beams 1` decodes greedily as the paper did, `--allow_unk` / `--suppress_unk` override the
suppression, `--output_layer_dtype mixed` gives the float32 sentences (up to near-ties within float32 rounding) faster (greedy
search most on CPUs with AVX-512 BF16). A homotopy lists every one of its --steps points (--collapse_repeats shows consecutive duplicates
once, as the paper's tables do). The paper's models were trained on the Books Corpus; ours on the Penn Treebank.

Input files are read lazily: `posterior --input_file` reads only its first --max_sentences sentences, and `report`
reads --texts_file once, keeping the --pca_sentences first sentences and a seeded uniform sample (reservoir
sampling) for the tables, so memory does not grow with the file. Bad input (a missing, empty or non-UTF-8 file, a
model folder that does not exist or does not match its config, an impossible value) ends with one line
`error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from collections.abc import Sequence
from itertools import islice
from pathlib import Path

import torch

from hf_sentence_vae import analysis
from hf_sentence_vae.configuration_sentence_vae import MAX_SENTENCE_LENGTH_LIMIT
from hf_sentence_vae.data import iter_kept_sentences, load_sentences
from hf_sentence_vae.script_runner import add_common_arguments, emit_json, run_script

logger = logging.getLogger("generate")


def _common(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, model="save_pretrained folder (model + tokenizer)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: the config's maximum")
    parser.add_argument(
        "--num_beams",
        type=int,
        default=None,
        help="beam width; default: the model's generation_config (5 for a trained model); 1 = greedy decoding "
        "(the paper's choice)",
    )
    parser.add_argument(
        "--output_layer_dtype",
        choices=["float32", "bfloat16", "mixed"],
        default=None,
        help="precision of the output layer's products in greedy and beam search; default: the model's "
        "generation_config (float32); mixed = the float32 sentences (up to near-ties within float32 rounding), "
        "faster: greedy search from a bfloat16 screen (on CPUs with AVX-512 BF16 or AMX), and an LSTM step that looks "
        "its word inputs up",
    )
    unk = parser.add_mutually_exclusive_group()
    unk.add_argument("--suppress_unk", action="store_true", help="never generate <unk> (suppress_tokens)")
    unk.add_argument(
        "--allow_unk", action="store_true", help="let <unk> be generated even where the generation_config suppresses it"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    prior = sub.add_parser("prior", help="greedy decodes of prior samples (Table 5)")
    _common(prior)
    prior.add_argument("--num_samples", type=int, default=10)

    stretched = sub.add_parser("stretched", help="decodes of stretched prior samples (Table 6)")
    _common(stretched)
    stretched.add_argument("--num_samples", type=int, default=10)
    stretched.add_argument("--c", type=float, default=0.1, help="entries of M - I uniform in [-c, c]")

    posterior = sub.add_parser("posterior", help="posterior mean and samples for given sentences (Table 7)")
    _common(posterior)
    posterior.add_argument("--texts", nargs="+", default=None, help="sentences to encode")
    posterior.add_argument("--input_file", default=None, help="or: one sentence a line")
    posterior.add_argument("--max_sentences", type=int, default=10)
    posterior.add_argument("--num_samples", type=int, default=3, help="posterior samples per sentence")

    homotopy = sub.add_parser("homotopy", help="homotopies between sentences or random points (Tables 8, 12)")
    _common(homotopy)
    homotopy.add_argument("--start", default=None, help="first sentence")
    homotopy.add_argument("--end", default=None, help="last sentence")
    homotopy.add_argument("--random", action="store_true", help="between pairs of random prior points")
    homotopy.add_argument("--num_paths", type=int, default=5, help="with --random")
    homotopy.add_argument("--steps", type=int, default=7, help="points on each path, both ends included")
    homotopy.add_argument(
        "--collapse_repeats",
        action="store_true",
        help="show consecutive duplicate sentences once (default: every step)",
    )

    report = sub.add_parser("report", help="all of the above as markdown + a PCA plot of posterior means")
    _common(report)
    report.add_argument("--texts_file", required=True, help="sentences for the posterior/homotopy/PCA parts")
    report.add_argument("--output_dir", required=True)
    report.add_argument("--num_samples", type=int, default=10, help="prior and stretched samples")
    report.add_argument("--c", type=float, default=0.1)
    report.add_argument("--num_posterior", type=int, default=3, help="sentences for the posterior table")
    report.add_argument("--posterior_samples", type=int, default=3)
    report.add_argument("--num_homotopies", type=int, default=3, help="paths between sentences and random points")
    report.add_argument("--steps", type=int, default=7)
    report.add_argument("--min_words", type=int, default=4, help="sentences picked for the tables: word range")
    report.add_argument("--max_words", type=int, default=12)
    report.add_argument("--pca_sentences", type=int, default=2000, help="sentences encoded for the PCA plot")
    report.add_argument("--batch_size", type=int, default=128)
    report.add_argument("--title", default=None, help="report title (default: the model path)")

    args = parser.parse_args(argv)
    if args.command == "homotopy" and not args.random and not (args.start and args.end):
        parser.error("homotopy needs --start and --end, or --random")
    if args.command == "posterior" and not (args.texts or args.input_file):
        parser.error("posterior needs --texts or --input_file")
    _check_values(args)
    return args


# Smallest allowed value of each count (flags a subcommand lacks are skipped).
_MINIMUMS = {
    "num_samples": 1,
    "num_beams": 1,
    "max_sentences": 1,
    "num_paths": 1,
    "steps": 2,
    "num_posterior": 1,
    "posterior_samples": 0,
    "num_homotopies": 0,
    "min_words": 1,
    "pca_sentences": 2,
    "batch_size": 1,
}


def _check_values(args: argparse.Namespace) -> None:
    """A `ValueError` naming the first impossible value."""
    minimums = dict(_MINIMUMS, num_samples=0 if args.command == "posterior" else 1)
    for name, minimum in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be >= {minimum}, got {value}")
    if args.max_new_tokens is not None and not 1 <= args.max_new_tokens <= MAX_SENTENCE_LENGTH_LIMIT:
        raise ValueError(f"--max_new_tokens must be in [1, {MAX_SENTENCE_LENGTH_LIMIT:,}], got {args.max_new_tokens}")
    c = getattr(args, "c", None)
    if c is not None and not (math.isfinite(c) and c >= 0):
        raise ValueError(f"--c must be a finite number >= 0, got {c}")
    if getattr(args, "max_words", None) is not None and args.max_words < args.min_words:
        raise ValueError(f"--max_words ({args.max_words}) must be >= --min_words ({args.min_words})")


def _generate_kwargs(args: argparse.Namespace, tokenizer) -> dict:
    """The command line's changes to the model's generation_config."""
    kwargs = {}
    if args.num_beams is not None:
        kwargs["num_beams"] = args.num_beams
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.output_layer_dtype is not None:
        kwargs["output_layer_dtype"] = args.output_layer_dtype
    if args.suppress_unk:
        kwargs["suppress_tokens"] = [tokenizer.unk_token_id]
    if args.allow_unk:
        kwargs["suppress_tokens"] = None
    return kwargs


def _paths(paths: list[list[str]], collapse_repeats: bool) -> list[list[str]]:
    return [analysis.collapse_repeats(p) for p in paths] if collapse_repeats else paths


def run_prior(model, tokenizer, args, generator) -> dict:
    samples = analysis.prior_samples(
        model, tokenizer, args.num_samples, generator=generator, **_generate_kwargs(args, tokenizer)
    )
    return {"command": "prior", "samples": samples}


def run_stretched(model, tokenizer, args, generator) -> dict:
    codes = analysis.stretched_prior_codes(model, args.num_samples, c=args.c, generator=generator)
    kwargs = _generate_kwargs(args, tokenizer)
    singular = codes["singular_values"]
    return {
        "command": "stretched",
        "c": args.c,
        "max_stretch": float(singular.max()),
        "min_stretch": float(singular.min()),
        "mean_log_prior": float(codes["log_prior"].mean()),
        "mean_stretched_log_prior": float(codes["stretched_log_prior"].mean()),
        "samples": analysis.decode(model, tokenizer, codes["stretched"], **kwargs),
        "unstretched_samples": analysis.decode(model, tokenizer, codes["z"], **kwargs),
    }


def run_posterior(model, tokenizer, args, generator) -> dict:
    texts = list(args.texts or [])
    if args.input_file:
        texts += load_sentences(args.input_file, tokenizer, args.max_sentences, label="--input_file")
    rows = analysis.posterior_decodes(
        model, tokenizer, texts, num_samples=args.num_samples, generator=generator, **_generate_kwargs(args, tokenizer)
    )
    return {"command": "posterior", "rows": rows}


def run_homotopy(model, tokenizer, args, generator) -> dict:
    kwargs = _generate_kwargs(args, tokenizer)
    if args.random:
        paths = analysis.random_homotopies(model, tokenizer, args.num_paths, args.steps, generator, **kwargs)
        return {"command": "homotopy", "between": "random prior points", "paths": _paths(paths, args.collapse_repeats)}
    path = analysis.homotopy(model, tokenizer, args.start, args.end, steps=args.steps, **kwargs)
    return {
        "command": "homotopy",
        "between": [args.start, args.end],
        "paths": _paths([path], args.collapse_repeats),
    }


def run_report(model, tokenizer, args, generator) -> dict:
    kwargs = _generate_kwargs(args, tokenizer)
    wanted = args.num_posterior + 2 * args.num_homotopies
    pca_texts, picked, count = _read_texts_file(args, tokenizer, wanted)
    if count < 2:
        raise ValueError(f"--texts_file {str(args.texts_file)!r} needs at least 2 sentences, found {count}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    posterior_texts = picked[: args.num_posterior]
    pair_texts = picked[args.num_posterior :]
    pairs = [(pair_texts[2 * i], pair_texts[2 * i + 1]) for i in range(len(pair_texts) // 2)]

    prior = analysis.prior_samples(model, tokenizer, args.num_samples, generator=generator, **kwargs)
    codes = analysis.stretched_prior_codes(model, args.num_samples, c=args.c, generator=generator)
    stretched = analysis.decode(model, tokenizer, codes["stretched"], **kwargs)
    posterior = analysis.posterior_decodes(
        model, tokenizer, posterior_texts, num_samples=args.posterior_samples, generator=generator, **kwargs
    )
    sentence_paths = [analysis.homotopy(model, tokenizer, a, b, steps=args.steps, **kwargs) for a, b in pairs]
    random_paths = analysis.random_homotopies(model, tokenizer, args.num_homotopies, args.steps, generator, **kwargs)

    pca_lengths = [len(ids) - 2 for ids in tokenizer(pca_texts)["input_ids"]]
    means, _ = analysis.posterior_means(model, tokenizer, pca_texts, batch_size=args.batch_size)
    png = analysis.plot_latent_pca(means, pca_lengths, out / "latent_pca.png")
    _, ratio = analysis.pca_2d(means)
    correlation = analysis.length_correlation(means, pca_lengths)

    singular = codes["singular_values"]
    results = {
        "command": "report",
        "model_name_or_path": str(args.model_name_or_path),
        "texts_file": str(args.texts_file),
        "decoding": analysis.describe_decoding(model, tokenizer, **kwargs),
        "prior_samples": prior,
        "stretched": {
            "c": args.c,
            "max_stretch": float(singular.max()),
            "min_stretch": float(singular.min()),
            "mean_log_prior": float(codes["log_prior"].mean()),
            "mean_stretched_log_prior": float(codes["stretched_log_prior"].mean()),
            "samples": stretched,
        },
        "posterior": posterior,
        "sentence_homotopies": [
            {"start": a, "end": b, "path": analysis.collapse_repeats(p)} for (a, b), p in zip(pairs, sentence_paths)
        ],
        "random_homotopies": [analysis.collapse_repeats(p) for p in random_paths],
        "pca": {
            "num_sentences": len(pca_texts),
            "explained_variance_ratio": [float(r) for r in ratio],
            "length_correlation": correlation,
            "plot": str(png),
        },
    }
    markdown = report_markdown(results, args)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    (out / "report.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["report"] = str(out / "report.md")
    return results


def _read_texts_file(args: argparse.Namespace, tokenizer, wanted: int) -> tuple[list[str], list[str], int]:
    """One lazy pass over --texts_file: its first --pca_sentences sentences, `wanted` sentences drawn uniformly
    (reservoir sampling, seeded with --seed) among those of --min_words to --max_words words (among all sentences
    if none is in that range), and the number of sentences."""
    rng = random.Random(args.seed)
    first: list[str] = []
    in_range: list[str] = []
    any_length: list[str] = []
    seen = {"in_range": 0, "any": 0}
    count = 0
    sentences = iter_kept_sentences(args.texts_file, label="--texts_file")
    while chunk := list(islice(sentences, 1024)):
        lengths = [len(ids) - 2 for ids in tokenizer(chunk)["input_ids"]]
        for text, n in zip(chunk, lengths):
            count += 1
            if len(first) < args.pca_sentences:
                first.append(text)
            _reservoir(any_length, text, wanted, seen, "any", rng)
            if args.min_words <= n <= args.max_words:
                _reservoir(in_range, text, wanted, seen, "in_range", rng)
    return first, in_range or any_length, count


def _reservoir(sample: list[str], item: str, size: int, seen: dict[str, int], key: str, rng: random.Random) -> None:
    """Algorithm R: after n items, `sample` holds min(n, size) of them, each equally likely."""
    seen[key] += 1
    if len(sample) < size:
        sample.append(item)
        return
    slot = rng.randrange(seen[key])
    if slot < size:
        sample[slot] = item


def report_markdown(results: dict, args: argparse.Namespace) -> str:
    title = args.title or f"Latent-space analysis of {results['model_name_or_path']}"
    decoding = results["decoding"]
    stretched = results["stretched"]
    pca = results["pca"]
    lines = [
        f"# {title}",
        "",
        f"Trained on the Penn Treebank (the paper's Section 6 models used the Books Corpus, which is not available). "
        f"All sentences are decoded with {decoding}; seed {args.seed}.",
        "",
        "## Sentences decoded from prior samples (cf. Table 5)",
        "",
        *[f"- {s}" for s in results["prior_samples"]],
        "",
        "## Lower-probability samples: a random volume-preserving stretch of prior samples (cf. Table 6)",
        "",
        f"M = I + U, U uniform in [-{stretched['c']}, {stretched['c']}], |det M| = 1; singular values of M "
        f"in [{stretched['min_stretch']:.2f}, {stretched['max_stretch']:.2f}]; mean log prior density "
        f"{stretched['mean_log_prior']:.2f} before and {stretched['mean_stretched_log_prior']:.2f} after.",
        "",
        *[f"- {s}" for s in stretched["samples"]],
        "",
        "## Posterior mean and samples (cf. Table 7)",
        "",
        "| input | mean | " + " | ".join(f"sample {i + 1}" for i in range(args.posterior_samples)) + " |",
        "|---" * (2 + args.posterior_samples) + "|",
    ]
    for row in results["posterior"]:
        lines.append("| " + " | ".join([row["input"], row["mean"], *row["samples"]]) + " |")
    lines += ["", "## Homotopies between sentences (posterior means; cf. Table 8)", ""]
    for item in results["sentence_homotopies"]:
        lines += [f"From *{item['start']}* to *{item['end']}*:", ""]
        lines += [f"{i}. {s}" for i, s in enumerate(item["path"], 1)] + [""]
    lines += ["## Homotopies between random points of the prior (cf. Tables 8 and 12)", ""]
    for number, path in enumerate(results["random_homotopies"], 1):
        lines += [f"Path {number}:", ""] + [f"{i}. {s}" for i, s in enumerate(path, 1)] + [""]
    lines += [
        "Consecutive duplicates along a path are shown once.",
        "",
        "## Posterior means in 2-D (PCA)",
        "",
        f"{pca['num_sentences']} sentences of `{Path(results['texts_file']).name}`; the first two components "
        f"explain {100 * pca['explained_variance_ratio'][0]:.1f}% and {100 * pca['explained_variance_ratio'][1]:.1f}% "
        f"of the variance; their correlations with sentence length are {pca['length_correlation'][0]:.2f} and "
        f"{pca['length_correlation'][1]:.2f}.",
        "",
        f"![posterior means, PCA]({Path(pca['plot']).name})",
        "",
    ]
    return "\n".join(lines)


COMMANDS = {
    "prior": run_prior,
    "stretched": run_stretched,
    "posterior": run_posterior,
    "homotopy": run_homotopy,
    "report": run_report,
}


def generate(argv: Sequence[str] | None = None) -> dict:
    """Run the subcommand the arguments name; prints (and writes) its JSON and returns it."""
    args = parse_args(argv)
    model, tokenizer = analysis.load_pretrained(args.model_name_or_path, args.tokenizer_name_or_path, args.device)
    if model.config.is_rnnlm:
        raise ValueError("this model is an RNNLM (latent_size=0): it has no latent space to explore")
    generator = torch.Generator(device=model.device).manual_seed(args.seed)
    with torch.no_grad():
        results = COMMANDS[args.command](model, tokenizer, args, generator)
    emit_json(results, args.output_file)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run as the flags say; returns the process's exit status (see `hf_sentence_vae.script_runner`)."""
    return run_script(generate, argv)


if __name__ == "__main__":
    sys.exit(main())
