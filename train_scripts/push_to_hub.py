#!/usr/bin/env python
"""Push a trained sentence VAE to the Hugging Face Hub.

    python train_scripts/push_to_hub.py runs/ptb/vae_standard --repo_id you/sentence-vae-ptb --license apache-2.0
        [--private] [--revision BRANCH] [--token TOKEN] [--commit_message MSG] [--keep_card] [--staging_dir DIR]
        [--dry_run]

SOURCE is a run folder (holding `best/`) or a saved model folder. What the repository gets is staged first:
the weights (safetensors), `config.json` (with `auto_map` and `custom_pipelines`), the tokenizer, the remote-code
`.py` files, `pipelines.py`, the training configuration and results, the run's `metrics.jsonl` and
`training_curves.png`, and a `README.md` model card rendered for REPO_ID (`--keep_card` keeps an existing card).
Nothing else (no checkpoints or optimizer states) is uploaded, in one commit.

The card states `--license` (else the one chosen at training time with `train.py --license`); a push needs one: a
card without a license (`license: other` and a note saying none was chosen) is only staged.

The token comes from `--token`, else `HF_TOKEN`, else the stored login; the endpoint from `HF_ENDPOINT`
(`--endpoint` overrides). Before anything is staged or created, the command checks offline mode, the token and
that the endpoint answers within `--timeout` seconds, and exits with status 1 and a message naming the problem.
`--dry_run` only stages (into `--staging_dir` if given) and lists the files.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from hf_sentence_vae.hub import HubPushError, preflight, push_folder, resolve_model_folder, stage_folder
from hf_sentence_vae.model_card import resolve_license
from hf_sentence_vae.script_runner import run_script

logger = logging.getLogger("push_to_hub")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run folder (with best/) or saved model folder")
    parser.add_argument("--repo_id", required=True, help="user/name or org/name")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing); default main")
    parser.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN, then the stored login)")
    parser.add_argument("--commit_message", default="Upload sentence VAE")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the endpoint to answer")
    parser.add_argument(
        "--license",
        default=None,
        help="Hub license id for the card (e.g. apache-2.0, mit, cc-by-4.0); default: the one chosen at training "
        "time; pushing needs one",
    )
    parser.add_argument("--keep_card", action="store_true", help="keep an existing README.md instead of rendering")
    parser.add_argument("--staging_dir", default=None, help="stage here (new or empty folder) instead of a temp dir")
    parser.add_argument("--dry_run", action="store_true", help="stage and list the files, push nothing")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"--timeout must be > 0, got {args.timeout}")
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/"):
        parser.error(f"--repo_id must look like 'name' or 'namespace/name', got {args.repo_id!r}")
    return args


def push(argv: Sequence[str] | None = None) -> None:
    """Stage (and unless `--dry_run`, push) as the arguments say; prints the staging folder or the commit URL."""
    args = parse_args(argv)
    model_dir, run_dir = resolve_model_folder(args.source)
    try:
        license = resolve_license(model_dir, args.license)  # noqa: A001
    except ValueError as err:
        raise HubPushError(str(err)) from None
    if license is None and not args.dry_run and not args.keep_card:
        raise HubPushError(
            f"no license chosen for {args.source}: pass --license (a Hub license id, e.g. apache-2.0, mit, cc-by-4.0)"
        )
    endpoint, token = (None, args.token)
    if not args.dry_run:  # fail fast, before staging renders anything
        endpoint, token = preflight(args.repo_id, args.token, args.endpoint, args.timeout, what=args.source)
    with tempfile.TemporaryDirectory(prefix="sentence_vae_push_") as tmp:
        staging = Path(args.staging_dir) if args.staging_dir else Path(tmp) / "repo"
        stage_folder(args.source, staging, repo_id=args.repo_id, render_card=not args.keep_card, license=license)
        names = sorted(p.name for p in staging.iterdir())
        logger.info("staged %s (run %s) in %s: %s", model_dir, run_dir, staging, ", ".join(names))
        if args.dry_run:
            sys.stdout.write(f"{staging}\n")
            return
        url = push_folder(
            staging,
            args.repo_id,
            token=token,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            endpoint=endpoint,
            timeout=args.timeout,
        )
    sys.stdout.write(f"{url}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Push as the flags say; returns the process's exit status: 1 when the push fails or is refused (see
    `hf_sentence_vae.script_runner` for the others)."""
    return run_script(push, argv, error_status={HubPushError: 1})


if __name__ == "__main__":
    sys.exit(main())
