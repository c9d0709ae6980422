"""The data stage of a vision-language run (--image-column): where images come from and go, how a prompt with images
is truncated, and the one-line refusals of bad input, before the model loads; the run's weights (LoRA on the language
model, the vision encoder frozen unless asked); a whole CLI run with sample answers, and --inference with images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vision_models import make_images, make_vlm_dir

from autotrain.data.prepare import open_data, prepare_data
from autotrain.data.vision_tokens import CUT_BEFORE_IMAGE, NO_ROOM_FOR_IMAGES, NO_ROOM_FROM_IMAGE
from autotrain.errors import DataError, ModelError, ParamsError
from autotrain.model import vision
from autotrain.model.loading import load_config, load_model
from autotrain.params import LLMTrainingParams

PAD, START, END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return make_vlm_dir(tmp_path_factory.mktemp("qwen") / "model", "qwen2_vl")


@pytest.fixture
def data(tmp_path) -> tuple[Path, list[str]]:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder, make_images(folder)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenized(model: Path, path: Path, **overrides):
    params = LLMTrainingParams(model=str(model), data_path=str(path), image_column="images",
                               project_name=str(path.parent / "unused"), **overrides)
    processor = vision.processor_for(params, str(model), load_config(str(model), False))
    return processor, prepare_data(params, processor.tokenizer, 512, processor=processor).train


def test_images_go_where_the_prompt_says_or_before_its_first_user_text(qwen, data):
    folder, names = data
    rows = [
        {"prompt": "Q1", "chosen": "a", "rejected": "b", "images": names[0]},
        {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q2"}], "chosen": "a",
         "rejected": "b", "images": [names[0], names[1]]},
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "L"}, {"type": "image"},
                                                 {"type": "text", "text": "R"}]}],
         "chosen": "a", "rejected": "b", "images": [str(folder / names[1])]},  # an absolute path
    ]
    processor, split = tokenized(qwen, write(folder / "p.jsonl", rows))
    texts = [processor.tokenizer.decode(ids) for ids in split.prompt_ids]
    six, eight = START + PAD * 6 + END, START + PAD * 8 + END  # 56 x 84 and 112 x 56 pixels
    assert texts == [
        f"<|im_start|>user\n{six}Q1<|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{six}{eight}Q2<|im_end|>\n<|im_start|>assistant\n",
        f"<|im_start|>user\nL{eight}R<|im_end|>\n<|im_start|>assistant\n",
    ]
    assert split.chosen_ids[0] == processor.tokenizer("a<|im_end|>\n", add_special_tokens=False)["input_ids"]
    # What the collator reads again: each image's own bytes.
    assert split.dataset[1]["images"] == [(folder / names[0]).read_bytes(), (folder / names[1]).read_bytes()]


def test_relative_paths_are_read_from_the_data_files_folder_and_datasets_images_as_bytes(qwen, data, tmp_path,
                                                                                        monkeypatch):
    from datasets import Dataset, Features, Image, Sequence, Value

    folder, names = data
    path = write(folder / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b", "images": names[2]}])
    monkeypatch.chdir(tmp_path)  # not the data's folder
    _, from_file = tokenized(qwen, path)
    features = Features({"prompt": Value("string"), "chosen": Value("string"), "rejected": Value("string"),
                         "images": Sequence(Image())})
    saved = tmp_path / "saved"
    Dataset.from_dict({"prompt": ["Q"], "chosen": ["a"], "rejected": ["b"],
                       "images": [[str(folder / names[2])]]}, features=features).save_to_disk(str(saved))
    _, from_dataset = tokenized(qwen, saved)
    assert from_dataset.prompt_ids == from_file.prompt_ids  # 9 image tokens: the 84 x 84 image either way


@pytest.mark.parametrize("value, message", [
    ("nope.png", "p.jsonl:1, column 'images', image 1 (nope.png): no such file"),
    ("https://example.com/a.png", "p.jsonl:1, column 'images', image 1 (https://example.com/a.png): a URL; images "
                                  "are read from local files only"),
    ("notes.png", "p.jsonl:1, column 'images', image 1 (notes.png): cannot be read as an image (not an image file)"),
    (7, "p.jsonl:1, column 'images', image 1: expected a path, bytes or an image, got int"),
])
def test_a_bad_image_is_one_line_naming_the_file_the_row_and_the_image(qwen, data, value, message):
    folder, _ = data
    (folder / "notes.png").write_text("not a picture")
    path = write(folder / "p.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b", "images": value}])
    with pytest.raises(DataError) as caught:
        tokenized(qwen, path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_image_parts_and_images_must_agree_and_the_column_must_exist(qwen, data):
    folder, names = data
    two_parts = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q"}]}]
    path = write(folder / "p.jsonl", [{"prompt": two_parts, "chosen": "a", "rejected": "b", "images": [names[0]]}])
    with pytest.raises(DataError, match=r"p.jsonl:1, column 'prompt': the prompt has 2 image part\(s\) and column "
                                        r"'images' holds 1 image\(s\)"):
        tokenized(qwen, path)
    path = write(folder / "q.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b", "pictures": names[0]}])
    params = LLMTrainingParams(model=str(qwen), data_path=str(path), image_column="images")
    with pytest.raises(DataError, match=r"q.jsonl, column 'images': missing; columns present: prompt, chosen, "
                                        "rejected, pictures"):
        open_data(params)  # the data's first check, before torch (preflight.check_inputs)


def test_params_refuse_a_template_without_image_parts_and_train_vision_without_images():
    with pytest.raises(ParamsError, match="image_column: the images are placed by the model's own chat template"):
        LLMTrainingParams(image_column="images", chat_template="chatml")
    with pytest.raises(ParamsError, match="train_vision applies to vision-language training: add --image-column"):
        LLMTrainingParams(train_vision=True)
    # The judges read text: answers about images they cannot see would be judged on the words alone.
    with pytest.raises(ParamsError, match="judge: the judges read prompts as text, and this run's prompts hold "
                                          "images they cannot see; leave --judge out of a run with --image-column"):
        LLMTrainingParams(image_column="images", judge="HuggingFaceTB/SmolLM2-135M-Instruct", valid_split="v")


def test_sample_prompts_are_told_apart_by_their_images():
    """Two rows asking the same words about two images of one size have the same prompt ids: the sample answers must
    keep both, each with its own images, not answer the second prompt with the first row's images."""
    from autotrain.judge.before_after import _distinct

    prompts = [[1, 2], [1, 2], [3], [1, 2]]
    assert _distinct(prompts, None) == [0, 2]
    assert _distinct(prompts, [[b"cat"], [b"dog"], [b"cat"], [b"cat"]]) == [0, 1, 2]


