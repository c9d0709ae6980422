"""`aitraining`: the command line, generated from LLMTrainingParams.

Every field is a flag in kebab case (`--lora-r`; `--lora_r` also works); its help is the field's description.
Boolean fields take `--flag` / `--no-flag`. Optional fields take `none` to mean None. Only flags the user typed
are passed on, so the params know which values were chosen and which are defaults.

A user error (bad params, data or model) prints one line and exits 2; `--verbose` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import types
import typing
from typing import Any, Literal

from autotrain import __version__
from autotrain.errors import AutoTrainError, ParamsError, TrainingInterrupted
from autotrain.inference import InferenceParams
from autotrain.trainers.clm.params import LLMTrainingParams

logger = logging.getLogger("autotrain")


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


def add_param_flags(parser: Any, schema: type = LLMTrainingParams, skip: frozenset[str] = frozenset()) -> None:
    """One flag per field of a params schema (LLMTrainingParams by default)."""
    for name, info in schema.model_fields.items():
        if name in skip:
            continue
        kind, optional = _unwrap_optional(info.annotation)
        flags = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        default = info.default.get_secret_value() if hasattr(info.default, "get_secret_value") else info.default
        help_text = f"{info.description} " + ("(required)" if info.is_required() else f"(default: {default})")
        if kind is bool:
            parser.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
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
        parser.add_argument(*flags, dest=name, type=_converter(kind, optional), choices=choices,
                            default=argparse.SUPPRESS, help=help_text,
                            metavar="{" + ",".join(str(c).lower() for c in choices) + "}" if choices else name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aitraining", description="Preference fine-tuning (ORPO) of causal LMs.")
    parser.add_argument("--version", action="version", version=f"aitraining {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    llm = commands.add_parser("llm", help="Fine-tune a causal language model.", allow_abbrev=False)
    llm.add_argument("--train", action="store_true", help="Run training.")
    llm.add_argument("--inference", action="store_true", help="Answer prompts with a trained project (JSON lines).")
    llm.add_argument("--verbose", action="store_true", help="Show tracebacks and library logs.")
    add_param_flags(llm.add_argument_group("training parameters"))
    add_param_flags(llm.add_argument_group("inference parameters"), InferenceParams,
                    skip=frozenset(LLMTrainingParams.model_fields))
    return parser


def params_from_args(args: argparse.Namespace) -> LLMTrainingParams:
    given = vars(args)
    stray = sorted(k for k in given if k in InferenceParams.model_fields and k not in LLMTrainingParams.model_fields)
    if stray:
        raise ParamsError(f"--{stray[0].replace('_', '-')} is an inference flag; use it with --inference, not --train")
    return LLMTrainingParams(**{k: v for k, v in given.items() if k in LLMTrainingParams.model_fields})


def inference_params_from_args(args: argparse.Namespace) -> InferenceParams:
    given = vars(args)
    stray = sorted(k for k in given if k in LLMTrainingParams.model_fields and k not in InferenceParams.model_fields)
    if stray:
        raise ParamsError(f"--{stray[0].replace('_', '-')} is a training flag; --inference takes --project-name "
                          "and the --inference-* flags")
    return InferenceParams(**{k: v for k, v in given.items() if k in InferenceParams.model_fields})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)  # stderr: errors only
    if not args.verbose:
        _quiet_libraries()
    try:
        if args.command == "llm":
            if args.train == args.inference:
                parser.error("llm: say what to do: --train or --inference")
            if args.inference:
                import json

                from autotrain.inference import generate

                for answer in generate(inference_params_from_args(args)):
                    print(json.dumps(answer, ensure_ascii=False), flush=True)
                return 0
            from autotrain.project import AutoTrainProject

            params = params_from_args(args)
            result = AutoTrainProject(params=params, backend="local", process=True).create()
            print(result.summary())
        return 0
    except TrainingInterrupted as exc:
        print(f"stopped: {exc}", file=sys.stderr)
        if exc.checkpoint is not None:
            print("resume: aitraining " + " ".join(_without_resume(argv)) + " --resume-from-checkpoint auto",
                  file=sys.stderr)
        return exc.exit_code
    except AutoTrainError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _without_resume(argv: list[str] | None) -> list[str]:
    """The command as typed, minus any earlier resume flag, quoted for a shell."""
    import shlex

    args, kept, skip = list(sys.argv[1:] if argv is None else argv), [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--resume-from-checkpoint", "--resume_from_checkpoint"):
            skip = True
        elif not arg.startswith(("--resume-from-checkpoint=", "--resume_from_checkpoint=")):
            kept.append(shlex.quote(arg))
    return kept


def _quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("transformers", "datasets", "peft", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
