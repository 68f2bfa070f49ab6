"""Sharing on the Hub: Hub-ready folders, and pushes with `huggingface_hub`.

- `add_pipeline(folder)`: ship `pipelines.py` as remote code (`custom_pipelines` in `config.json`), so
  `pipeline(model=folder, trust_remote_code=True)` works without this package.
- `finalize_model_folder(folder)`: that, then the model card (`model_card.render_model_card`); the training loop
  calls it on `best/` at the end of a run.
- `stage_folder(source, dest)`: collect what a repository should hold from a run folder (`best/` plus the run's
  `metrics.jsonl`, `training_curves.png`, `results.json`) into `dest`, nothing else (no optimizer states).
- `validate_folder(folder)`: raise `HubPushError` unless the folder is Hub-ready (its remote code followed the way
  `transformers` follows it).
- `push_folder(folder, repo_id)`: checks first (folder, offline mode, token, endpoint reachable within seconds),
  then `create_repo`, `create_branch` for `revision`, and one `upload_folder` commit. A repository created by
  a push that then fails is deleted again, so a failed push leaves nothing half-done.

`hub.py` and `pipelines.py` are not part of the remote-code closure: a stranger needs neither.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import get_relative_imports
from transformers.utils import logging

from .model_card import HUB_PATTERNS, NO_LICENSE_NOTE, check_card, is_hub_file, read_json_object, render_model_card

logger = logging.get_logger(__name__)

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
RUN_ARTIFACTS = ("metrics.jsonl", "training_curves.png", "results.json")
PIPELINE_FILE = "pipelines.py"
PIPELINE_TASK = "sentence-vae"  # the task this package registers with transformers' pipeline registry
# The task name under which a Hub-ready folder declares its bundled pipelines.py (`custom_pipelines`): a name of its
# own, so that where this package is installed `pipeline("sentence-vae", model=folder)` uses the registered class
# without asking for trust_remote_code, while `pipeline(model=folder, trust_remote_code=True)` (the task inferred
# from the folder) runs the folder's copy, with or without the package.
REMOTE_PIPELINE_TASK = "sentence-vae-remote-code"
PIPELINE_CLASS = "SentenceVAEPipeline"
DEFAULT_TIMEOUT = 10.0


class HubPushError(RuntimeError):
    """A push to the Hub failed or was refused; the message says why (offline, unreachable, unauthorised, ...)."""


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- Hub-ready folders
def add_pipeline(folder: str | os.PathLike) -> Path:
    """Copy `pipelines.py` into `folder` and record it in `config.json` under `custom_pipelines` (task
    `REMOTE_PIPELINE_TASK`), so that `transformers.pipeline(model=folder, trust_remote_code=True)` builds the
    `sentence-vae` pipeline without this package."""
    folder = Path(folder)
    source = Path(__file__).with_name(PIPELINE_FILE)
    shutil.copyfile(source, folder / PIPELINE_FILE)
    config_path = folder / "config.json"
    config = read_json_object(config_path)
    if not config:
        raise HubPushError(f"{config_path} is missing or empty: save the model first")
    config["custom_pipelines"] = {
        REMOTE_PIPELINE_TASK: {
            "impl": f"{Path(PIPELINE_FILE).stem}.{PIPELINE_CLASS}",
            "pt": ["AutoModel"],
            "type": "text",
        }
    }
    _write_json(config_path, config)
    return folder / PIPELINE_FILE


def finalize_model_folder(folder: str | os.PathLike, repo_id: str | None = None, **card_kwargs) -> Path:
    """Make a saved model folder Hub-ready in place: the pipeline as remote code, then `README.md`
    (`model_card.render_model_card` with `card_kwargs`)."""
    folder = Path(folder)
    add_pipeline(folder)
    render_model_card(folder, repo_id, **card_kwargs)
    return folder


# --------------------------------------------------------------------------- staging and checking
def resolve_model_folder(source: str | os.PathLike) -> tuple[Path, Path | None]:
    """(model folder, run folder or None): a run folder holds `best/`; a model folder holds `config.json`."""
    source = Path(source)
    if (source / "best" / "config.json").is_file():
        return source / "best", source
    if (source / "config.json").is_file():
        run = source.parent if source.name == "best" else None
        return source, run
    raise HubPushError(f"{source} is neither a model folder (no config.json) nor a run folder (no best/config.json)")


def stage_folder(
    source: str | os.PathLike,
    dest: str | os.PathLike,
    repo_id: str | None = None,
    render_card: bool = True,
    **card_kwargs,
) -> Path:
    """Write into `dest` (new or empty) exactly what the repository should hold: the model folder's top-level
    Hub files, the run's metrics, curves and results when the model folder lacks them, `pipelines.py`, and a
    card rendered for `repo_id` (`render_card=False` keeps an existing `README.md`). Returns `dest`."""
    model_dir, run_dir = resolve_model_folder(source)
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise HubPushError(f"staging folder {dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and is_hub_file(path.name):
            shutil.copy2(path, dest / path.name)
    if run_dir is not None:
        for name in RUN_ARTIFACTS:
            if not (dest / name).exists() and (run_dir / name).is_file():
                shutil.copy2(run_dir / name, dest / name)
    add_pipeline(dest)
    if render_card or not (dest / "README.md").is_file():
        render_model_card(dest, repo_id, **card_kwargs)
    validate_folder(dest)
    return dest


def validate_folder(folder: str | os.PathLike) -> None:
    """Raise `HubPushError` unless `folder` holds a loadable model: weights, config with `auto_map` and the
    remote-code files it names, tokenizer (with its `auto_map`), and a card whose metadata parses if present."""
    folder = Path(folder)
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise HubPushError(f"{folder} is not a Hub-ready model folder: missing {', '.join(missing)}")
    problems = []
    config = read_json_object(folder / "config.json")
    auto_map = dict(config.get("auto_map") or {})
    if not {"AutoConfig", "AutoModel"} <= set(auto_map):
        problems.append(
            "config.json has no auto_map for AutoConfig and AutoModel (import hf_sentence_vae before saving)"
        )
    tokenizer_auto = (read_json_object(folder / "tokenizer_config.json").get("auto_map") or {}).get("AutoTokenizer")
    if not tokenizer_auto:
        problems.append("tokenizer_config.json has no auto_map for AutoTokenizer")
    else:
        auto_map["AutoTokenizer"] = (
            next((ref for ref in tokenizer_auto if ref), None) if isinstance(tokenizer_auto, list) else tokenizer_auto
        )
    for custom in (config.get("custom_pipelines") or {}).values():
        auto_map[PIPELINE_TASK] = custom.get("impl")
    todo = [(key, ref.rsplit(".", 1)[0]) for key, ref in auto_map.items() if isinstance(ref, str) and "--" not in ref]
    seen: set[str] = set()
    while todo:  # the named modules and, transitively, the relative imports transformers will load with them
        needed_by, module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            problems.append(f"{needed_by} needs {module}.py, which is not in the folder")
            continue
        todo.extend((f"{module}.py", relative) for relative in sorted(get_relative_imports(path)))
    if (folder / "README.md").is_file():
        try:
            check_card((folder / "README.md").read_text(encoding="utf-8"))
        except Exception as err:
            problems.append(f"README.md metadata does not validate: {err}")
    if problems:
        raise HubPushError(f"{folder} is not Hub-ready: " + "; ".join(problems))


# --------------------------------------------------------------------------- pushing
def check_endpoint(endpoint: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Fail within about `timeout` seconds when `endpoint` does not answer HTTP; reject a token it refuses.

    Asks `GET {endpoint}/api/whoami-v2`: any HTTP answer means reachable; 401 with a token means a bad token.
    Returns the account the token belongs to (the answer's JSON; empty when the endpoint said nothing usable)."""
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/api/whoami-v2", method="GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(65536)
        try:
            account = json.loads(body)
        except ValueError:
            account = None
        return account if isinstance(account, dict) else {}
    except urllib.error.HTTPError as err:
        if err.code == 401 and token:
            raise HubPushError(
                f"{endpoint} rejected the token (401 Unauthorized): check HF_TOKEN / --token (it needs write access)"
            ) from None
        return {}
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        waited = time.monotonic() - started
        raise HubPushError(
            f"cannot reach the Hub endpoint {endpoint} ({type(reason).__name__}: {reason}; gave up after "
            f"{waited:.1f} s): check the network, proxy settings and HF_ENDPOINT"
        ) from None


