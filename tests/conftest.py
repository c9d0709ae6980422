"""Tiny in-process models and tokenizers: no downloads, built in milliseconds.

The tokenizers are character-level with a hand-written vocabulary, so expected token ids can be written by hand
in the tests (`char_ids`), independently of the code under test:
    0 <unk>, 1 <s>, 2 </s>, 3 <|im_start|>, 4 <|im_end|>, 5.. printable ASCII (id = ord(c) - 27), 100 newline.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

# The tests are laid out like the package (tests/data/ for autotrain/data/, ...). Test modules share helpers by module
# name (`from test_packing import tiny_model`): every folder of tests is on the path, wherever the importer lives.
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for folder in sorted(p for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

# `make test` runs one pytest worker per core (pytest-xdist). These models are tiny: one thread each does the same work
# without the workers fighting over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
UNK, BOS, EOS, IM_START, IM_END = range(5)
NEWLINE = 100
VOCAB_SIZE = 101

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def char_ids(text: str) -> list[int]:
    """The test's own statement of the vocabulary: one id per character."""
    return [NEWLINE if c == "\n" else ord(c) - 27 for c in text]


def make_tokenizer(chat: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({chr(o): o - 27 for o in range(32, 127)})
    vocab["\n"] = NEWLINE
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    if not chat:  # a base model's tokenizer: BOS before every text it encodes with special tokens
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token=None if chat else "<s>",
        eos_token="<|im_end|>" if chat else "</s>",
        pad_token="</s>" if chat else None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"] if chat else None,
    )
    if chat:
        tok.chat_template = CHATML
    return tok


def make_model_dir(folder: Path, chat: bool, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=IM_END if chat else EOS,
        pad_token_id=EOS,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    make_tokenizer(chat).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A tiny Llama with a ChatML chat tokenizer."""
    return make_model_dir(tmp_path_factory.mktemp("chat-model"), chat=True)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has no chat template and adds BOS."""
    return make_model_dir(tmp_path_factory.mktemp("base-model"), chat=False)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def arithmetic_pairs(count: int, start: int = 0) -> list[dict]:
    """Short string pairs: correct sum chosen, wrong sum rejected."""
    rows = []
    for i in range(start, start + count):
        a, b = i % 7 + 1, i % 5 + 2
        rows.append({"prompt": f"{a}+{b}=", "chosen": f"{a + b}", "rejected": f"{a + b + 1}"})
    return rows


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", arithmetic_pairs(12))


@pytest.fixture(autouse=True)
def _quiet_logs():
    logging.getLogger("autotrain").setLevel(logging.INFO)
    yield


def spy_from_pretrained(monkeypatch, names: tuple[str, ...]) -> list[tuple[str, object]]:
    """Record (class name, trust_remote_code) for each from_pretrained call of these transformers classes."""
    import transformers

    seen: list[tuple[str, object]] = []
    for name in names:
        cls = getattr(transformers, name)
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    return seen


def greedy_answer(model_dir: Path, tokenizer_dir: Path, prompt: str) -> str:
    """What stock transformers answers greedily (64 new tokens) to `prompt` under the tokenizer's chat template,
    verbatim (leading and trailing whitespace included)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
