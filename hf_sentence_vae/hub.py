"""Pushing a Hub-ready run folder with `huggingface_hub` (model cards: see `render_model_card`)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers.utils import logging

logger = logging.get_logger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class HubPushError(RuntimeError):
    """A push to the Hub failed; the message says why (offline, unauthorised, ...)."""


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload sentence VAE",
) -> str:
    """Create `repo_id` (if needed) and upload `folder` to it; returns the commit URL.

    The folder is checked first (weights, config, tokenizer), so nothing is created for an incomplete
    folder. Network failures raise `HubPushError` naming the endpoint and the cause.
    """
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubPushError(f"{folder} is not a Hub-ready model folder: missing {', '.join(missing)}")
    from huggingface_hub import HfApi, constants

    token = token or os.environ.get("HF_TOKEN")
    endpoint = constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder), repo_id=repo_id, revision=revision, commit_message=commit_message
        )
    except Exception as err:  # httpx / OfflineModeIsEnabled / HfHubHTTPError all mean: not pushed
        raise HubPushError(
            f"could not push {folder} to {repo_id!r} at {endpoint}: {type(err).__name__}: {err}. "
            "Check the network (HF_HUB_OFFLINE must be unset), HF_ENDPOINT and HF_TOKEN."
        ) from err
    url = getattr(info, "commit_url", str(info))
    logger.info(f"pushed {folder} to {repo_id}: {url}")
    return url
