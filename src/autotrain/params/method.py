"""The Method section of the params: which loss, its settings (beta, gamma, alpha: each method's authors' value when
left unset), its reference model, and what its NLL covers."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import AliasChoices, Field, field_validator, model_validator

from autotrain import methods
from autotrain.params.schema import Schema, one_of

TRAINER_NAMES: tuple[str, ...] = methods.NAMES


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
        description="ORPO's lambda (weight of the odds-ratio term), or the beta of DPO, CPO and SimPO (the scale of "
        "the reward inside the sigmoid). none: the method's own default ("
        + ", ".join(f"{spec.name} {spec.beta:g}" for spec in methods.SPECS.values() if spec.beta is not None) + ").",
    )
    simpo_gamma: float | None = Field(
        None,
        ge=0,
        description="SimPO's target reward margin gamma (--trainer simpo only). none: "
        f"{methods.SPECS['simpo'].gamma_per_beta:g} x beta, the SimPO paper's gamma / beta.",
    )
    cpo_alpha: float | None = Field(
        None,
        ge=0,
        description=f"Weight of the NLL term of cpo (none: {methods.SPECS['cpo'].alpha:g}, as the CPO paper and TRL) "
        f"and simpo (none: {methods.SPECS['simpo'].alpha:g}, SimPO itself; > 0 is CPO-SimPO). --trainer cpo and simpo "
        "only.",
    )
    model_ref: str | None = Field(
        None,
        description="DPO reference model (a folder or hub id). Default: the base model itself; with --peft, the same "
        "weights with the adapters disabled, so no second copy is loaded.",
    )
    precompute_ref_logps: bool = Field(
        False,
        description="DPO: compute the reference log-probs once per dataset before training (one pass, then no "
        "reference forward per step).",
    )
    prompt_loss: bool = Field(
        False,
        validation_alias=AliasChoices("prompt_loss", "orpo_prompt_loss"),
        description="Put the prompt tokens under the NLL term too, in every method that has one (ORPO as TRL does it, "
        "SFT; DPO only reports its NLL). Off: the NLL covers only the completion, as the ORPO paper defines it. "
        "Earlier name: orpo_prompt_loss.",
    )
    response_only_loss: bool = Field(
        True, description="aitraining's name for the opposite of --prompt-loss: --no-response-only-loss is --prompt-loss."
    )
    disable_dropout: bool = Field(
        True,
        description="Turn off the model's dropout (its nn.Dropout modules and attention-dropout probabilities) in the "
        "model being trained and in every DPO reference, as TRL does by default: the loss is then a function of the "
        "weights alone, the same packed or padded. LoRA's own dropout, unless --lora-dropout gives it, follows: 0 while "
        "this is on (TRL's disable_dropout zeroes it too), 0.05 when off.",
    )

    @field_validator("trainer")
    @classmethod
    def _known_trainer(cls, value: str) -> str:
        # Papers and TRL write SimPO, CPO, ORPO: the name in any case is the method.
        return one_of(value.lower() if value.lower() in TRAINER_NAMES else value, TRAINER_NAMES, "trainer")

    @model_validator(mode="after")
    def _method_fields(self) -> MethodParams:
        if self.dpo_beta == 0 and methods.spec(self.trainer).positive_beta:
            raise ValueError(f"dpo_beta 0 leaves {self.trainer} with no gradient (every pair's loss is log 2): give a "
                             "beta > 0, or leave it out for the method's default")
        own = methods.spec(self.trainer).options
        for name, option in (("simpo_gamma", "gamma"), ("cpo_alpha", "alpha")):
            if getattr(self, name) is not None and option not in own:
                users = [spec.name for spec in methods.SPECS.values() if option in spec.options]
                raise ValueError(f"{name} applies to --trainer {' and '.join(users)} only (trainer is {self.trainer})")
        return self

    def method_settings(self) -> MethodSettings:
        """beta, gamma and alpha of this run's method: the values given, else its authors' (autotrain.methods)."""
        spec = methods.spec(self.trainer)
        given = {"beta": self.dpo_beta, "gamma": self.simpo_gamma, "alpha": self.cpo_alpha}
        beta = given["beta"] if given["beta"] is not None else spec.beta or 0.0
        values = {"beta": beta, "gamma": spec.gamma_per_beta * beta, "alpha": spec.alpha}
        shown = (("beta",) if spec.beta is not None else ()) + spec.options
        values.update({name: given[name] for name in shown if given[name] is not None})
        return MethodSettings(spec.name, values["beta"], values["gamma"] if "gamma" in shown else 0.0,
                              values["alpha"] if "alpha" in shown else 0.0, shown,
                              tuple(name for name in shown if given[name] is None))


@dataclass(frozen=True)
class MethodSettings:
    """The method's resolved settings, which of them it has, and which are its authors' defaults, not given."""

    method: str
    beta: float
    gamma: float  # SimPO's margin; 0 for every other method
    alpha: float  # the NLL weight of CPO and SimPO (CPO-SimPO when > 0); 0 for every other method
    shown: tuple[str, ...]  # the settings the method has, of beta, gamma, alpha
    defaulted: tuple[str, ...]  # those left unset, taken from autotrain.methods

    @property
    def title(self) -> str:
        """The method's name as papers write it; SimPO with an NLL term is CPO-SimPO."""
        spec = methods.spec(self.method)
        if spec.nll_title and self.alpha > 0:
            return spec.nll_title
        return spec.title or spec.name.upper()

    def describe(self) -> str:
        """One line for the log and the card: 'SimPO with beta 2 (SimPO's default), gamma 1 (0.5 x beta, SimPO's
        default), alpha 0 (SimPO's default)'."""
        spec = methods.spec(self.method)
        parts = []
        for name in self.shown:
            text = f"{name} {getattr(self, name):g}"
            if name in self.defaulted:
                ratio = f"{spec.gamma_per_beta:g} x beta, " if name == "gamma" else ""
                text += f" ({ratio}{spec.title or spec.name.upper()}'s default)"
            parts.append(text)
        return f"{self.title} with " + ", ".join(parts) if parts else self.title
