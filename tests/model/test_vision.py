"""Vision-language preference training (--image-column) computes the loss of the papers, on tiny random Qwen2-VL and
Idefics3 models built here, with three images of different sizes (6, 8 and 9 image tokens for Qwen2-VL):

- the first-step ORPO loss equals a float64 reference written here from the model's own forward on each
  (prompt + images + completion) sequence alone, as the processor builds it (mean log-probs, the paper's loss), in
  the packed layout (the prompt and its images once per pair) and padded on either side;
- the packed layout gives the padded layout's loss and metrics for every method;
- the vision encoder reads each image of a pair once in the packed layout (twice padded, as TRL's collator does);
- DPO's first-step loss equals TRL 1.16's DPOTrainer (its vision collator and loss) on the same rows and models.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from vision_models import FAMILIES, MORE_FAMILIES, make_images, make_vlm_dir

from autotrain.data.prepare import prepare_data
from autotrain.model import vision
from autotrain.model.loading import load_config, load_model
from autotrain.params import LLMTrainingParams, methods

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# What each family's template writes after an answer, to close the assistant turn.
TURN_END = {"qwen2_vl": "<|im_end|>\n", "idefics3": "<end_of_utterance>\n", "gemma3": "<|im_end|>\n",
            "llava": "<|im_end|>\n"}
BETA = 0.5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    models = {family: make_vlm_dir(root / family, family) for family in FAMILIES + MORE_FAMILIES}
    references = {family: make_vlm_dir(root / f"{family}-ref", family, seed=1) for family in FAMILIES}
    data = root / "data"
    data.mkdir()
    return models, references, data, make_images(data)


def rows(names: list[str]) -> list[dict]:
    """Three pairs: one image before a plain prompt, two images where the prompt's parts say, a third size alone."""
    return [
        {"prompt": "What is it?", "chosen": "A cat.", "rejected": "A dog, surely!", "images": [names[0]]},
        {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Compare "}, {"type": "image"},
                                                 {"type": "text", "text": " and "}, {"type": "image"}]}],
         "chosen": "Same.", "rejected": "They differ.", "images": [names[1], names[2]]},
        {"prompt": "Color?", "chosen": "Red", "rejected": "Blue", "images": names[2]},
    ]


_PREPARED: dict = {}


def prepared(folder, data, names, trainer="orpo", **overrides):
    """(params, processor, features) of `rows` through the run's own data stage (once per model and method)."""
    key = (str(folder), trainer, tuple(sorted(overrides.items())))
    if key not in _PREPARED:
        _PREPARED[key] = _prepare(folder, data, names, trainer, **overrides)
    return _PREPARED[key]


def _prepare(folder, data, names, trainer, **overrides):
    path = data / f"pairs-{trainer}.jsonl"
    pairs = rows(names)
    if not methods.spec(trainer).paired:
        pairs = [{"prompt": r["prompt"], "completion": r["chosen"], "images": r["images"]} for r in pairs]
    path.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    params = LLMTrainingParams(model=str(folder), data_path=str(path), image_column="images", trainer=trainer,
                               project_name=str(data / "unused"), **overrides)
    processor = vision.processor_for(params, str(folder), load_config(str(folder), False))
    split = prepare_data(params, processor.tokenizer, 512, paired=methods.spec(trainer).paired,
                         processor=processor).train
    return params, processor, [split.dataset[i] for i in range(len(split))]


