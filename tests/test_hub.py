"""Sharing on the Hub (`hf_sentence_vae.hub`): the Hub-ready folder training leaves, the staged folder, loading it as
a stranger would (remote code only, in an environment with just torch / transformers / tokenizers / safetensors and
their dependencies), and pushes through `push_to_hub.py`: to an unreachable endpoint (fails fast and clearly) and to
a local fake Hub (receives exactly the expected files).

Everything runs on one tiny model trained for a few dozen steps on `TINY_SENTENCES` (no data dependency).
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from helpers import LICENSE, REPO_ID, TOKEN, card_samples, load_script, run_main
from huggingface_hub import metadata_load
from transformers import pipeline

import hf_sentence_vae
from hf_sentence_vae import hub, model_card
from hf_sentence_vae.hub import HubPushError
from hf_sentence_vae.pipelines import TASK

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(hf_sentence_vae.__file__).parent
PUSH_SCRIPT = REPO / "train_scripts" / "push_to_hub.py"
REMOTE_CODE = {
    "configuration_sentence_vae.py",
    "modeling_sentence_vae.py",
    "decoding.py",
    "generation_settings.py",
    "kernels.py",
    "latent.py",
    "tokenization_sentence_vae_fast.py",
}
HUB_FILES = REMOTE_CODE | {
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "pipelines.py",
    "README.md",
    "training_config.json",
    "eval_results.json",
    "latent_report.json",  # the trained VAE's latent report, which the card shows
    "results.json",
    "metrics.jsonl",
    "training_curves.png",
}


# --------------------------------------------------------------------------- the card written by training
def test_training_leaves_a_hub_ready_best_folder(run_dir):
    best = run_dir / "best"
    for name in ("README.md", "pipelines.py", "metrics.jsonl", "training_curves.png"):
        assert (best / name).is_file(), name
    for name in ("metrics.jsonl", "training_curves.png"):
        assert (best / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert (best / "pipelines.py").read_bytes() == (PACKAGE_DIR / "pipelines.py").read_bytes()
    config = json.loads((best / "config.json").read_text())
    assert config["custom_pipelines"] == {
        hub.REMOTE_PIPELINE_TASK: {"impl": "pipelines.SentenceVAEPipeline", "pt": ["AutoModel"], "type": "text"}
    }
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}
    hub.validate_folder(best)
    # the decoding defaults a trained VAE saves, which the card's samples use (no <unk> in this corpus: none
    # suppressed)
    generation = json.loads((best / "generation_config.json").read_text())
    assert generation["num_beams"] == 5 and "suppress_tokens" not in generation
    assert (
        "Decodes (beam search (5 beams), the defaults in `generation_config.json`)" in (best / "README.md").read_text()
    )


# --------------------------------------------------------------------------- the staged folder
def test_staged_folder_holds_exactly_the_hub_files(staged, run_dir):
    assert {p.name for p in staged.iterdir()} == HUB_FILES
    assert all(p.is_file() for p in staged.iterdir())
    for name in ("model.safetensors", "tokenizer.json", "training_config.json", *REMOTE_CODE):
        assert (staged / name).read_bytes() == (run_dir / "best" / name).read_bytes(), name
    assert (staged / "results.json").read_bytes() == (run_dir / "results.json").read_bytes()
    text = (staged / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert model_card.PATH_PLACEHOLDER not in text
    # the same samples as the card written at training time: rendering is deterministic
    assert card_samples(text) == card_samples((run_dir / "best" / "README.md").read_text())
    with pytest.raises(HubPushError, match="not empty"):
        hub.stage_folder(run_dir, staged)


def test_validate_folder_names_what_is_missing(staged, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(staged, broken)
    (broken / "latent.py").unlink()  # not named in auto_map, but imported by modeling_sentence_vae.py
    with pytest.raises(HubPushError, match="modeling_sentence_vae.py needs latent.py"):
        hub.validate_folder(broken)
    (broken / "README.md").write_text("---\nmodel-index: [{name: x}]\n---\n# card\n")
    with pytest.raises(HubPushError, match="README.md metadata does not validate"):
        hub.validate_folder(broken)


# --------------------------------------------------------------------------- the pipeline, in process


# --------------------------------------------------------------------------- loading as a stranger would
def _stranger_site(dest: Path) -> Path:
    """A site-packages holding only torch, transformers, tokenizers, safetensors and what they require (links
    into this venv): what `pip install torch transformers tokenizers safetensors` gives a fresh environment."""
    from packaging.requirements import Requirement

    dest.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    todo = ["torch", "transformers", "tokenizers", "safetensors"]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        dist = importlib.metadata.distribution(name)
        for requirement in map(Requirement, dist.requires or []):
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
        site = Path(dist.locate_file(""))
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            if top in ("..", "__pycache__") or top.endswith(".pth"):
                continue
            if (site / top).exists() and not (dest / top).exists():
                (dest / top).symlink_to(site / top)
    assert {"torch", "transformers", "tokenizers", "safetensors", "huggingface_hub"} <= {p.name for p in dest.iterdir()}
    return dest


STRANGER = textwrap.dedent(
    r"""
    import contextlib
    import importlib.util
    import io
    import json
    import re
    import sys

    site, spec_file = sys.argv[1], sys.argv[2]
    sys.path.append(site)
    spec = json.load(open(spec_file))
    report = {"missing": {m: importlib.util.find_spec(m) is None for m in spec["must_be_missing"]}}

    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer, pipeline

    folder = spec["folder"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    report["classes"] = [type(x).__module__ + "." + type(x).__name__ for x in (config, model, tokenizer)]
    latent = torch.tensor(spec["latent"])
    report["can_generate"] = model.can_generate()
    greedy = model.generate(latent=latent, max_new_tokens=12, num_beams=1)
    beam = model.generate(latent=latent, num_beams=3, max_new_tokens=12)
    report["greedy"] = tokenizer.batch_decode(greedy, skip_special_tokens=True)
    report["beam"] = beam.tolist()
    batch = tokenizer(spec["texts"], padding=True, return_tensors="pt")
    report["input_ids"] = batch["input_ids"].tolist()
    report["reconstructed"] = model.generate(**batch).tolist()
    with torch.no_grad():
        report["mu"] = model.encode(batch["input_ids"], batch["attention_mask"])[0].tolist()

    # The card's reproduction snippet, run verbatim (with the repo id pointing at the folder).
    card = open(folder + "/README.md", encoding="utf-8").read()
    snippet = re.findall(r"```python\n(.*?)```", card, re.S)[-1].replace(spec["repo_id"], folder)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(snippet, {"__name__": "card_snippet"})
    report["snippet_output"] = out.getvalue().splitlines()

    # The pipeline, from the folder's custom_pipelines (no task given).
    pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
    report["pipeline_class"] = type(pipe).__module__ + "." + type(pipe).__name__
    report["pipeline_samples"] = pipe(3, seed=0, max_new_tokens=12)
    report["pipeline_homotopy"] = pipe(tuple(spec["texts"][:2]), steps=3)

    report["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(spec["must_be_missing"]))
    print("REPORT=" + json.dumps(report))
    """
)


def test_the_staged_folder_loads_as_a_stranger_would(staged, best_model, tmp_path):
    model, tokenizer = best_model
    site = _stranger_site(tmp_path / "site-packages")
    latent = model.sample_prior(4, generator=torch.Generator().manual_seed(3))
    texts = ["the cat sat on the mat .", "a dog ran to the park .", "the zebra sat ."]
    must_be_missing = ["hf_sentence_vae", "accelerate", "datasets", "evaluate", "sklearn", "matplotlib"]
    spec = dict(
        folder=str(staged), latent=latent.tolist(), texts=texts, repo_id=REPO_ID, must_be_missing=must_be_missing
    )
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "stranger.py").write_text(STRANGER)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(tmp_path / "stranger.py"), str(site), str(tmp_path / "spec.json")],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    line = [x for x in result.stdout.splitlines() if x.startswith("REPORT=")][-1]
    report = json.loads(line[len("REPORT=") :])
    print(f"stranger subprocess: {time.perf_counter() - started:.1f} s")

    assert all(report["missing"].values()), report["missing"]
    assert report["loaded"] == []
    for qualified, name in zip(
        report["classes"], ["SentenceVAEConfig", "SentenceVAEModel", "SentenceVAETokenizerFast"]
    ):
        assert qualified.startswith("transformers_modules.") and qualified.endswith("." + name), qualified

    # Same sentences as the in-process model, through the same GenerationMixin-based class.
    assert report["can_generate"] is True and model.can_generate()
    greedy = model.generate(latent=latent, max_new_tokens=12, num_beams=1)
    assert report["greedy"] == tokenizer.batch_decode(greedy, skip_special_tokens=True)
    assert report["beam"] == model.generate(latent=latent, num_beams=3, max_new_tokens=12).tolist()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert report["input_ids"] == batch["input_ids"].tolist()
    assert report["reconstructed"] == model.generate(**batch).tolist()
    with torch.no_grad():
        mu = model.encode(batch["input_ids"], batch["attention_mask"])[0]
    torch.testing.assert_close(torch.tensor(report["mu"]), mu, rtol=0, atol=1e-6)

    # The card's snippet reproduces the card's samples there.
    prior, path = card_samples((staged / "README.md").read_text())
    assert report["snippet_output"] == prior + path

    # The remote-code pipeline gives what the in-process one gives.
    assert report["pipeline_class"].startswith("transformers_modules.")
    assert report["pipeline_class"].endswith(".pipelines.SentenceVAEPipeline")
    local = pipeline(TASK, model=model, tokenizer=tokenizer, device="cpu")
    assert report["pipeline_samples"] == local(3, seed=0, max_new_tokens=12)
    assert report["pipeline_homotopy"] == local(tuple(texts[:2]), steps=3)


# --------------------------------------------------------------------------- pushing
class FakeHub:
    """A bounded, self-stopping fake of the few Hub endpoints huggingface_hub uses for create_repo,
    create_branch, upload_folder (regular files) and delete_repo, on 127.0.0.1 in a thread."""

    def __init__(self, token: str = TOKEN, fail_commit: bool = False, lifetime: float = 120.0):
        self.token, self.fail_commit = token, fail_commit
        self.requests: list[dict] = []
        self.created: list[dict] = []
        self.branches: list[str] = []
        self.commits: list[dict] = []
        self.deleted: list[dict] = []
        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body if body is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                hub_state.requests.append(
                    {"method": self.command, "path": path, "auth": self.headers.get("Authorization")}
                )
                if path == "/api/agent-harnesses":  # huggingface_hub's client-detection registry: not needed
                    return self._reply(404, {"error": "not here"})
                if self.headers.get("Authorization") != f"Bearer {hub_state.token}":
                    return self._reply(401, {"error": "Invalid credentials"})
                endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
                if self.command == "GET" and path == "/api/whoami-v2":
                    return self._reply(200, {"name": "me", "type": "user"})
                if self.command == "POST" and path == "/api/repos/create":
                    request = json.loads(body)
                    hub_state.created.append(request)
                    repo = f"{request['organization']}/{request['name']}"
                    return self._reply(200, {"url": f"{endpoint}/{repo}", "name": repo})
                if self.command == "DELETE" and path == "/api/repos/delete":
                    hub_state.deleted.append(json.loads(body))
                    return self._reply(200, {})
                if self.command == "POST" and path == "/api/validate-yaml":
                    return self._reply(200, {})
                match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)", path)
                if self.command == "POST" and match:
                    repo, action, revision = match.groups()
                    if action == "branch":
                        hub_state.branches.append(revision)
                        return self._reply(200, {})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._reply(
                            200,
                            {
                                "files": [
                                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                                ]
                            },
                        )
                    if hub_state.fail_commit:
                        return self._reply(422, {"error": "commit refused by the fake Hub"})
                    lines = [json.loads(x) for x in body.splitlines() if x.strip()]
                    files = {
                        x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"
                    }
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    hub_state.commits.append({"repo": repo, "revision": revision, "files": files, "header": header})
                    oid = "a" * 40
                    return self._reply(200, {"commitUrl": f"{endpoint}/{repo}/commit/{oid}", "commitOid": oid})
                if self.command == "GET" and path.startswith("/api/models/"):
                    return self._reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return self._reply(404, {"error": f"fake Hub: no route for {self.command} {path}"})

        for verb in ("GET", "POST", "PUT", "DELETE"):
            setattr(Handler, f"do_{verb}", Handler._handle)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.timer = threading.Timer(lifetime, self.stop)  # never outlives a stuck test
        self.timer.daemon = True

    def __enter__(self) -> FakeHub:
        self.thread.start()
        self.timer.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.stop()
        self.thread.join(timeout=5)


@pytest.fixture
def push_script(monkeypatch):
    """`push_to_hub.py`, its `main(argv)` run in this process with the Hub reachable (offline mode off) and the
    token in `HF_TOKEN`; the endpoint is given with `--endpoint`."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return load_script(PUSH_SCRIPT)


def test_push_command_to_a_fake_hub_uploads_exactly_the_hub_files(run_dir, staged, tmp_path, push_script, capsys):
    staging = tmp_path / "staging"
    with FakeHub() as fake:
        started = time.perf_counter()
        status, out, err = run_main(
            push_script,
            [run_dir, "--repo_id", REPO_ID, "--private", "--license", LICENSE, "--endpoint", fake.endpoint]
            + ["--revision", "experiment-1", "--staging_dir", staging, "--commit_message", "tiny run"],
            capsys,
        )
        elapsed = time.perf_counter() - started
    assert status == 0, out[-3000:] + err[-5000:]
    assert out.strip().endswith("/commit/" + "a" * 40)
    assert elapsed < 60
    assert fake.created == [
        {"name": "tiny-sentence-vae", "organization": "me", "visibility": "private", "type": "model"}
    ]
    assert fake.branches == ["experiment-1"]
    assert len(fake.commits) == 1 and fake.deleted == []
    commit = fake.commits[0]
    assert commit["repo"] == REPO_ID and commit["revision"] == "experiment-1"
    assert commit["header"]["summary"] == "tiny run"
    assert set(commit["files"]) == HUB_FILES
    for name, content in commit["files"].items():
        assert content == (staging / name).read_bytes(), name
    # the pushed folder is the one that loads as a stranger would: same files, same card
    for name in HUB_FILES:
        assert (staging / name).read_bytes() == (staged / name).read_bytes(), name
    repo_requests = [r for r in fake.requests if r["path"] != "/api/agent-harnesses"]
    assert {r["path"] for r in repo_requests} >= {"/api/whoami-v2", "/api/repos/create", "/api/validate-yaml"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in repo_requests), repo_requests  # HF_TOKEN was used


def test_push_command_to_an_unreachable_endpoint_fails_fast_and_clearly(run_dir, tmp_path, push_script, capsys):
    """An endpoint that accepts connections but never answers (the hard case: no connection error)."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(8)
    endpoint = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
    try:
        started = time.perf_counter()
        status, out, err = run_main(
            push_script,
            [run_dir, "--repo_id", REPO_ID, "--timeout", "3", "--license", LICENSE, "--endpoint", endpoint],
            capsys,
        )
        elapsed = time.perf_counter() - started
    finally:
        black_hole.close()
    assert status == 1, out + err
    assert elapsed < 30
    assert f"cannot reach the Hub endpoint {endpoint}" in err
    assert "timed out" in err and REPO_ID in err
    assert "Traceback" not in err


def test_push_folder_refuses_early_with_clear_messages(staged, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    started = time.perf_counter()
    with pytest.raises(HubPushError, match=rf"cannot reach the Hub endpoint http://127.0.0.1:{port}.*Connection"):
        hub.push_folder(staged, REPO_ID, token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - started < 5
    with FakeHub() as fake:
        with pytest.raises(HubPushError, match="rejected the token"):
            hub.push_folder(staged, REPO_ID, token="wrong", endpoint=fake.endpoint)
    assert fake.created == []  # refused before anything was created
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        hub.push_folder(staged, REPO_ID, token=TOKEN)


def test_a_push_needs_a_license(run_dir, staged, tmp_path, push_script, capsys):
    """Without --license (and none chosen at training time) the command refuses, naming the flag; a folder whose
    card says no license was chosen is refused by push_folder before anything is created."""
    with FakeHub() as fake:
        status, _, err = run_main(push_script, [run_dir, "--repo_id", REPO_ID, "--endpoint", fake.endpoint], capsys)
        assert status == 1 and "--license" in err and "Traceback" not in err
        unlicensed = hub.stage_folder(run_dir, tmp_path / "unlicensed", repo_id=REPO_ID)
        assert metadata_load(unlicensed / "README.md")["license"] == "other"
        with pytest.raises(HubPushError, match="no license was chosen"):
            hub.push_folder(unlicensed, REPO_ID, token=TOKEN, endpoint=fake.endpoint)
    assert fake.created == [] and fake.commits == []
    assert metadata_load(staged / "README.md")["license"] == LICENSE
    assert model_card.NO_LICENSE_NOTE not in (staged / "README.md").read_text()


def test_preflight_checks_the_repository_id_and_the_accounts_namespace(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub() as fake:
        with pytest.raises(HubPushError, match="not a repository id"):
            hub.preflight("me/bad name!", token=TOKEN, endpoint=fake.endpoint)
        with pytest.raises(HubPushError, match="belongs to 'me'.*'someone-else'"):
            hub.preflight("someone-else/vae", token=TOKEN, endpoint=fake.endpoint)
        assert hub.preflight(REPO_ID, token=TOKEN, endpoint=fake.endpoint) == (fake.endpoint, TOKEN)
    assert fake.created == []


def test_a_failed_upload_deletes_the_repository_it_created(staged, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with FakeHub(fail_commit=True) as fake:
        with pytest.raises(HubPushError, match="commit refused by the fake Hub.*deleted again"):
            hub.push_folder(staged, REPO_ID, token=TOKEN, endpoint=fake.endpoint)
    assert len(fake.created) == 1 and fake.commits == []
    assert fake.deleted == [{"name": "tiny-sentence-vae", "organization": "me", "type": "model"}]
