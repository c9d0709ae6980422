"""`aitraining`: the command line, generated from LLMTrainingParams.

Every field is a flag in kebab case (`--lora-r`; `--lora_r` also works); its help is the field's description.
Boolean fields take `--flag` / `--no-flag`. Optional fields take `none` to mean None. Only flags the user typed
(and the keys of a `--config` file) are passed on, so the params know which values were chosen and which are defaults.

`--config run.yml` reads a YAML mapping of the same fields (`lora_r: 8` or `lora-r: 8`; `null` means None), with
YAML's own types; flags typed on the command line override it. With `--inference` the file holds inference fields
(`project_name`, `inference_*`). `aitraining --config run.yml [flags]`, with no command, means
`aitraining llm --train --config run.yml [flags]`. An unknown or duplicate key, a YAML syntax error or a bad value
(also one refused because of a typed flag) is reported as `run.yml:LINE:COLUMN: ...`.

A user error (bad params, data or model) prints one line and exits 2; `--verbose` shows the traceback and the
libraries' own logs, warnings and loading bars (quiet otherwise: autotrain.quiet). The hub token is best given as
the HF_TOKEN environment variable; one typed as `--token` is kept out of what trackers record and of the printed
resume command.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import types
import typing
from typing import Any, Literal, TypeVar

from autotrain import __version__
from autotrain.chat.command import add_parser as add_chat_parser
from autotrain.config_file import ConfigFile, check_relative_paths, load_config
from autotrain.errors import AutoTrainError, ParamsError, TrainingInterrupted
from autotrain.inference import InferenceParams
from autotrain.judge import compare as judge_commands
from autotrain.params import SECTIONS, LLMTrainingParams, Schema
from autotrain.params.seed import DIFFERENT_DEFAULTS, not_this_tool, unknown_name_hint

logger = logging.getLogger("autotrain")
SchemaT = TypeVar("SchemaT", bound=Schema)


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return annotation, False


def _converter(kind: Any, optional: bool) -> Any:
    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        return kind(text) if kind in (int, float) else text

    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


_METAVARS = {int: "N", float: "X"}


def add_param_flags(parser: Any, schema: type = LLMTrainingParams, skip: frozenset[str] = frozenset(),
                    fields: Any = None) -> None:
    """One flag per field of a params schema (LLMTrainingParams by default; `fields`: only these of its fields).

    Each flag is shown once, in kebab case; the snake-case spelling and a field's earlier names are accepted too
    (`_Parser` rewrites them to this one before parsing)."""
    for name in fields if fields is not None else schema.model_fields:
        info = schema.model_fields[name]
        if name in skip:
            continue
        kind, optional = _unwrap_optional(info.annotation)
        flag = f"--{name.replace('_', '-')}"
        default = info.default.get_secret_value() if hasattr(info.default, "get_secret_value") else info.default
        help_text = f"{info.description} " + ("(required)" if info.is_required() else f"(default: {default}")
        if name in DIFFERENT_DEFAULTS and schema is LLMTrainingParams:
            help_text += f"; aitraining's: {DIFFERENT_DEFAULTS[name][0]}"
        help_text += "" if info.is_required() else ")"
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
            continue
        choices = None
        if typing.get_origin(kind) is Literal:
            literals = list(typing.get_args(kind))
            # 'none' is a real value of some fields (chat_template); elsewhere it spells None.
            optional = optional and "none" not in literals
            choices = literals + ([None] if optional else [])
            kind = str
        elif kind not in (int, float):
            kind = str
        metavar = "{" + ",".join(str(c).lower() for c in choices) + "}" if choices else _METAVARS.get(kind, "TEXT")
        parser.add_argument(flag, dest=name, type=_converter(kind, optional), choices=choices,
                            default=argparse.SUPPRESS, help=help_text, metavar=metavar)


USAGE = """aitraining llm --train [--config FILE] [--FLAG VALUE ...]
       aitraining llm --inference --project-name DIR --inference-prompts TEXT|FILE [...]
       aitraining llm --compare DIR_A DIR_B --judge SPEC [--judge-prompts FILE]
       aitraining --config FILE [--FLAG VALUE ...]   (short for llm --train --config FILE)
       aitraining cache list|clear                   (the tokenized-data cache)
       aitraining chat [--project-name DIR | --projects-dir DIR] [--port N]   (a local chat page)"""


class _Parser(argparse.ArgumentParser):
    """argparse, with every flag accepted under all its spellings but shown under one, and a user error as one
    line: no synopsis, and an unknown flag answered with the closest known one (or, for a field of another
    aitraining trainer, with what it is)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        args = sys.argv[1:] if args is None else list(args)
        self._args = [_canonical_flag(arg) for arg in args]
        return super().parse_known_args(self._args, namespace)

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments: "):
            first = message.removeprefix("unrecognized arguments: ").split()[0]
            message = _stray_value(first, getattr(self, "_args", []), self) or _unknown_flag(first, self)
        self.exit(2, f"error: {message}\n")


