"""The same objective on every model family users fine-tune: a matrix of tiny random models (hidden 64, 2 layers).

For each family:
- the first-step ORPO loss and NLL equal TRL's ORPOTrainer (prompt loss on) to 1e-4 relative, router aux loss
  included for the MoE models;
- every family trains packed by default, and the packed layout gives the padded layout's loss and grad_norm;
- LoRA with the default flags trains (every adapter gets a gradient, no base weight does);
- the tokenizer a project saves reloads with AutoTokenizer and encodes a chat exactly as the one trained with.

The configs zero every dropout field, so the comparisons do not depend on how dropout is switched off. The weights
are perturbed so that logits are far from uniform and a missing logit transform (Granite's logits_scaling, Cohere's
logit_scale, Gemma 2's softcap) shows at full size.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import BOS, EOS, IM_END, VOCAB_SIZE, char_ids, make_tokenizer
from test_trl_equivalence import trl_batch

from autotrain.batch.padded import PaddedCollator
from autotrain.model.kernels import make_collator, packing_kernel
from autotrain.train.methods.orpo import orpo_step

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

_COMMON = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=256, bos_token_id=BOS, eos_token_id=IM_END, pad_token_id=EOS,
)
_MOE = dict(num_experts_per_tok=2, output_router_logits=True, router_aux_loss_coef=0.02)

# model_type -> config fields besides _COMMON.
FAMILIES: dict[str, dict] = {
    "llama": {},
    "mistral": {},
    "qwen2": {},
    "qwen3": {"head_dim": 16},
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16},
    "gemma3_text": {"head_dim": 16},
    "phi3": {},
    "olmo2": {},
    "cohere": {},
    # Granite 3's muP multipliers, with a logits_scaling large enough to matter.
    "granite": {"logits_scaling": 8.0, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
                "attention_multiplier": 0.0625},
    "gpt2": {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256},
    "gpt_neox": {},
    "starcoder2": {},
    "smollm3": {},
    "mixtral": {**_MOE, "num_local_experts": 4},
    "qwen3_moe": {**_MOE, "num_experts": 4, "moe_intermediate_size": 32, "head_dim": 16},
}

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 2?\nSay it."},
    {"role": "assistant", "content": "4, of course."},
]


def tiny_config(family: str, **overrides):
    from transformers import AutoConfig

    config = AutoConfig.for_model(family, **{**_COMMON, **FAMILIES.get(family, {}), **overrides})
    for key, value in config.to_dict().items():
        if isinstance(value, float) and ("dropout" in key or "pdrop" in key):
            setattr(config, key, 0.0)
    return config


def perturbed_model(config, seed: int = 0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


def pair_features(seed: int = 1) -> list[dict]:
    """Three pairs of uneven lengths, token ids drawn in the tokenizer's printable range."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda n: torch.randint(5, 100, (n,), generator=generator).tolist()  # noqa: E731
    return [{"prompt_ids": draw(p), "chosen_ids": draw(c), "rejected_ids": draw(r)}
            for p, c, r in [(5, 3, 7), (2, 6, 1), (9, 4, 4)]]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Hidden-64 matmuls gain nothing from a second thread, and on a loaded 2-core machine the waiting threads made
    this module about 10x slower (CPU time 110 s with two threads, 20 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, model folder as a project reads it: safetensors and a chat tokenizer, in-memory model)."""
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    model = perturbed_model(tiny_config(name))
    model.save_pretrained(folder)
    make_tokenizer(chat=True).save_pretrained(folder)
    return name, folder, model


def test_first_step_loss_matches_trl(family, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    from autotrain.model.loading import load_tokenizer

    name, folder, _ = family
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = load_tokenizer(str(folder), trust_remote_code=False)
    rows = Dataset.from_list([{"prompt": "1+1=", "chosen": "2", "rejected": "3"}])
    args = ORPOConfig(output_dir=str(tmp_path), beta=0.1, report_to=[], max_length=64, use_cpu=True)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    features = pair_features()
    model.train()  # the first training step's mode (every dropout is zero)
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(model, trl_batch(features, tokenizer.pad_token_id))
        ours, metrics = orpo_step(model, PaddedCollator(tokenizer.pad_token_id, prompt_loss=True)(features), 0.1)
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-4), name
    assert metrics["nll_loss"].item() == pytest.approx(trl_metrics["nll_loss"], rel=1e-4), name


def _loss_and_grad_norm(model: torch.nn.Module, batch: dict) -> tuple[float, float]:
    model.zero_grad(set_to_none=True)
    loss, _ = orpo_step(model, batch, 0.1)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    model.zero_grad(set_to_none=True)
    return loss.item(), norm.item()


def test_packed_layout_equals_padded(family):
    name, _, model = family
    kernel, why = packing_kernel(model)
    assert kernel is not None, (name, why)  # every family packs; tests/test_windows.py has windows that bind
    features = pair_features()
    model.train()
    collator = make_collator(True, EOS, prompt_loss=True, model=model)
    assert "segment_ids" in collator(features), name
    packed = _loss_and_grad_norm(model, collator(features))
    padded = _loss_and_grad_norm(model, PaddedCollator(EOS, prompt_loss=True)(features))
    assert packed[0] == pytest.approx(padded[0], rel=1e-5), name
    assert packed[1] == pytest.approx(padded[1], rel=1e-5), name


def test_lora_trains_with_default_flags(family):
    from autotrain.model.loading import load_model
    from autotrain.trainers.clm.params import LLMTrainingParams

    name, folder, _ = family
    net = load_model(LLMTrainingParams(model=str(folder), peft=True), str(folder))
    batch = make_collator(True, EOS, prompt_loss=False, model=net)(pair_features())
    net.train()
    loss, _ = orpo_step(net, batch, 0.1)
    loss.backward()
    assert torch.isfinite(loss), name
    trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained), name
    # LoRA's B starts at zero, so at the first step A gets no gradient yet and B gets one everywhere.
    missing = [n for n, p in trained.items() if "lora_B" in n and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, (name, missing)


def test_saved_tokenizer_reloads_and_encodes_the_same(family, tmp_path):
    """A project's saved tokenizer (next to the model's config) reloads with AutoTokenizer and encodes a chat and a
    plain text exactly as the tokenizer the run trained with (transformers 5 rebuilds some types' tokenizers from the
    config's model type, e.g. qwen2 -> Qwen2Tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    from autotrain.model.loading import load_tokenizer

    name, folder, _ = family
    trained_with = load_tokenizer(str(folder), trust_remote_code=False)
    AutoConfig.from_pretrained(folder).save_pretrained(tmp_path)
    trained_with.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for generation in (False, True):
        expected = trained_with.apply_chat_template(MESSAGES, add_generation_prompt=generation, return_dict=False)
        assert reloaded.apply_chat_template(MESSAGES, add_generation_prompt=generation, return_dict=False) == expected
    text = "Plain text, with  two spaces\nand a newline."
    assert reloaded(text)["input_ids"] == trained_with(text)["input_ids"], name
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (trained_with.eos_token_id, trained_with.pad_token_id)


@pytest.mark.parametrize("precision, compute", [(None, torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_qlora_int4_computes_in_the_training_precision(monkeypatch, chat_model, precision, compute):
    """mixed_precision none means fp32 everywhere, the 4-bit layers' compute dtype included (no CUDA needed: the
    config handed to from_pretrained is inspected)."""
    import transformers

    from autotrain.model import loading
    from autotrain.trainers.clm.params import LLMTrainingParams

    seen = {}

    def fake_from_pretrained(name, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop after the config")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    params = LLMTrainingParams(model=str(chat_model), peft=True, quantization="int4", mixed_precision=precision)
    with pytest.raises(RuntimeError, match="stop after the config"):
        loading.load_model(params, str(chat_model))
    config = seen["quantization_config"]
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == compute
    assert seen["dtype"] == torch.float32  # the unquantized parts (norms, head) stay fp32


_TEXT = dict(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)
_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
_EXPERTS = dict(num_local_experts=4, num_experts_per_tok=2)
_GEMMA4 = {**_TEXT, "final_logit_softcapping": 2.0, "vocab_size_per_layer_input": VOCAB_SIZE,
           "hidden_size_per_layer_input": 8}
# Every family the head-transform table names whose tiny model builds in this transformers, with values that make
# each transform bind. Two that must get none: mpt has a logit_scale config field its forward never applies, and
# Gemma3ForConditionalGeneration never applies its text config's final_logit_softcapping (a transform must not be
# guessed from a field name).
HEAD_CASES: dict[str, dict] = {
    "granite": {**_TEXT, "logits_scaling": 8.0},
    "granite_swa": {**_TEXT, "logits_scaling": 8.0},
    "granitemoe": {**_TEXT, **_EXPERTS, "logits_scaling": 8.0},
    "granitemoe_swa": {**_TEXT, **_EXPERTS, "logits_scaling": 8.0},
    "granitemoeshared": {**_TEXT, **_EXPERTS, "logits_scaling": 8.0, "shared_intermediate_size": 32},
    "granitemoehybrid": {**_TEXT, **_EXPERTS, "logits_scaling": 8.0, "layer_types": ["attention", "attention"]},
    "minicpm3": {**_TEXT, "dim_model_base": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 16,
                 "kv_lora_rank": 16, "q_lora_rank": 32},
    "hyperclovax": {**_TEXT, "logits_scaling": 0.25},
    "falcon_h1": {**_TEXT, "lm_head_multiplier": 0.3, "mamba_d_ssm": 64, "mamba_n_heads": 4, "mamba_d_head": 16,
                  "mamba_d_state": 8, "mamba_chunk_size": 16},
    "cohere": _TEXT,
    "cohere2": _TEXT,
    "cohere2_moe": _TEXT,
    "gemma2": {**_TEXT, "final_logit_softcapping": 2.0},
    "gemma3_text": {**_TEXT, "final_logit_softcapping": 2.0},
    "gemma3": {"text_config": {**_TEXT, "final_logit_softcapping": 2.0},
               "vision_config": {**_VISION, "image_size": 28, "patch_size": 14}, "mm_tokens_per_image": 4},
    "gemma3n_text": {**_TEXT, "final_logit_softcapping": 2.0, "layer_types": ["sliding_attention", "full_attention"],
                     "num_kv_shared_layers": 0, "laurel_rank": 4, "altup_num_inputs": 2,
                     "hidden_size_per_layer_input": 8, "vocab_size_per_layer_input": VOCAB_SIZE,
                     "activation_sparsity_pattern": [0.0, 0.0]},
    "gemma4_text": _GEMMA4,
    "gemma4": {"text_config": _GEMMA4, "vision_config": _VISION, "audio_config": None},
    "vaultgemma": {**_TEXT, "final_logit_softcapping": 2.0},
    "nanochat": {**_TEXT, "final_logit_softcapping": 2.0},
    "beam": {**_TEXT, "final_logit_softcapping": 2.0},
    "recurrent_gemma": {**_TEXT, "logits_soft_cap": 2.0},
    "mpt": {"vocab_size": VOCAB_SIZE, "d_model": 64, "n_heads": 4, "n_layers": 2, "logit_scale": 0.25},
}


@pytest.mark.parametrize("kind", list(HEAD_CASES))
def test_chunked_head_gives_the_models_own_log_probs(kind):
    """The head transforms (autotrain.model.head.head_transform) reproduce each family's returned logits: chunked-head
    log-probs equal a log-softmax of the model's own forward logits at every position."""
    from transformers import AutoConfig

    from autotrain.model.head import decoder_and_head
    from autotrain.model.logprobs import token_logps

    model = perturbed_model(AutoConfig.for_model(kind, **HEAD_CASES[kind])).eval()
    ids = torch.randint(5, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    decoder, head, transforms = decoder_and_head(model)
    found = []
    handle = decoder.register_forward_hook(lambda module, args, out: found.append(out[0] if isinstance(out, tuple)
                                                                                  else out.last_hidden_state))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    handle.remove()
    ours = token_logps(found[0][0, :-1], head, ids[0, 1:], **transforms)
    expected = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_multimodal_gemma3_packs_with_a_mask_per_layer_type():
    """AutoModelForCausalLM loads Gemma 3 from 4B up as Gemma3ForConditionalGeneration, whose layer types sit in the
    text config: it takes the per-layer-type masks too, with a window (16) shorter than the rows."""
    from test_windows import long_pairs
    from transformers import AutoConfig

    text = {**HEAD_CASES["gemma3"]["text_config"], "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention"]}
    model = perturbed_model(AutoConfig.for_model("gemma3", **{**HEAD_CASES["gemma3"], "text_config": text})).train()
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    features = long_pairs()
    packed = make_collator(True, EOS, prompt_loss=True, model=model)(features)
    assert "segment_ids" in packed
    ours = _loss_and_grad_norm(model, packed)
    padded = _loss_and_grad_norm(model, PaddedCollator(EOS, prompt_loss=True)(features))
    assert ours == pytest.approx(padded, rel=1e-5)


def test_gemma4_with_kv_sharing_layers_trains_and_passes_the_head_check(tmp_path):
    """Gemma 4's last layers can reuse earlier layers' keys and values (num_kv_shared_layers, as its small models
    do); given an int logits_to_keep, its decoder then computes those layers for the kept positions only, and the
    chunked head found one position where it needs every target's: an IndexError. Either layout and the start-up head
    check must see every position."""
    from test_head_check import build_trainer, head_check

    config = tiny_config("gemma4_text", num_hidden_layers=4, num_kv_shared_layers=2,
                         layer_types=["sliding_attention", "full_attention"] * 2)
    model = perturbed_model(config).train()
    features = pair_features()
    padded = PaddedCollator(EOS, prompt_loss=True)(features)
    with torch.no_grad():
        logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits.float()
    logps = logits.log_softmax(-1).flatten(0, 1)[padded["hidden_index"], padded["target_ids"]]
    expected = torch.zeros(6).index_add(0, padded["target_seq"], torch.where(padded["in_completion"], logps, 0.0))
    from autotrain.model.forward import sequence_logps

    for batch in (padded, make_collator(True, EOS, prompt_loss=True, model=model)(features)):
        with torch.no_grad():
            torch.testing.assert_close(sequence_logps(model, batch).sums, expected, rtol=1e-5, atol=1e-4)
    assert head_check(build_trainer(tmp_path, model, packing=True)) < 1e-4


def _adapter_dropouts(net: torch.nn.Module) -> set[float]:
    return {m.p for name, m in net.named_modules() if "lora_dropout" in name and isinstance(m, torch.nn.Dropout)}


def test_lora_on_fused_experts_trains_without_dropout_by_default(tmp_path):
    """peft's all-linear adapts a transformers-5 MoE's fused expert weights (3-D parameters, through lora.ParamWrapper,
    which takes no dropout) and its router; by default the run trains them with LoRA dropout 0."""
    from autotrain.model.loading import load_model
    from autotrain.trainers.clm.params import LLMTrainingParams

    perturbed_model(tiny_config("mixtral")).save_pretrained(tmp_path)
    net = load_model(LLMTrainingParams(model=str(tmp_path), peft=True), str(tmp_path))
    adapted = {name.rsplit(".lora_", 1)[0] for name, _ in net.named_parameters() if "lora_" in name}
    assert any(name.endswith("experts") or "gate_up_proj" in name for name in adapted), sorted(adapted)
    assert _adapter_dropouts(net) <= {0.0}


def test_lora_on_fused_experts_doubles_the_fused_rank_without_a_false_warning(tmp_path):
    """peft fuses w1 and w3 into gate_up_proj with rank 2r (and alpha 2 alpha) through a rank_pattern it adds itself,
    then warns that the pattern matched no module (it matched a parameter): the run must not print that."""
    import warnings

    from autotrain.model.loading import load_model
    from autotrain.trainers.clm.params import LLMTrainingParams

    perturbed_model(tiny_config("mixtral")).save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = load_model(LLMTrainingParams(model=str(tmp_path), peft=True, lora_r=4), str(tmp_path))
    assert not [str(w.message) for w in caught if "did not match any targeted module" in str(w.message)]
    ranks = {(name, m.parameter_name): m.r["default"] for name, m in net.named_modules()
             if getattr(m, "parameter_name", None) in ("gate_up_proj", "down_proj")}
    assert sorted(set(ranks.values())) == [4, 8], ranks
    assert all(r == (8 if param == "gate_up_proj" else 4) for (_, param), r in ranks.items()), ranks


def test_lora_on_a_dense_model_keeps_the_default_dropout(chat_model):
    from autotrain.model.loading import load_model
    from autotrain.trainers.clm.params import LLMTrainingParams

    # With the model's dropout on, none means aitraining's 0.05 (with it off, 0: test_dropout.py).
    net = load_model(LLMTrainingParams(model=str(chat_model), peft=True, disable_dropout=False), str(chat_model))
    assert _adapter_dropouts(net) == {0.05}


def test_lora_dropout_on_fused_experts_names_the_cause_and_the_fix(tmp_path):
    from autotrain.errors import ModelError
    from autotrain.model.loading import load_model
    from autotrain.trainers.clm.params import LLMTrainingParams

    perturbed_model(tiny_config("qwen3_moe")).save_pretrained(tmp_path)
    params = LLMTrainingParams(model=str(tmp_path), peft=True, lora_dropout=0.1)
    with pytest.raises(ModelError) as caught:
        load_model(params, str(tmp_path))
    message = str(caught.value)
    assert message.startswith("lora_dropout 0.1:") and "\n" not in message
    assert "--lora-dropout 0" in message and "--target-modules" in message and "Qwen3MoeForCausalLM" in message
    # Naming the modules without the experts, dropout applies.
    params = LLMTrainingParams(model=str(tmp_path), peft=True, lora_dropout=0.1, target_modules="q_proj,v_proj")
    assert _adapter_dropouts(load_model(params, str(tmp_path))) == {0.1}


def _moe_model(kind: str, attention: str) -> torch.nn.Module:
    model = perturbed_model(tiny_config(kind))
    model.set_attn_implementation(attention)
    return model.train()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_moe_router_loss_is_the_same_packed_on_every_kernel(kind, attention):
    """The packed layout (boolean or additive 4-D mask) trains the padded layout's router loss, not a crash."""
    from autotrain.model.forward import sequence_logps

    model = _moe_model(kind, attention)
    features = pair_features()
    packed = make_collator(True, EOS, prompt_loss=True, model=model)(features)
    padded = PaddedCollator(EOS, prompt_loss=True)(features)
    assert "segment_ids" in packed
    with torch.no_grad():
        router = sequence_logps(model, packed).router_loss, sequence_logps(model, padded).router_loss
    assert router[0].item() > 0 and router[0].item() == pytest.approx(router[1].item(), rel=1e-6)
    for ours, reference in zip(_loss_and_grad_norm(model, packed), _loss_and_grad_norm(model, padded)):
        assert ours == pytest.approx(reference, rel=1e-5)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_moe_sft_loss_equals_the_models_own(kind):
    """SFT rows (prompt once, no rejected side): packed and padded give transformers' own loss with labels, which is
    the token-mean NLL plus router_aux_loss_coef times the model's aux loss."""
    from autotrain.train.methods.sft import sft_step

    model = _moe_model(kind, "sdpa")
    rows = [{**f, "rejected_ids": []} for f in pair_features()]
    padded = PaddedCollator(EOS)(rows)
    labels = torch.full_like(padded["input_ids"], -100)
    for i, row in enumerate(rows):
        start, end = len(row["prompt_ids"]), len(row["prompt_ids"]) + len(row["chosen_ids"])
        labels[i, start:end] = padded["input_ids"][i, start:end]
    with torch.no_grad():
        expected = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=labels,
                         output_router_logits=True, use_cache=False).loss.item()
        packed = make_collator(True, EOS, prompt_loss=False, model=model)(rows)
        assert "segment_ids" in packed
        for batch in (padded, packed):
            assert sft_step(model, batch, 0.1)[0].item() == pytest.approx(expected, rel=1e-5)


def test_a_tokenizer_rebuilt_unlike_its_tokenizer_json_is_reported(tmp_path, caplog):
    """transformers 5 builds a qwen2 model's tokenizer as Qwen2Tokenizer from the vocabulary, with Qwen2's own
    pre-tokenizer, whatever tokenizer.json says; this character-level one then loses its spaces and newlines. The
    run trains with what AutoTokenizer gives (so inference matches), and says that it differs from the folder's."""
    from transformers import AutoConfig

    from autotrain.model.loading import load_tokenizer

    for kind in ("qwen2", "llama"):
        folder = tmp_path / kind
        AutoConfig.for_model(kind).save_pretrained(folder)
        make_tokenizer(chat=True).save_pretrained(folder)
        caplog.clear()
        tokenizer = load_tokenizer(str(folder), trust_remote_code=False)
        rebuilt = type(tokenizer).__name__ == "Qwen2Tokenizer"
        assert rebuilt == (kind == "qwen2")
        assert tokenizer("a b")["input_ids"] == ([char_ids("a")[0], char_ids("b")[0]] if rebuilt else char_ids("a b"))
        warned = [r.getMessage() for r in caplog.records if "tokenizer.json" in r.getMessage()]
        assert len(warned) == (1 if rebuilt else 0), warned
        if rebuilt:
            assert warned[0].startswith(f"{folder}: ") and "Qwen2Tokenizer" in warned[0]