def preflight(
    repo_id: str,
    token: str | None = None,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the model",
) -> tuple[str, str]:
    """The checks a push needs before it touches anything: a valid repository id, offline mode, a token (argument,
    `HF_TOKEN`, or the stored login), an endpoint that answers within `timeout` seconds and accepts the token, and,
    where the endpoint says whose token it is, a namespace that account may write to with a token that may write.
    Returns `(endpoint, token)`; raises `HubPushError` naming the problem."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    where = f"could not push {what} to {repo_id!r} at {endpoint}"
    try:
        validate_repo_id(repo_id)
    except (HFValidationError, TypeError) as err:
        raise HubPushError(f"{where}: {repo_id!r} is not a repository id ('name' or 'namespace/name'): {err}") from None
    if constants.is_offline_mode():
        raise HubPushError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to push")
    token = token or os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise HubPushError(f"{where}: no token; set HF_TOKEN, pass --token, or run `hf auth login`")
    try:
        account = check_endpoint(endpoint, token, timeout)
    except HubPushError as err:
        raise HubPushError(f"{where}: {err}") from None
    _check_account(account, repo_id, where)
    return endpoint, token


def _check_account(account: dict[str, Any], repo_id: str, where: str) -> None:
    """Refuse a push that the account behind the token cannot make: a read-only token, or a namespace that is
    neither the user's nor one of their organisations'. Says nothing when the endpoint did not tell."""
    name = account.get("name")
    role = ((account.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubPushError(
            f"{where}: the token of {name or 'this account'} is read-only; use a token with write access"
        )
    if not name or "/" not in repo_id:
        return
    namespace = repo_id.split("/")[0]
    allowed = {name} | {org.get("name") for org in account.get("orgs") or [] if isinstance(org, dict)}
    if namespace not in allowed:
        raise HubPushError(
            f"{where}: the token belongs to {name!r}, who cannot create repositories under {namespace!r} "
            f"(their namespaces: {', '.join(sorted(n for n in allowed if n))})"
        )


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload sentence VAE",
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Create `repo_id` (if needed) and upload the Hub files of `folder` in one commit; returns the commit URL.

    Everything that can be checked locally is checked first (the folder, a chosen license, offline mode, a token),
    then the endpoint must answer within `timeout` seconds, so nothing is created for a push that cannot succeed. `token` defaults
    to `HF_TOKEN` (or the stored login); `revision` is a branch, created if missing. Failures raise
    `HubPushError` naming the repository, the endpoint and the cause. A repository this call created is deleted
    again if the upload then fails.
    """
    folder = Path(folder)
    validate_folder(folder)
    readme = folder / "README.md"
    if readme.is_file() and NO_LICENSE_NOTE in readme.read_text(encoding="utf-8"):
        raise HubPushError(
            f"could not push {folder} to {repo_id!r}: its model card says no license was chosen; render it with one "
            "(train with --license, or push_to_hub.py --license ID)"
        )
    from huggingface_hub import HfApi

    endpoint, token = preflight(repo_id, token, endpoint, timeout, what=str(folder))
    where = f"could not push {folder} to {repo_id!r} at {endpoint}"
    api = HfApi(endpoint=endpoint, token=token)
    existed: bool | None
    try:
        existed = api.repo_exists(repo_id, repo_type="model")
    except Exception:  # unknown: never delete what might have been there
        existed = None
    created = False
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        created = existed is False
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message,
            allow_patterns=list(HUB_PATTERNS),
        )
    except Exception as err:  # httpx / OfflineModeIsEnabled / HfHubHTTPError all mean: not pushed
        cleanup = ""
        if created:
            try:
                api.delete_repo(repo_id, repo_type="model")
                cleanup = " The repository created for this push was deleted again."
            except Exception as delete_err:
                cleanup = f" The repository created for this push is empty; deleting it failed too ({delete_err})."
        raise HubPushError(
            f"{where}: {type(err).__name__}: {err}.{cleanup} Check the network, HF_ENDPOINT and HF_TOKEN "
            "(HF_HUB_OFFLINE must be unset)."
        ) from err
    url = getattr(info, "commit_url", str(info))
    logger.info(f"pushed {folder} to {repo_id}: {url}")
    return url