def _flag_spellings() -> dict[str, str]:
    """Every accepted flag spelling -> the one shown (snake case and earlier names -> the kebab-case flag)."""
    spellings = {}
    for schema in (LLMTrainingParams, InferenceParams):
        for field in schema.model_fields:
            shown = field.replace("_", "-")
            for name in schema.names_of(field):
                for spelled in {name, name.replace("_", "-")}:
                    spellings[f"--{spelled}"] = f"--{shown}"
                    spellings[f"--no-{spelled}"] = f"--no-{shown}"
    return spellings


_SPELLINGS: dict[str, str] = {}


def _canonical_flag(arg: str) -> str:
    if not _SPELLINGS:
        _SPELLINGS.update(_flag_spellings())
    if not arg.startswith("--"):
        return arg
    flag, eq, value = arg.partition("=")
    return _SPELLINGS.get(flag, flag) + eq + value


def _stray_value(arg: str, args: list[str], parser: argparse.ArgumentParser) -> str | None:
    """`--peft true`: a value after a switch, which takes none. The line names the switch and its two forms."""
    if arg.startswith("-") or arg not in args or args.index(arg) == 0:
        return None
    before = args[args.index(arg) - 1]
    switches = {f for action in _all_actions(parser) if isinstance(action, argparse.BooleanOptionalAction)
                for f in action.option_strings}
    if before not in switches:
        return None
    name = before.removeprefix("--").removeprefix("no-")
    return f"--{name} takes no value ({arg!r} given): write --{name} or --no-{name}"


def _unknown_flag(arg: str, parser: argparse.ArgumentParser) -> str:
    flag = arg.split("=", 1)[0]
    refused = not_this_tool(flag.removeprefix("--").removeprefix("no-")) if flag.startswith("--") else None
    if refused is not None:
        return refused
    known = sorted({f for action in _all_actions(parser) for f in action.option_strings if f.startswith("--")})
    hint = unknown_name_hint(flag.replace("_", "-"), known, otherwise="see aitraining llm --help", flag=True)
    return f"unknown flag {flag}; {hint}"


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += sub._actions
    return actions


def build_parser() -> argparse.ArgumentParser:
    formatter = lambda prog: argparse.HelpFormatter(prog, max_help_position=30, width=100)  # noqa: E731
    parser = _Parser(
        prog="aitraining", usage=USAGE, description="Preference fine-tuning (ORPO, DPO, SFT) of causal LMs.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"aitraining {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="llm|cache|chat")
    llm = commands.add_parser("llm", help="Fine-tune a causal language model.", allow_abbrev=False, usage=USAGE,
                              formatter_class=formatter,
                              description="Flags are grouped as the params are (autotrain.params); snake case "
                              "(--lora_r) works too.")
    llm.add_argument("--train", action="store_true", help="Run training.")
    llm.add_argument("--inference", action="store_true", help="Answer prompts with a trained project (JSON lines).")
    judge_commands.add_flags(llm)
    llm.add_argument("--verbose", action="store_true", help="Show tracebacks and library logs.")
    llm.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                     help="A YAML file of parameters: keys are the flags' names (lora_r: 8 or lora-r: 8; null means "
                     "none); flags typed here override its values. With --inference it holds the inference "
                     "parameters.")
    for title, section in SECTIONS:
        about = section.__doc__.split(":", 1)[-1].strip()
        group = llm.add_argument_group(title, about[:1].upper() + about[1:])
        add_param_flags(group, fields=list(section.model_fields))
    add_param_flags(llm.add_argument_group("Inference", "With --inference: the trained project answers prompts."),
                    InferenceParams, skip=frozenset(LLMTrainingParams.model_fields))
    cache = commands.add_parser("cache", help="List or clear the tokenized-data cache (autotrain.data.cache_store).",
                                formatter_class=formatter, usage="aitraining cache list|clear")
    cache.add_argument("action", choices=("list", "clear"), help="list: its entries, most recently used first, and "
                       "its size and cap (AITRAINING_CACHE_MAX_GB); clear: remove every entry.")
    cache.set_defaults(verbose=False)
    add_chat_parser(commands, formatter)
    return parser


