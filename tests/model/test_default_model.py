"""A short run on the embedded SmolLM2-135M-Instruct with the bundled sample pairs: no --model, no --data-path."""

from __future__ import annotations

import json
import subprocess
import sys

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_defaults_train_offline_and_generate(tmp_path):
    cmd = [sys.executable, "-m", "autotrain", "llm", "--train", "--project-name", "smol", "--peft",
           "--max-steps", "2", "--gradient-accumulation", "1", "--lr", "1e-4", "--logging-steps", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    project = tmp_path / "smol"
    params = json.loads((project / "training_params.json").read_text())
    assert params["model"] == "embedded:smollm2-135m-instruct" and params["data_path"] == "embedded:sample-pairs"
    records = [json.loads(line) for line in (project / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "nll_loss" in r] == [1, 2]
    # The bundled pairs are short answers the instruct model finds plausible: a mean NLL far below uniform.
    assert records[0]["nll_loss"] < 5.0
    tokenizer = AutoTokenizer.from_pretrained(project)
    model = AutoModelForCausalLM.from_pretrained(project)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