def reference_tokens(model, processor, family, images, prompt, answer) -> torch.Tensor:
    """The answer's token log-probs from `model`'s own forward on prompt + images + answer as one sequence, built by
    the processor from the chat template's text (the images before a plain prompt's text)."""
    from PIL import Image

    messages = prompt if isinstance(prompt, list) else [
        {"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": prompt}]}]
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    completion = answer + TURN_END[family]
    loaded = [Image.open(image).convert("RGB") for image in images]
    inputs = processor(text=[text + completion], images=[loaded], add_special_tokens=False, return_tensors="pt")
    count = len(processor.tokenizer(completion, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(**inputs).logits[0].double()
    ids = inputs["input_ids"][0]
    end = ids.shape[0]
    return logits[end - count - 1 : end - 1].log_softmax(-1).gather(-1, ids[end - count :, None]).squeeze(-1)


@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_first_step_orpo_loss_is_the_float64_reference_of_each_sequence_alone(folders, family):
    from transformers import AutoModelForImageTextToText

    models, _, data, names = folders
    params, processor, features = prepared(models[family], data, names)
    model = load_model(params, str(models[family])).eval()
    found = {}
    for layout in ("packed", "right", "left"):  # the prompt once per pair; twice, padded on either side
        run = params.model_copy(update={"packing": layout == "packed", "padding": "right" if layout == "packed"
                                        else layout})
        batch = vision.collator(run, processor, model)(features)
        # The three pairs packed in one row; Gemma 3's image tokens attend to each other both ways: padded.
        assert (batch["input_ids"].shape[0] == 1) == (layout == "packed" and family != "gemma3")
        with torch.no_grad():
            found[layout] = methods.load("orpo").step(model, batch, BETA)

    if family == "gemma3":  # the one line its first batch logs
        assert vision.collator(params, processor, model).layout.reason == (
            "its image tokens attend to each other both ways (token_type_ids), which the packed mask does not express")

    exact = AutoModelForImageTextToText.from_pretrained(models[family], dtype=torch.float64).eval()
    chosen, rejected, nll = [], [], []
    for row in rows(names):
        images = [data / name for name in ([row["images"]] if isinstance(row["images"], str) else row["images"])]
        good = reference_tokens(exact, processor, family, images, row["prompt"], row["chosen"])
        bad = reference_tokens(exact, processor, family, images, row["prompt"], row["rejected"])
        chosen.append(good.mean())
        rejected.append(bad.mean())
        nll.append(-good)
    chosen, rejected = torch.stack(chosen), torch.stack(rejected)
    # ORPO (Hong et al. 2024, eqs. 4-7): odds(y) = P / (1 - P) with P the mean token probability's log, exponentiated.
    log_odds = (chosen - rejected) - (torch.log1p(-chosen.exp()) - torch.log1p(-rejected.exp()))
    expected = torch.cat(nll).mean() - BETA * torch.nn.functional.logsigmoid(log_odds).mean()
    for layout, (loss, metrics) in found.items():
        assert abs(loss.item() - expected.item()) < 1e-5, (layout, loss.item(), expected.item())
        assert metrics["logps/chosen"].item() == pytest.approx(chosen.mean().item(), abs=1e-5)  # the pairs' mean


# orpo: the float64 test; kto (labelled answers) is refused with images (tests/data/test_vision_data.py)
@pytest.mark.parametrize("trainer", [name for name, spec in methods.SPECS.items() if name != "orpo" and not spec.labelled])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_equals_padded_for_every_method(folders, family, trainer):
    models, references, data, names = folders
    params, processor, features = prepared(models[family], data, names, trainer)
    model = load_model(params, str(models[family])).eval()
    method = methods.load(trainer)
    reference = None
    if method.needs_reference:
        from autotrain.model.forward import sequence_logps

        other = load_model(params, str(references[family])).eval()
        reference = lambda batch: sequence_logps(other, batch).sums  # noqa: E731
    options = params.method_settings().options  # the method's own defaults for what it takes besides beta
    results = []
    for packing in (True, False):
        batch = vision.collator(params.model_copy(update={"packing": packing}), processor, model)(features)
        assert ("segment_ids" in batch) == packing
        with torch.no_grad():
            results.append(method.step(model, batch, BETA, reference, **options))
    (packed_loss, packed_metrics), (loss, metrics) = results
    assert loss.item() == pytest.approx(packed_loss.item(), abs=1e-5)
    for name, value in metrics.items():
        assert value.tolist() == pytest.approx(packed_metrics[name].tolist(), abs=1e-5), name


@pytest.mark.parametrize("trainer, loss_type", [("dpo", name) for name in methods.spec("dpo").losses if name != "sft"]
                         + [("cpo", name) for name in methods.spec("cpo").losses] + [("dpo", "ld_alpha")])
def test_packed_equals_padded_for_every_loss_type_and_ld_dpo(folders, trainer, loss_type):
    """Each --loss-type of dpo and cpo, and LD-DPO's weights (--ld-alpha, which the collator reads from the params as
    a text run's does), give the padded layout's loss and metrics when packed."""
    models, references, data, names = folders
    base, processor, features = prepared(models["qwen2_vl"], data, names, trainer)
    given = {"ld_alpha": 0.5} if loss_type == "ld_alpha" else {"loss_type": loss_type} | (
        {"label_smoothing": 0.1} if loss_type == "exo_pair" else {})
    params = LLMTrainingParams(**base.model_dump(include={"model", "data_path", "image_column", "trainer",
                                                          "project_name"}), **given)
    model = load_model(params, str(models["qwen2_vl"])).eval()
    method = methods.load(trainer)
    reference = None
    if method.needs_reference:
        from autotrain.model.forward import sequence_logps

        other = load_model(params, str(references["qwen2_vl"])).eval()
        reference = lambda batch: sequence_logps(other, batch).sums  # noqa: E731
    results = []
    for packing in (True, False):
        batch = vision.collator(params.model_copy(update={"packing": packing}), processor, model)(features)
        assert ("completion_weight" in batch) == (loss_type == "ld_alpha")
        with torch.no_grad():
            results.append(method.step(model, batch, params.method_settings().beta, reference,
                                       **params.method_settings().options))
    (packed_loss, packed_metrics), (loss, metrics) = results
    assert loss.item() == pytest.approx(packed_loss.item(), abs=1e-5)
    for name, value in metrics.items():
        assert value.tolist() == pytest.approx(packed_metrics[name].tolist(), abs=1e-5), name


def encoder_reads(model, family) -> list[int]:
    """Images (Qwen2-VL) or image tiles (Idefics3) the vision encoder reads, one entry per call."""
    tower = model.model.visual if family == "qwen2_vl" else model.model.vision_model
    seen: list[int] = []

    def count(module, args, kwargs):
        seen.append(kwargs["grid_thw"].shape[0] if family == "qwen2_vl" else kwargs["pixel_values"].shape[0])

    tower.register_forward_pre_hook(count, with_kwargs=True)
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_the_vision_encoder_reads_each_image_of_a_pair_once_when_packed(folders, family):
    from PIL import Image

    models, _, data, names = folders
    params, processor, features = prepared(models[family], data, names)
    model = load_model(params, str(models[family])).eval()
    seen = encoder_reads(model, family)
    # Each pair's images, each processed alone: the images (Qwen2-VL) or tiles (Idefics3) of reading them once.
    once = 0
    for row in rows(names):
        for name in [row["images"]] if isinstance(row["images"], str) else row["images"]:
            out = processor(images=[[Image.open(data / name).convert("RGB")]], return_tensors="pt")
            once += out["image_grid_thw"].shape[0] if family == "qwen2_vl" else int(
                (out["pixel_values"][0].flatten(1) != 0).any(1).sum())
    for packing, expected in ((True, once), (False, 2 * once)):
        batch = vision.collator(params.model_copy(update={"packing": packing}), processor, model)(features)
        with torch.no_grad():
            methods.load("orpo").step(model, batch, BETA)
        assert seen == [expected], (packing, seen)
        seen.clear()


@pytest.mark.parametrize("family", FAMILIES)
def test_first_step_dpo_loss_equals_trl_dpo_trainer(folders, family, tmp_path):
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    from autotrain.model.forward import sequence_logps

    models, references, data, names = folders
    params, processor, features = prepared(models[family], data, names, "dpo")
    policy = load_model(params, str(models[family])).eval()
    reference = load_model(params, str(references[family])).eval()
    batch = vision.collator(params, processor, policy)(features)
    with torch.no_grad():
        ours, metrics = methods.load("dpo").step(policy, batch, BETA, lambda b: sequence_logps(reference, b).sums)

    def conversation(row):
        """The row as TRL's vision datasets hold it: every content a list of parts (Arrow takes one type), a plain
        prompt's images before its text."""
        images = [row["images"]] if isinstance(row["images"], str) else row["images"]
        prompt = row["prompt"] if isinstance(row["prompt"], list) else [
            {"role": "user", "content": [{"type": "image"}] * len(images) + [{"type": "text", "text": row["prompt"]}]}]
        answer = lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # noqa: E731
        return {"images": [Image.open(data / name).convert("RGB") for name in images], "prompt": prompt,
                "chosen": answer(row["chosen"]), "rejected": answer(row["rejected"])}

    dataset = Dataset.from_list([conversation(row) for row in rows(names)])
    trl_policy = AutoModelForImageTextToText.from_pretrained(models[family], dtype=torch.float32).eval()
    trl_reference = AutoModelForImageTextToText.from_pretrained(references[family], dtype=torch.float32).eval()
    args = DPOConfig(output_dir=str(tmp_path), beta=BETA, report_to=[], use_cpu=True, max_length=None, bf16=False,
                     per_device_train_batch_size=3)
    trainer = DPOTrainer(model=trl_policy, ref_model=trl_reference, args=args, train_dataset=dataset,
                         processing_class=processor)
    trl_batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        theirs = trainer.compute_loss(trl_policy, trl_batch)
    assert abs(ours.item() - theirs.item()) < 1e-5, (ours.item(), theirs.item())
