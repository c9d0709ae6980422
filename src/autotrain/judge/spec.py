"""What `--judge SPEC` names, the judge prompt, the API key, and what is checked before anything is trained.

SPEC is one of:
- an `http://` or `https://` URL: an OpenAI-compatible chat-completions server (vLLM, llama.cpp's server, Ollama,
  a hosted API), given as its base (`http://localhost:8000/v1`) or its full endpoint
  (`.../v1/chat/completions`). The model to ask is the URL's fragment (`http://localhost:8000/v1#Qwen2.5-7B`),
  else the one model the server lists at `/models` (several: refused, naming them). Its key comes from the
  environment only: `AITRAINING_JUDGE_API_KEY`, or `OPENAI_API_KEY` for api.openai.com alone (a key meant for
  OpenAI is never sent to another server); a URL holding credentials is refused, and a key is sent only over https
  or to this machine (plain http elsewhere would show it to the network).
- anything else: a local model, as `--model` takes one (a folder, a hub id in the local cache or reachable now, or
  the embedded default). Its config's `architectures` say which judge it is: a `...ForSequenceClassification` with
  one label is a reward model (each answer scored, the higher wins); a causal LM is asked the judge prompt and its
  verdict read from the next-token log-probs of the labels A and B.

The judge prompt is `DEFAULT_TEMPLATE` (after MT-Bench's pairwise prompt, Zheng et al. 2023), or a UTF-8 text file
(`--judge-template`) holding `{question}`, `{answer_a}` and `{answer_b}`; only those three are replaced (other
braces stay as written). A reward model takes no judge prompt: it scores the question and one answer as a
conversation.

Standard library only (and the hub's cache look-up for a hub id): the checks run before the data stage.
"""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from autotrain.errors import DataError, ModelError, ParamsError
from autotrain.params.judge import KEY_VARIABLE, JudgeSpec, parse  # noqa: F401 - the judge's names, kept here

OPENAI_KEY_VARIABLE, OPENAI_HOST = "OPENAI_API_KEY", "api.openai.com"
CHECK_TIMEOUT_S = 10.0
PLACEHOLDERS = ("{question}", "{answer_a}", "{answer_b}")
DEFAULT_TEMPLATE = """You are an impartial judge. Two AI assistants answered the user question below. Decide which \
assistant follows the user's instructions and answers the question better: helpful, relevant, accurate, and as \
detailed as the question needs. The order in which the answers appear must not influence you, nor their length.

[User question]
{question}

[Answer A]
{answer_a}
[End of answer A]

[Answer B]
{answer_b}
[End of answer B]

Which answer is better? Reply with one letter: A or B."""


def loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback: what never leaves the machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_host(url: str) -> bool:
    return loopback(urllib.parse.urlsplit(url).hostname or "")


def api_key(url: str) -> str | None:
    """The key to send to `url`, from the environment; ParamsError where sending it would expose it."""
    key = os.environ.get(KEY_VARIABLE)
    if not key and urllib.parse.urlsplit(url).hostname == OPENAI_HOST:
        key = os.environ.get(OPENAI_KEY_VARIABLE)
    if key and url.lower().startswith("http://") and not local_host(url):
        raise ParamsError(f"judge: {url} is plain http on another machine, and {KEY_VARIABLE} is set: the key would "
                          "cross the network unencrypted; use https")
    return key or None


def read_template(path: str | None) -> str:
    """The judge prompt: the default, or the file's text, which must hold every placeholder."""
    if path is None:
        return DEFAULT_TEMPLATE
    file = Path(path).expanduser()
    if not file.is_file():
        raise ParamsError(f"judge_template: {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"not a readable UTF-8 text file ({exc})", path=str(file)) from None
    missing = [name for name in PLACEHOLDERS if name not in text]
    if missing:
        raise DataError(f"the judge prompt lacks {', '.join(missing)} (it must hold {', '.join(PLACEHOLDERS)})",
                        path=str(file))
    return text


def fill(template: str, question: str, answer_a: str, answer_b: str) -> str:
    """The judge prompt for one order. Each placeholder is replaced once, in one pass, so an answer that itself
    holds "{answer_b}" is not filled in again."""
    values = dict(zip(PLACEHOLDERS, (question, answer_a, answer_b)))
    out, rest = [], template
    while True:
        found = [(rest.find(name), name) for name in PLACEHOLDERS if name in rest]
        if not found:
            return "".join(out) + rest
        at, name = min(found)
        out += [rest[:at], values[name]]
        rest = rest[at + len(name) :]


def served_model(spec: JudgeSpec) -> str:
    """The model to ask at `spec.url`: the fragment's, else the one the server lists (GET <base>/models)."""
    if spec.model is not None:
        return spec.model
    url = spec.url.removesuffix("/chat/completions") + "/models"
    request = urllib.request.Request(url, headers=_auth(spec.url))
    try:
        with urllib.request.urlopen(request, timeout=CHECK_TIMEOUT_S) as answer:
            listed = [m.get("id") for m in json.loads(answer.read()).get("data", []) if isinstance(m, dict)]
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        raise ParamsError(f"judge: {spec.text} does not answer ({reason_of(exc)}); start the server, or check the "
                          "URL") from None
    names = [name for name in listed if isinstance(name, str)]
    if len(names) != 1:
        shown = ", ".join(names) if names else "none"
        raise ParamsError(f"judge: {spec.text} serves {len(names)} models ({shown}); name one as the URL's fragment, "
                          f"e.g. {spec.text}#{names[0] if names else 'MODEL'}")
    return names[0]


def _auth(url: str) -> dict[str, str]:
    key = api_key(url)
    return {"Authorization": f"Bearer {key}"} if key else {}


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    return str(reason).strip().splitlines()[0] if str(reason).strip() else type(exc).__name__


def judge_kind(model: str) -> str:
    """'reward' or 'lm', from the model's config.json (a local folder or the hub cache); ModelError for another."""
    config = _config(model)
    if config is None:  # not readable before loading (a hub id downloaded later): decided when it loads
        return "lm"
    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        labels = config.get("num_labels", len(config.get("id2label") or {}) or 2)
        if labels != 1:
            raise ModelError(f"judge: {model} is a classifier with {labels} labels; a reward model gives one score "
                             "(num_labels 1)")
        return "reward"
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration"))
                                 for a in architectures):
        raise ModelError(f"judge: {model} ({', '.join(architectures)}) is neither a causal LM nor a reward model "
                         "(sequence classification with one label)")
    return "lm"


def _config(model: str) -> dict | None:
    folder = Path(model).expanduser()
    path: Path | None = folder / "config.json" if folder.is_dir() else None
    if path is None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # noqa: BLE001 - not a hub id: model_files.check has said so already
            return None
        path = Path(cached) if isinstance(cached, str) else None
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None


def check(text: str, template: str | None, embedded: bool = False) -> JudgeSpec:
    """Everything about the judge that can fail before training: the template file, a local model's files and kind
    (`embedded`: the embedded default model, checked when it is converted), a URL's server (it must answer now,
    and name its model). Returns the spec with the served model named."""
    from autotrain.model import files as model_files

    read_template(template)
    spec = parse(text)
    if spec.remote:
        api_key(spec.url)
        return JudgeSpec(spec.text, spec.url, served_model(spec))
    if not embedded:
        try:
            model_files.check(spec.model)
        except ModelError as exc:  # one line that says which model it is: the judge, not the one to train
            raise ModelError(f"judge: {exc}") from None
        judge_kind(spec.model)
    return spec
