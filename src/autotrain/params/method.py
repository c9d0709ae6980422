"""The Method section of the params: which loss, its settings (beta, gamma, alpha, the --loss-type and its own
settings: each method's or loss's authors' value when left unset), its reference model, and what its NLL covers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, Field, field_validator, model_validator

from autotrain.params import methods
from autotrain.params.loss_types import NOT_OFFERED, LossType
from autotrain.params.schema import Schema, one_of

TRAINER_NAMES: tuple[str, ...] = methods.NAMES
# The settings a method's terms take, by keyword, and the params field that gives each.
SETTING_FIELDS: dict[str, str] = {"beta": "dpo_beta", "gamma": "simpo_gamma", "alpha": "cpo_alpha",
                                  "label_smoothing": "label_smoothing", "discopop_tau": "discopop_tau",
                                  "alphapo_alpha": "alphapo_alpha", "desirable_weight": "desirable_weight",
                                  "undesirable_weight": "undesirable_weight"}
_MENUS = {name: spec.losses for name, spec in methods.SPECS.items() if spec.losses}


def _menu_help(name: str) -> str:
    return f"{name}: " + ", ".join(_MENUS[name])


class MethodParams(Schema):
    """Method: the loss and its settings, its reference model, and what its NLL covers."""

    trainer: str = Field(
        "orpo",
        description="Training method: "
        + ", ".join(f"{spec.name} ({spec.help})" for spec in methods.SPECS.values())
        + "".join(f"; {alias} is {name}" for alias, name in methods.ALIASES.items()) + ".",
    )
    dpo_beta: float | None = Field(
        None,
        ge=0,
        description="ORPO's lambda, or the beta of the other methods (IPO's tau). none: the method's own (" + ", ".join(f"{spec.name} {spec.beta:g}" for spec in methods.SPECS.values()
                                         if spec.beta is not None) + "), or its --loss-type's.",
    )
    loss_type: tuple[str, ...] | None = Field(
        None,
        description="TRL's loss_type (" + "; ".join(map(_menu_help, _MENUS)) + "); dpo sums several (sigmoid,sft: "
        "RPO); none: the first.",
    )
    loss_weights: tuple[float, ...] | None = Field(
        None, description="One weight > 0 per --loss-type; none: 1 each."
    )
    label_smoothing: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="Probability that a label is flipped: robust (none: 0.1), exo_pair (none: 0.001), sigmoid (cDPO; "
        "none: 0).",
    )
    ld_alpha: float | None = Field(
        None, ge=0, le=1, description="LD-DPO (dpo): the weight of completion tokens past the pair's shorter answer. "
        "none: off."
    )
    discopop_tau: float | None = Field(None, gt=0, description="DiscoPOP's temperature. none: 0.05, the paper's.")
    alphapo_alpha: float | None = Field(
        None, description="AlphaPO's reward shape; none: 0.25, the paper's."
    )
    desirable_weight: float | None = Field(None, gt=0, description="kto: a desirable example's weight (none: 1).")
    undesirable_weight: float | None = Field(None, gt=0, description="kto: an undesirable one's (none: 1).")
    simpo_gamma: float | None = Field(
        None,
        ge=0,
        description=f"Target reward margin of simpo (none: {methods.SPECS['simpo'].gamma_per_beta:g} x beta, the "
        "paper's) and AlphaPO (none: 0.1).",
    )
    cpo_alpha: float | None = Field(
        None,
        ge=0,
        description=f"NLL weight of cpo (none: {methods.SPECS['cpo'].alpha:g}, as the paper and TRL; alphapo 0) and "
        f"simpo (none: {methods.SPECS['simpo'].alpha:g}; > 0 is CPO-SimPO).",
    )
    model_ref: str | None = Field(
        None,
        description="Reference model of dpo and kto (folder or hub id). Default: the base model; with --peft, its "
        "weights with the adapters off.",
    )
    precompute_ref_logps: bool = Field(
        False,
        description="dpo, kto: the reference log-probs computed once per dataset before training, not per step.",
    )
    prompt_loss: bool = Field(
        False,
        validation_alias=AliasChoices("prompt_loss", "orpo_prompt_loss"),
        description="The prompt tokens under the NLL term too (ORPO as TRL does it, SFT; DPO only reports its NLL). "
        "Off: the completion only, as the ORPO paper. Earlier name: orpo_prompt_loss.",
    )
    response_only_loss: bool = Field(
        True, description="aitraining's name for the opposite of --prompt-loss: --no-response-only-loss is --prompt-loss."
    )
    disable_dropout: bool = Field(
        True,
        description="Turn off dropout (modules, attention) in the model and its reference, as TRL does: the loss is "
        "then a function of the weights alone, packed or padded. An unset --lora-dropout follows it (0 while on).",
    )

    @field_validator("trainer")
    @classmethod
    def _known_trainer(cls, value: str) -> str:
        # Papers and TRL write SimPO, CPO, ORPO: the name in any case is the method.
        return one_of(value.lower() if value.lower() in TRAINER_NAMES else value, TRAINER_NAMES, "trainer")

    @field_validator("loss_type", "loss_weights", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # The command line gives one string, "sigmoid,sft"; a config file may give a list.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",")) if value.strip() else ()
        return value

    @model_validator(mode="after")
    def _method_fields(self) -> MethodParams:
        if self.dpo_beta == 0 and methods.spec(self.trainer).positive_beta:
            raise ValueError(f"dpo_beta 0 leaves {self.trainer} with no gradient (every pair's loss is log 2): give a "
                             "beta > 0, or leave it out for the method's default")
        self.method_settings()  # every rule below, once at construction
        return self

    def _losses(self) -> tuple[tuple[LossType, ...], tuple[float, ...]]:
        """The run's loss types (none for a method without a menu) and their weights, checked."""
        spec = methods.spec(self.trainer)
        if spec.losses is None:
            for name in ("loss_type", "loss_weights"):
                if getattr(self, name) is not None:
                    menus = list(_MENUS)
                    raise ValueError(f"{name} applies to --trainer {', '.join(menus[:-1])} and {menus[-1]} only "
                                     f"(trainer is {self.trainer})")
            return (), ()
        names = self.loss_type or (next(iter(spec.losses)),)
        for name in names:
            if name in NOT_OFFERED and name not in spec.losses:
                raise ValueError(f"loss_type {name} is not offered: it {NOT_OFFERED[name]}")
            one_of(name, tuple(spec.losses), f"loss_type for --trainer {spec.name}")
        if len(set(names)) < len(names):
            raise ValueError(f"loss_type {','.join(names)} names a loss twice: give each once, weighted with "
                             "--loss-weights")
        if spec.name != "dpo" and len(names) > 1:
            raise ValueError(f"--trainer {spec.name} takes one loss_type (got {','.join(names)}); several are "
                             "--trainer dpo's")
        if names == ("sft",):
            raise ValueError("loss_type sft alone is --trainer sft (no reference model needed); combine it with a "
                             "preference loss (sigmoid,sft is RPO)")
        weights = self.loss_weights if self.loss_weights is not None else (1.0,) * len(names)
        if len(weights) != len(names):
            raise ValueError(f"loss_weights gives {len(weights)} weight(s) for {len(names)} loss type(s) "
                             f"({','.join(names)}): one each")
        if any(not weight > 0 for weight in weights):
            raise ValueError("loss_weights must all be > 0 (leave a loss out of --loss-type instead of weighing it 0)")
        return tuple(spec.losses[name] for name in names), tuple(float(weight) for weight in weights)

    def method_settings(self) -> MethodSettings:
        """This run's method, loss types, and settings: the values given, else its authors' (autotrain.params.methods)."""
        spec = methods.spec(self.trainer)
        losses, weights = self._losses()
        if self.ld_alpha is not None and spec.name != "dpo":
            raise ValueError(f"ld_alpha applies to --trainer dpo only (trainer is {self.trainer})")
        # The settings this run reads, each with its default(s): its loss types' where it has a menu, else the
        # method's own (gamma: None, a ratio of beta).
        defaults: dict[str, list[tuple[float | None, str]]] = {}
        for loss in losses:
            for name, value in loss.defaults.items():
                defaults.setdefault(name, []).append((value, loss.name))
        if not losses:
            if spec.beta is not None:
                defaults["beta"] = [(spec.beta, spec.name)]
            for name in spec.options:
                defaults[name] = [(spec.alpha if name == "alpha" else None, spec.name)]
        given = {name: getattr(self, field) for name, field in SETTING_FIELDS.items()}
        for name, value in given.items():
            # a beta given to a method without one (sft) is autotrain.params.needs' to refuse
            if value is not None and name not in defaults and name != "beta":
                raise ValueError(f"{SETTING_FIELDS[name]} {_not_read(name, spec.name, losses)}")
        values: dict[str, float] = {}
        defaulted = ["loss_weights"] if len(losses) > 1 and self.loss_weights is None else []
        for name, candidates in defaults.items():
            if given[name] is not None:
                values[name] = float(given[name])
                continue
            if len({value for value, _ in candidates}) > 1:
                listed = ", ".join(f"{loss} {value:g}" for value, loss in candidates)
                flag = SETTING_FIELDS[name].replace("_", "-")
                raise ValueError(f"loss_type {','.join(loss.name for loss in losses)}: their authors' "
                                 f"{SETTING_FIELDS[name]} differ ({listed}): give --{flag}")
            value = candidates[0][0]
            values[name] = spec.gamma_per_beta * values["beta"] if value is None else value
            defaulted.append(name)
        if any(loss.name == "exo_pair" for loss in losses) and values["label_smoothing"] == 0:
            raise ValueError("label_smoothing 0 is log(0) in exo_pair (EXO's epsilon): give a value > 0 "
                             "(the paper's 0.001 when left out)")
        return MethodSettings(spec.name, losses, weights, values, tuple(defaulted), self.ld_alpha)


