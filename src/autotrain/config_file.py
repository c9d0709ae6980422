"""`--config FILE`: a YAML mapping of a params schema's fields, read with the place of each value.

Keys are field names in snake or kebab case (`lora_r: 8` or `lora-r: 8`), or a field's earlier name; `null` means
None; values keep YAML's own types. YAML's merge key works: `<<: *base` takes the anchored mapping's values under
the file's own keys, and keys that start with `x-` only hold such anchors. An unknown or duplicate key, a YAML
syntax error, a file that sets nothing (it would train the defaults), or (reported by autotrain.cli when the params
are built) a bad value is one line naming `FILE:LINE:COLUMN`. A relative path in the file is relative to the
current folder, as on the command line (autotrain.cli says so when the file's folder holds it instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotrain.errors import ParamsError
from autotrain.params import LLMTrainingParams, Schema
from autotrain.params.seed import not_this_tool, unknown_name_hint


@dataclass(frozen=True)
class ConfigFile:
    """A config file's values by field name, and where each value is written, so a bad value's error can say."""

    path: str
    values: dict[str, Any]
    places: dict[str, str]  # field -> "path:line:column" of its value


def load_config(path: str, schema: type[Schema] = LLMTrainingParams,
                other: tuple[type[Schema], str] | None = None) -> ConfigFile:
    """Read a YAML mapping of `schema` fields (snake or kebab case); each error is one line naming file:line:column.
    `other`: the other command's schema, and what to say of a key of its own (`lr` in an --inference file)."""
    import yaml

    try:
        text = Path(path).expanduser().read_bytes()
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read the config file: {exc.strerror}") from None
    try:
        loader = yaml.SafeLoader(text)  # decodes the whole file here
    except yaml.reader.ReaderError as exc:
        raise ParamsError(f"{path}: cannot read as YAML text: {exc.reason} (position {exc.position})") from None
    values: dict[str, Any] = {}
    places: dict[str, str] = {}
    names = schema.accepted_names()  # a field's earlier names set it too
    try:
        root = loader.get_single_node()
        if root is not None and not isinstance(root, yaml.MappingNode):
            raise ParamsError(f"{_place(path, root.start_mark)}: expected a mapping of parameter names to values")
        merged, own = _split(root.value if root is not None else [], loader)
        first_line: dict[str, int] = {}
        for key_node, value_node in merged + own:
            here = _place(path, key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode):
                raise ParamsError(f"{here}: a key must be a parameter name")
            name = names.get(key_node.value.replace("-", "_"))
            if name is None:
                refused = not_this_tool(key_node.value)
                if refused is not None:  # a field of another aitraining trainer: no guess at a near name
                    raise ParamsError(f"{here}: {refused}")
                if other is not None and key_node.value.replace("-", "_") in other[0].accepted_names():
                    raise ParamsError(f"{here}: '{key_node.value}' {other[1]}")
                hint = unknown_name_hint(key_node.value.replace("-", "_"), schema.model_fields,
                                         otherwise="the keys are the flags of `aitraining llm --help`")
                raise ParamsError(f"{here}: unknown key '{key_node.value}'; {hint}")
            if name in first_line:
                raise ParamsError(f"{here}: duplicate key '{key_node.value}' ({name} is already set on line "
                                  f"{first_line[name]})")
            if (key_node, value_node) in own:  # a merged value may be set again by the file's own key
                first_line[name] = key_node.start_mark.line + 1
            values[name] = loader.construct_object(value_node, deep=True)
            places[name] = _place(path, value_node.start_mark)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = f"{_place(path, mark) if mark else path}: invalid YAML: {exc.problem or exc.context}"
        if exc.problem and exc.context and exc.context_mark:
            message += f" ({exc.context} from line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        raise ParamsError(message) from None
    finally:
        loader.dispose()
    if not values:  # an empty file would train the defaults: the bundled sample pairs on the embedded model
        raise ParamsError(f"{path}: the file sets no parameter (it is empty or only comments); write one "
                          "`name: value` per line, e.g. `lr: 1e-4`")
    return ConfigFile(path, values, places)


def _split(pairs: list[tuple[Any, Any]], loader: Any) -> tuple[list[Any], list[Any]]:
    """The (key, value) nodes a mapping merges in with `<<` (YAML's merge key, as PyYAML's constructor resolves it:
    of several merged mappings the first wins, so it comes last), and the mapping's own, which win over them. Keys
    that start with `x-` only hold anchors for `<<` (as in docker compose files) and set nothing."""
    import yaml

    merge_keys = [pair for pair in pairs if pair[0].tag == "tag:yaml.org,2002:merge"]
    merged: list[Any] = []
    if merge_keys:
        holder = yaml.MappingNode("tag:yaml.org,2002:map", merge_keys, merge_keys[0][0].start_mark,
                                  merge_keys[-1][1].end_mark)
        loader.flatten_mapping(holder)  # raises a marked error for a merge of anything but mappings
        merged = holder.value
    own = [pair for pair in pairs if pair[0].tag != "tag:yaml.org,2002:merge"]
    anchors_only = lambda key: isinstance(key, yaml.ScalarNode) and key.value.startswith("x-")  # noqa: E731
    return [p for p in merged if not anchors_only(p[0])], [p for p in own if not anchors_only(p[0])]


def _place(path: str, mark: Any) -> str:
    """`path:line:column`, 1-based, from a 0-based yaml mark."""
    return f"{path}:{mark.line + 1}:{mark.column + 1}"


# Fields that may name a local path. Relative, they are read from the current folder, as on the command line.
_PATH_FIELDS = ("data_path", "model", "model_ref", "resume_from_checkpoint")


def check_relative_paths(config: ConfigFile, from_file: dict[str, Any]) -> None:
    """A relative path from the config file that is not in the current folder but beside the file: the user meant
    the file's folder. Said at the value's place, with the path to write (a path in neither place is left to the
    data and model checks, which also take hub ids)."""
    folder = Path(config.path).parent
    for name in _PATH_FIELDS:
        value = from_file.get(name)
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            continue
        if Path(value).exists() or not (folder / value).exists() or folder.resolve() == Path.cwd():
            continue
        raise ParamsError(f"{config.places[name]}: {name} '{value}' is read from the current folder ({Path.cwd()}), "
                          f"which has no such file; the config file's folder has one: write {folder / value} (a "
                          "relative path in a config file is relative to the current folder, as on the command line)")