def test_truncation_never_cuts_an_image_and_drops_a_prompt_whose_images_do_not_fit(qwen, data):
    folder, names = data
    long_text = "x" * 40
    rows = [
        # 22 tokens from <|vision_start|> on (the image's 6, "Q", the turn's end, the generation prompt), 57 before
        # it: the prompt keeps its last 22 tokens, the image whole.
        {"prompt": [{"role": "system", "content": long_text}, {"role": "user", "content": "Q"}], "chosen": "a",
         "rejected": "b", "images": names[0]},
        # 9 image tokens before a long question: 65 tokens from the image on, more than 22: dropped.
        {"prompt": "Q" + long_text, "chosen": "a", "rejected": "b", "images": names[2]},
        # 6 + 8 + 9 = 23 image tokens: more than 22 alone.
        {"prompt": "Q", "chosen": "a", "rejected": "b", "images": names},
    ]
    processor, split = tokenized(qwen, write(folder / "p.jsonl", rows), max_prompt_length=22)
    assert len(split) == 1
    assert processor.tokenizer.decode(split.prompt_ids[0]) == f"{START}{PAD * 6}{END}Q<|im_end|>\n<|im_start|>assistant\n"
    assert split.truncated == {CUT_BEFORE_IMAGE: 1}
    assert split.dropped == {NO_ROOM_FROM_IMAGE: 1, NO_ROOM_FOR_IMAGES: 1}


@pytest.mark.parametrize("peft, train_vision", [(True, False), (True, True), (False, False), (False, True)])
def test_the_language_model_trains_and_the_vision_encoder_only_when_asked(qwen, peft, train_vision):
    params = LLMTrainingParams(model=str(qwen), image_column="images", peft=peft, train_vision=train_vision)
    model = load_model(params, str(qwen))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    in_vision = lambda name: ".visual." in f".{name}"  # noqa: E731 - Qwen2-VL's encoder and merger
    assert any(not in_vision(name) for name in trained)
    assert any(in_vision(name) for name in trained) == train_vision
    if peft:
        assert all("lora_" in name for name in trained)