def params_from_args(args: argparse.Namespace) -> LLMTrainingParams:
    return _build(LLMTrainingParams, args)


def inference_params_from_args(args: argparse.Namespace) -> InferenceParams:
    return _build(InferenceParams, args)


# What a flag (or config-file key) of the other command is called, and what to do instead, by the schema built.
_OTHER_COMMAND: dict[type[Schema], tuple[type[Schema], str]] = {
    LLMTrainingParams: (InferenceParams, "is an inference setting; use it with --inference, not --train"),
    InferenceParams: (LLMTrainingParams, "is a training setting, which --inference does not take; it takes "
                      "project_name, trust_remote_code and the inference_* settings"),
}


def _build(schema: type[SchemaT], args: argparse.Namespace) -> SchemaT:
    """The params from the config file's values under the typed flags: only those keys, so the params know which
    values were chosen. An invalid value that came from the file is reported at its place in the file."""
    from pydantic import ValidationError

    other = _OTHER_COMMAND[schema]
    stray = sorted(k for k in vars(args) if k in other[0].model_fields and k not in schema.model_fields)
    if stray:
        raise ParamsError(f"--{stray[0].replace('_', '-')} {other[1]}")
    flags = {k: v for k, v in vars(args).items() if k in schema.model_fields}
    config = load_config(args.config, schema, other) if "config" in args else ConfigFile("", {}, {})
    from_file = {k: v for k, v in config.values.items() if k not in flags}
    try:
        params = schema(**from_file, **flags)
    except ParamsError as exc:
        # Schema.__init__ raises ParamsError while handling pydantic's ValidationError, which names the fields; a
        # rule across fields names them in its message (`lora_r applies to LoRA: add --peft`).
        cause = exc.__context__
        failed = []
        for error in cause.errors() if isinstance(cause, ValidationError) else []:
            failed += [error["loc"][0]] if error["loc"] else _named_fields(str(exc), schema)
        place = next((config.places[f] for f in failed if f in from_file), None)
        if place is None:
            raise
        raise ParamsError(f"{place}: {exc}") from None
    check_relative_paths(config, from_file)
    return params


def _named_fields(message: str, schema: type[Schema]) -> list[str]:
    """The fields a rule's message names, as fields or flags, in order."""
    words = re.findall(r"[a-z][a-z0-9_-]*", message.removeprefix("invalid parameters: "))
    return [w.replace("-", "_") for w in words if w.replace("-", "_") in schema.model_fields]


