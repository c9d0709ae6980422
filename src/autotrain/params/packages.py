"""The optional packages a setting needs: which optimizer needs which package, named without importing it (the
check that it is installed is autotrain.run.preflight's; the TrainingArguments mapping reads the low-rank ones)."""

from __future__ import annotations

# transformers' optimizers that need a package of their own: name -> (the modules, any of which serves; pip name).
_BNB = ("bitsandbytes",), "bitsandbytes"
OPTIMIZER_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    **dict.fromkeys(("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_32bit", "paged_adamw_8bit", "ademamix",
                     "ademamix_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "lion_8bit", "lion_32bit",
                     "paged_lion_32bit", "paged_lion_8bit", "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit"),
                    _BNB),
    **dict.fromkeys(("galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
                     "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise"), (("galore_torch",), "galore-torch")),
    **dict.fromkeys(("apollo_adamw", "apollo_adamw_layerwise"), (("apollo_torch",), "apollo-torch")),
    **dict.fromkeys(("adamw_torch_4bit", "adamw_torch_8bit"), (("torchao",), "torchao")),
    **dict.fromkeys(("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd"),
                    (("schedulefree",), "schedulefree")),
    **dict.fromkeys(("lomo", "adalomo"), (("lomo_optim",), "lomo-optim")),
    "grokadamw": (("grokadamw",), "grokadamw"),
    "stable_adamw": (("optimi",), "torch-optimi"),
    "adamw_anyprecision": (("torchdistx",), "torchdistx"),
    "adamw_torch_xla": (("torch_xla",), "torch-xla"),
    "adamw_torch_npu_fused": (("torch_npu",), "torch-npu"),
}
# The low-rank optimizers project their gradients in named modules (transformers' optim_target_modules).
LOW_RANK_OPTIMIZERS = tuple(name for name, (modules, _) in OPTIMIZER_PACKAGES.items()
                            if modules[0] in ("galore_torch", "apollo_torch"))
