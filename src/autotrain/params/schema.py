"""The base of every params schema: frozen, strict, finite, and each validation error reported as one line.

A field may keep the names it had before (pydantic's `validation_alias=AliasChoices(name, earlier, ...)`): the
params, the CLI flags (autotrain.cli) and the config-file keys (autotrain.config_file) all accept them, through
`Schema.accepted_names`. Giving one value under two of its names is refused, rather than one silently winning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, ValidationError, model_validator

from autotrain.errors import ParamsError, did_you_mean

if TYPE_CHECKING:
    from typing_extensions import Self


class Schema(BaseModel):
    """A frozen, strict params schema whose validation errors are one-line ParamsErrors."""

    # allow_inf_nan=False: every float must be finite ("Input should be a finite number"); NaN would otherwise slip
    # past every bound (NaN >= 0 is False, but so is NaN < 0) and train into a non-finite loss.
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), validate_default=True,
                              allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ParamsError(_one_line(exc, type(self))) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy; with `update`, built again through validation (pydantic's own copy takes the new values
        unchecked, so `lr="abc"`, NaN or `lora_r=0` would reach the trainer). The copy's chosen fields are this
        object's and the updated ones; an earlier name of a field updates that field."""
        if not update:
            return super().model_copy(deep=deep)
        names = self.accepted_names()
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.update({names.get(name, name): value for name, value in update.items()})
        return type(self)(**values)

    def copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False, **kwargs: Any) -> Self:
        """pydantic's deprecated copy: the same as model_copy (its include/exclude are not taken)."""
        if kwargs:
            raise TypeError(f"copy() takes update and deep only (got {', '.join(kwargs)}); use model_copy")
        return self.model_copy(update=update, deep=deep)

    @classmethod
    def names_of(cls, field: str) -> list[str]:
        """The names `field` is accepted under: its own first, then its earlier ones."""
        alias = cls.model_fields[field].validation_alias
        earlier = [name for name in alias.choices if name != field] if isinstance(alias, AliasChoices) else []
        return [field, *earlier]

    @classmethod
    def accepted_names(cls) -> dict[str, str]:
        """Every name a value may be given under -> the field it sets."""
        return {name: field for field in cls.model_fields for name in cls.names_of(field)}

    @model_validator(mode="before")
    @classmethod
    def _one_name_per_field(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for field in cls.model_fields:
                given = [name for name in cls.names_of(field) if name in data]
                if len(given) > 1:
                    raise ValueError(f"{' and '.join(given)} name the same parameter ({field}); give one of them")
        return data


def one_of(value: str, known: list[str] | tuple[str, ...], what: str) -> str:
    """`value` if it is one of `known`; else the error names the closest ones."""
    if value in known:
        return value
    hint = did_you_mean(value, known, most=3, otherwise=f"known: {', '.join(known)}")
    raise ValueError(f"unknown {what} '{value}'; {hint}")


def _auto_or_at_least(minimum: int) -> Any:
    def check(value: int) -> int:
        if value != -1 and value < minimum:
            raise ValueError(f"must be -1 (automatic) or at least {minimum}")
        return value

    return AfterValidator(check)


# An int field whose -1 means "chosen automatically" (from the data, the model or the epochs).
AutoOrPositive = Annotated[int, _auto_or_at_least(1)]
AutoOrAtLeastTwo = Annotated[int, _auto_or_at_least(2)]


def _one_line(exc: ValidationError, schema: type[Schema]) -> str:
    from autotrain.params.seed import not_this_tool, unknown_name_hint

    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            refused = not_this_tool(field)
            if refused is not None:  # a field of another aitraining trainer: say so, no guess at a near name
                parts.append(refused)
                continue
            message = "unknown parameter; " + unknown_name_hint(field, schema.accepted_names(), otherwise="see --help")
        elif err["type"] == "literal_error":
            message = f"got {err['input']!r}; {message[0].lower()}{message[1:]}"
        # A cross-field rule (no field in loc) names its fields in its message.
        parts.append(f"{field}: {message}" if field else message)
    return "invalid parameters: " + "; ".join(parts)
