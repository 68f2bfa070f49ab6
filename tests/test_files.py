"""Run folders (`hf_sentence_vae.files`): one run per output folder, held by a lock that dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import (
    REPO,
    SCRIPTS,
    reset_accelerate,
    tiny_argv,
    tiny_config,
    train_cli_error,
    train_run,
)

from hf_sentence_vae.files import OutputDirInUseError
from hf_sentence_vae.training import Trainer, list_checkpoints, resolve_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_second_run_on_a_locked_output_dir_is_refused(scripts, capsys, small_data, tmp_path):
    out = tmp_path / "run"
    reset_accelerate()
    first = Trainer(tiny_config(small_data, out))
    try:
        line = train_cli_error(
            scripts["train"], capsys, tiny_argv(small_data, out), r"--output_dir '.*run' is in use by another run"
        )
        assert f"(process {os.getpid()})" in line
        with pytest.raises(OutputDirInUseError):
            train_run(tiny_config(small_data, out, seed=7))
    finally:
        first.close()
    assert train_run(tiny_config(small_data, out))["global_step"] == 2  # released: the folder is usable again


def test_the_lock_holds_across_processes_and_dies_with_its_process(scripts, capsys, small_data, tmp_path):
    """A real second process: refused while the first trains; once the first is SIGKILLed, the kernel has dropped its
    lock and the run resumes from its newest checkpoint."""
    out = tmp_path / "run"
    argv = tiny_argv(small_data, out, max_train_steps=100_000, checkpointing_steps=1, logging_steps=1)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *argv], stderr=handle, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not list_checkpoints(out):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        train_cli_error(scripts["train"], capsys, argv, rf"is in use by another run \(process {proc.pid}\)")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    step = int(resolve_checkpoint("latest", str(out)).name.split("-")[1])
    resumed = train_run(tiny_config(small_data, out, max_train_steps=step + 2, resume_from_checkpoint="latest"))
    assert resumed["global_step"] == step + 2