def main(argv: list[str] | None = None) -> int:
    from autotrain import quiet

    parser = build_parser()
    args = parser.parse_args(_with_command(sys.argv[1:] if argv is None else argv))
    # `| head`: a run goes on with its output discarded, as the README says, rather than die halfway.
    quiet.survive_closed_output()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    try:
        if args.command == "cache":
            from autotrain.data.cache_store import command

            print("\n".join(command(args.action)))
        if args.command == "chat":
            from autotrain.chat.command import main as chat

            return chat(args)
        if args.command == "llm":
            if judge_commands.wanted(args):
                return judge_commands.command(args, sys.argv[1:] if argv is None else argv)
            if not args.train and not args.inference and vars(args).get("push_to_hub"):
                return _push(args)
            if args.train == args.inference:
                parser.error("llm: say what to do: --train, --inference, --compare DIR_A DIR_B, or --push-to-hub or "
                             "--judge alone (on a finished project)")
            if args.inference:
                import json

                from autotrain.inference import generate

                with quiet.libraries(args.verbose):
                    for answer in generate(inference_params_from_args(args)):
                        print(json.dumps(answer, ensure_ascii=False), flush=True)
                        if quiet.reader_gone():  # `| head -1`: nobody reads the next answers
                            break
                return 0
            from autotrain.project import AutoTrainProject

            params = params_from_args(args)
            result = AutoTrainProject(params=params, backend="local", process=True, verbose=args.verbose).create()
            print(result.summary())
        return 0
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        if exc.checkpoint is not None:
            kept, dropped_token = _without_resume(argv)
            if dropped_token:
                print("note: the resume command leaves out the tokens typed as flags; export HF_TOKEN (and "
                      "WANDB_API_KEY) instead", file=sys.stderr)
            print("resume: aitraining " + " ".join(kept) + " --resume-from-checkpoint auto", file=sys.stderr)
        return exc.exit_code
    except AutoTrainError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# What `--push-to-hub` without --train takes: the finished project, and where and how to upload it.
_PUSH_FIELDS = ("project_name", "push_to_hub", "repo_id", "username", "hub_private", "token")


def _push(args: argparse.Namespace) -> int:
    """`aitraining llm --push-to-hub --project-name DIR [--repo-id R | --username U]`: upload a finished run (one
    trained without --push-to-hub, or whose upload failed). Where to, when not given: as the run was told."""
    from autotrain import quiet
    from autotrain.hub import check_finished, hub_settings, push_finished
    from autotrain.preflight import project_dir

    typed = {k: v for k, v in vars(args).items() if k in LLMTrainingParams.model_fields or k == "config"}
    stray = [k for k in typed if k not in _PUSH_FIELDS]
    if stray:
        raise ParamsError(f"--{stray[0].replace('_', '-')} is a training flag; --push-to-hub without --train uploads a "
                          "finished project and takes --project-name, --repo-id, --username, --hub-private and --token")
    if "project_name" not in typed:
        raise ParamsError("--push-to-hub without --train uploads a finished project: add --project-name DIR")
    project = project_dir(LLMTrainingParams(project_name=typed["project_name"]))
    check_finished(project)
    told = {} if "repo_id" in typed or "username" in typed else hub_settings(project)
    params = LLMTrainingParams(**{**told, **typed})
    with quiet.libraries(args.verbose):
        repo = push_finished(params)
    print(f"pushed: {repo}")
    return 0


def _with_command(argv: list[str]) -> list[str]:
    """`aitraining --config FILE [flags]` has no command: it means `aitraining llm --train --config FILE [flags]`."""
    options_first = bool(argv) and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")
    if options_first and any(a == "--config" or a.startswith("--config=") for a in argv):
        return ["llm", "--train", *argv]
    return list(argv)


_SECRET_FLAGS = {"--token", "--wandb-token", "--wandb_token"}
_DROPPED = {"--resume-from-checkpoint", "--resume_from_checkpoint", *_SECRET_FLAGS}  # what the resume line leaves out


def _without_resume(argv: list[str] | None) -> tuple[list[str], bool]:
    """The command as typed, minus any earlier resume flag and the hub and W&B tokens (secrets on screen and in
    shell history), quoted for a shell; and whether a token was left out."""
    import shlex

    args, kept, skip, token = list(sys.argv[1:] if argv is None else argv), [], False, False
    for arg in args:
        flag = arg.split("=", 1)[0]
        if skip:
            skip = False
        elif flag in _DROPPED:
            skip = "=" not in arg
            token = token or flag in _SECRET_FLAGS
        else:
            kept.append(shlex.quote(arg))
    return kept, token


if __name__ == "__main__":
    sys.exit(main())