def _not_read(name: str, trainer: str, losses: tuple[LossType, ...]) -> str:
    """Why a given setting is refused: the methods and loss types that read it."""
    users = []
    for spec in methods.SPECS.values():
        readers = [loss.name for loss in (spec.losses or {}).values() if name in loss.defaults]
        if spec.losses and readers and len(readers) < len(spec.losses):
            users.append(f"--trainer {spec.name} --loss-type {'/'.join(readers)}")
        elif readers or (not spec.losses and name in spec.options):
            users.append(f"--trainer {spec.name}")
    chosen = f", loss_type {','.join(loss.name for loss in losses)}" if losses else ""
    return f"applies to {' and '.join(users)} only (trainer is {trainer}{chosen})"


@dataclass(frozen=True)
class MethodSettings:
    """The method's resolved settings, which of them it has, and which are its authors' defaults, not given."""

    method: str
    losses: tuple[LossType, ...]  # its --loss-type(s); empty for a method without a menu
    weights: tuple[float, ...]  # one per loss
    values: dict[str, float]  # every setting the run reads (beta, gamma, alpha, label_smoothing, ...) -> its value
    defaulted: tuple[str, ...]  # those left unset, taken from autotrain.params.methods
    ld_alpha: float | None = None

    @property
    def beta(self) -> float:
        return self.values.get("beta", 0.0)

    @property
    def gamma(self) -> float:  # SimPO's and AlphaPO's margin; 0 for every other method
        return self.values.get("gamma", 0.0)

    @property
    def alpha(self) -> float:  # the NLL weight of CPO and SimPO (CPO-SimPO when > 0); 0 for every other method
        return self.values.get("alpha", 0.0)

    @property
    def options(self) -> dict[str, Any]:
        """What the method's terms take besides beta, by keyword (the trainer passes those in the spec's options)."""
        found: dict[str, Any] = dict(self.values)
        if self.losses:
            found.update(loss_type=tuple(loss.name for loss in self.losses), loss_weights=self.weights)
        return {name: value for name, value in found.items() if name in methods.spec(self.method).options}

    @property
    def title(self) -> str:
        """The method's name as papers write it: SimPO with an NLL term is CPO-SimPO, DPO with label smoothing cDPO,
        sigmoid,sft RPO, a --loss-type its own (IPO, rDPO, AlphaPO ...)."""
        spec = methods.spec(self.method)
        if not self.losses:
            return spec.nll_title if spec.nll_title and self.alpha > 0 else spec.title or spec.name.upper()
        names = tuple(loss.name for loss in self.losses)
        if names == ("sigmoid", "sft"):
            return "RPO"
        titles = [loss.title for loss in self.losses]
        if self.values.get("label_smoothing") and names[0] == "sigmoid":
            titles[0] = "cDPO" if self.method == "dpo" else "conservative CPO"
        return " + ".join(titles)

    @property
    def accuracy(self) -> str | None:
        """What rewards/accuracies counts for this run (the summary's and the card's words)."""
        spec = methods.spec(self.method)
        return next((loss.accuracy for loss in self.losses if loss.accuracy), spec.accuracy)

    def describe(self) -> str:
        """One line for the log and the card: 'SimPO with beta 2 (SimPO's default), gamma 1 (0.5 x beta, SimPO's
        default), alpha 0 (SimPO's default)'; 'rDPO with beta 0.01 (rDPO's default), label_smoothing 0.1 (...)'."""
        spec = methods.spec(self.method)
        parts = []
        if len(self.losses) > 1:
            parts.append("loss " + " + ".join(f"{weight:g} x {loss.name}" for loss, weight in
                                              zip(self.losses, self.weights))
                         + (" (equal weights, TRL's default)" if "loss_weights" in self.defaulted else ""))
        for name, value in self.values.items():
            if not value and any(name in loss.switches for loss in self.losses):
                continue
            text = f"{name} {value:g}"
            if name in self.defaulted:
                text += f" ({self._whose(name, spec)})"
            parts.append(text)
        if self.ld_alpha is not None:
            parts.append(f"ld_alpha {self.ld_alpha:g} (LD-DPO)")
        return f"{self.title} with " + ", ".join(parts) if parts else self.title

    def _whose(self, name: str, spec: methods.MethodSpec) -> str:
        readers = [loss for loss in self.losses if name in loss.defaults]
        if not readers:
            ratio = f"{spec.gamma_per_beta:g} x beta, " if name == "gamma" else ""
            return f"{ratio}{spec.title or spec.name.upper()}'s default"
        loss = readers[0]
        if name in loss.trl_defaults:
            return f"TRL's default; the {loss.title} paper gives none"
        return f"{loss.title}'s default"