def test_an_image_column_on_a_text_model_or_a_model_without_processor_is_refused_before_the_data(
        chat_model, qwen, tmp_path):
    params = LLMTrainingParams(model=str(chat_model), image_column="images")
    with pytest.raises(ModelError, match=r"image_column: .* is a text-only model \(LlamaConfig, model type llama\)"):
        vision.processor_for(params, str(chat_model), load_config(str(chat_model), False))
    bare = tmp_path / "bare"  # Qwen2-VL's weights and tokenizer, no image processor
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_bytes((qwen / name).read_bytes())
    params = LLMTrainingParams(model=str(bare), image_column="images")
    with pytest.raises(ModelError, match="image_column: .*bare has no (image )?processor") as caught:
        vision.processor_for(params, str(bare), load_config(str(bare), False))
    assert "\n" not in str(caught.value)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AITRAINING_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "autotrain", "llm", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_cli_run_with_images_sample_answers_and_inference(qwen, data):
    """One LoRA ORPO run on Qwen2-VL with images: it trains, answers validation prompts with their images before and
    after, keeps the vision encoder as it was, and its project answers --inference prompts with images."""
    from safetensors.torch import load_file

    folder, names = data
    rows = [{"prompt": f"What is {i}?", "chosen": "A cat.", "rejected": "A dog!", "images": [names[i % 3]]}
            for i in range(4)]
    write(folder / "train.jsonl", rows)
    write(folder / "validation.jsonl", rows[:1])
    work = folder.parent
    done = run_cli("--train", "--model", str(qwen), "--data-path", "data", "--image-column", "images",
                   "--project-name", "p", "--peft", "--max-steps", "1", "--warmup-ratio", "0", "--lr", "1e-2",
                   "--batch-size", "2", "--gradient-accumulation", "1", "--valid-split", "validation",
                   "--sample-answers", "1", cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    project = work / "p"
    assert "- images: column `images` (the vision encoder frozen)" in (project / "README.md").read_text()
    sample = json.loads((project / "samples.jsonl").read_text())
    assert sample["prompt"] == "What is 0?" and sample["before"] and sample["after"] != sample["before"]
    base, merged = load_file(qwen / "model.safetensors"), load_file(project / "model.safetensors")
    seen = {key: "visual" in key.split(".") for key in base}  # the saved names: visual.*, model.layers.*
    assert any(seen.values()) and all(torch.equal(base[key], merged[key]) for key in base if seen[key])
    assert any(not torch.equal(base[key], merged[key]) for key in base if not seen[key] and ".layers." in key)

    # --inference (in this process: the CLI's is the same generate()), a prompts file naming its image
    from autotrain.inference import InferenceParams, generate

    (work / "prompts.jsonl").write_text(json.dumps({"prompt": "What is 0?", "images": f"data/{names[0]}"}) + "\n")
    answered = list(generate(InferenceParams(project_name=str(project), inference_prompts=str(work / "prompts.jsonl"),
                                             inference_max_tokens=64)))
    assert answered == [{"prompt": "What is 0?", "answer": sample["after"]}]

    # The chat page sends text only and the judges read text only: a run trained with images is refused, one line.
    from autotrain.chat import engine
    from autotrain.chat.runs import Run, named_run
    from autotrain.judge.compare import compare_runs

    chat = (f"project_name: {project} was trained with images (--image-column), and aitraining chat sends text only; "
            "ask it with its images through aitraining llm --inference (--inference-images)")
    with pytest.raises(ParamsError) as refused:
        named_run(str(project))  # --project-name: before the server starts
    assert str(refused.value) == chat
    with pytest.raises(ParamsError) as refused:
        engine.load(Run("p", project))  # chosen from --projects-dir's list: the page shows the line
    assert str(refused.value) == chat
    with pytest.raises(ParamsError) as refused:
        compare_runs([project, project], None, str(work / "compared"), "again")
    assert str(refused.value) == (f"compare: {project} was trained with images (--image-column); the judges read "
                                  "prompts as text and cannot see them")
    assert not (work / "compared").exists()


def test_cli_bad_image_is_one_line_exit_2_and_nothing_written(qwen, data):
    folder, _ = data
    write(folder / "train.jsonl", [{"prompt": "Q", "chosen": "a", "rejected": "b", "images": "gone.png"}])
    done = run_cli("--train", "--model", str(qwen), "--data-path", "data", "--image-column", "images",
                   "--project-name", "p", cwd=folder.parent)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: data/train.jsonl:1, column 'images', image 1 (gone.png): no such file "
                                        "(data/gone.png)"]
    assert not (folder.parent / "p").exists()


def test_kto_with_images_is_refused_with_the_params():
    """The vision path reads pairs and supervised rows; kto's labelled answers would reach it as something else."""
    with pytest.raises(ParamsError, match="image_column: --trainer kto trains on labelled single answers"):
        LLMTrainingParams(image_column="images", trainer="kto")
    assert LLMTrainingParams(image_column="images", trainer="dpo").image_column == "images"
