"""`make demo`'s script on a small corpus: it trains with the latent recipe (encoder warm start, target rate, free
bits), writes the model and `demo_outputs.md`, and the outputs show the latent report of the held-out sentences."""

import json

import pytest
from helpers import load_script, reset_accelerate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_trains_the_latent_recipe_and_reports_the_code(repo_root, ptb_train_lines, tmp_path, capsys):
    demo = load_script(repo_root / "train_scripts" / "demo.py", "demo_script")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(ptb_train_lines[:400]), encoding="utf-8")
    out = tmp_path / "demo"
    reset_accelerate()
    argv = ["--output_dir", str(out), "--corpus_file", str(corpus), "--max_train_steps", "4", "--num_threads", "1"]
    assert demo.main(argv) == 0
    config = json.loads((out / "best" / "training_config.json").read_text())
    assert config["encoder_warmup_steps"] > 0 and config["kl_target"] == 20.0 and config["free_bits"] > 0
    assert config["word_keep_rate"] == 1.0
    latent = json.loads((out / "best" / "latent_report.json").read_text())
    assert latent["split"] == "validation" and latent["num_sentences"] == 20  # the 5 % held out of 400 lines
    text = (out / "demo_outputs.md").read_text()
    assert "## How much of a sentence the code carries (validation split)" in text
    assert f"| active units | {latent['active_units']} / 16 |" in text
    assert "## Homotopy" in text and "## Prior samples" in text
    printed = capsys.readouterr().out
    assert str(out / "best") in printed and "active units" in printed
