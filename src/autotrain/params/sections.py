"""The sections of LLMTrainingParams: one class per section, each field once, with its own checks.

A field's description is its documentation (the CLI's --help). Rules that tie fields of several sections together
live on LLMTrainingParams itself (autotrain.params.llm).
"""

from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from autotrain.params.schema import AutoOrAtLeastTwo, AutoOrPositive, Schema, one_of

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"  # resolved by autotrain.model.embedded
SAMPLE_DATA = "embedded:sample-pairs"  # resolved by autotrain.data.sources

# transformers' `OptimizerNames` and `SchedulerType` values (5.24), written out so that checking a name does not
# import transformers (seconds, before even a data error could be reported). A test compares them with the installed
# transformers; autotrain.run.preflight.check_device checks the name against the installed version before training.
OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit", "paged_ademamix_32bit",
    "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop", "rmsprop_bnb", "rmsprop_bnb_8bit",
    "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise",
    "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw",
    "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
)
SCHEDULERS: tuple[str, ...] = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)


# The --trainer choices: autotrain.params.methods' registry (torch-free), the one list of method names.


# What --eval-metrics and --custom-metrics can compute here, each from the validation's own metrics.
METRICS: tuple[str, ...] = ("perplexity",)
_TEXT_METRICS = ("bleu", "rouge", "bertscore", "accuracy", "f1", "exact_match", "meteor")


def known_metric(name: str) -> str:
    if name in _TEXT_METRICS:
        raise ValueError(f"'{name}' scores generated text, which this tool's evaluation does not generate; known "
                         f"here: {', '.join(METRICS)} (--sample-answers shows answers)")
    return one_of(name, METRICS, "metric")


class DataParams(Schema):
    """Data and model: what is trained, on what, and where the run's outputs go."""

    model: str = Field(
        DEFAULT_MODEL,
        description="Base model: a local folder or a hub id. Default: the embedded SmolLM2-135M-Instruct.",
    )
    project_name: str = Field(
        "project-name",
        description="Output folder of the run: a new folder (or one of an earlier run of this tool, to resume it).",
    )
    data_path: str = Field(
        SAMPLE_DATA,
        description="A .jsonl/.json/.csv/.parquet file, a folder of split files (train.*, validation.*), "
        "a datasets save_to_disk folder or a datasets hub id. Default: the bundled sample pairs.",
    )
    train_split: str = Field("train", description="Split to train on.")
    valid_split: str | None = Field(None, description="Split to evaluate on (none by default).")
    text_column: str = Field(
        "text",
        description="Column of the chosen completion. If left at 'text' and the data has no 'text' but a "
        "'chosen' column, 'chosen' is used.",
    )
    prompt_text_column: str | None = Field(
        None, description="Column of the prompt. Default: 'prompt' when the data has one."
    )
    rejected_text_column: str | None = Field(
        None, description="Column of the rejected completion. Default: 'rejected' when the data has one."
    )
    image_column: str | None = Field(
        None,
        description="Column of each row's images (paths, bytes, datasets Images): a vision-language run.",
    )
    train_vision: bool = Field(False, description="With --image-column, train the vision encoder too.")
    label_column: str | None = Field(
        None, description="kto: the column of true/false labels of single answers. Default: 'label' if present."
    )
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code from its repository.")
    max_samples: int | None = Field(
        None,
        ge=1,
        description="Train on at most N rows, evenly spaced (as aitraining); validation: its first max(1, N/5).",
    )
    model_max_length: int = Field(
        2048,
        ge=2,
        description="The model's longest input; 2048 (the default) means the model config's own maximum "
        "(max_position_embeddings), and a value above that maximum is refused. --block-size is capped at it.",
    )
    attn_implementation: str | None = Field(
        None,
        description="Attention kernel: eager, sdpa, flex_attention, flash_attention_2/3. Your choice is used as given "
        "or refused with the reason (flex_attention and flash-attn need CUDA; a start-up check that fails stops the "
        "run). Default: flex_attention on CUDA with packing where the model has it (SDPA if the start-up check on "
        "the first training pair fails), else transformers' choice.",
    )
    use_flash_attention_2: bool = Field(False, description="Same as --attn-implementation flash_attention_2.")
    save_processed_data: str = Field(
        "auto",
        description="Where the tokenized data goes: auto (the user cache, reused by later runs), local (also a copy "
        "in <project>/processed_data/) or none (a temporary folder, not kept). aitraining's hub and both "
        "(a dataset upload) are not done here.",
    )

    @field_validator("save_processed_data")
    @classmethod
    def _where_tokens_go(cls, value: str) -> str:
        if value in ("hub", "both"):
            raise ValueError(f"'{value}' uploads the processed data to the hub, which this tool does not do; "
                             "use auto, local or none")
        return one_of(value, ("auto", "local", "none"), "save_processed_data")

    @field_validator("project_name")
    @classmethod
    def _own_folder(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"must name a folder (got {value!r})")
        normal = os.path.normpath(value.strip())
        if normal == ".":
            raise ValueError(f"{value!r} is the current folder; name a new folder for the run's outputs")
        if all(part == ".." for part in normal.split(os.sep)) or normal in ("/", "~"):
            raise ValueError(f"{value!r} holds the current folder; name a new folder for the run's outputs")
        return value


class LayoutParams(Schema):
    """Tokens and rows: how pairs become tokens, and tokens rows."""

    max_prompt_length: int = Field(128, ge=1, description="Prompt tokens kept; a longer prompt keeps its end.")
    max_completion_length: int | None = Field(
        None, ge=1, description="Completion tokens kept (chosen and rejected each); none means no cap."
    )
    block_size: AutoOrAtLeastTwo = Field(
        -1, description="Cap on prompt + completion tokens; -1 means min(model maximum, 1024)."
    )
    packing: bool = Field(
        True,
        description="Pack pairs without padding, sharing each prompt (prompt | chosen | rejected, several pairs per "
        "row); the loss is unchanged. Models whose attention cannot take a packed mask use the padded layout.",
    )
    padding: Literal["right", "left"] = Field(
        "right", description="Side the padded layout pads (--no-packing); packing does not pad, so it ignores this."
    )
    add_eos_token: bool = Field(
        True,
        description="Without a chat template, end each completion with the EOS token (with one, the template's "
        "end-of-turn token ends it).",
    )
    ranked_pairs: Literal["best", "all"] = Field(
        "best", description="Ranked answers ('responses' with 'scores' or 'ranking') become pairs: best (the best "
        "answer against each other one) or all (every two answers that do not tie). Each prompt's pairs are weighted "
        "so that the prompt counts once.",
    )


class OptimisationParams(Schema):
    """Optimisation: steps, batches, the optimizer and its schedule, precision."""

    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    max_steps: AutoOrPositive = Field(-1, description="Stop after this many optimizer steps; -1 means epochs decide.")
    batch_size: int = Field(2, ge=1, description="Pairs per device per micro-batch.")
    lr: float = Field(3e-5, gt=0, description="Peak learning rate.")
    gradient_accumulation: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Fraction of steps spent warming up the learning rate.")
    optimizer: str = Field(
        "adamw_torch_fused",
        description="Optimizer name, as transformers' `optim` takes it. The default is AdamW in torch's fused kernel "
        "(transformers' own default); adamw_torch is the same update tensor by tensor.",
    )
    scheduler: str = Field("linear", description="Learning-rate schedule, as transformers' `lr_scheduler_type`.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(42, description="Seed of initialisation, dropout and data order (0 to 4294967295).")
    min_lr_rate: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="The learning rate's floor as a fraction of --lr, where --scheduler cosine_with_min_lr or "
        "cosine_warmup_with_min_lr decays it to (transformers' min_lr_rate); they need it.",
    )
    mixed_precision: Literal["fp16", "bf16"] | None = Field(
        None, description="Mixed precision on a GPU: fp16 or bf16; none trains in fp32."
    )
    disable_gradient_checkpointing: bool = Field(
        False, description="Turn off gradient checkpointing (faster, more memory)."
    )
    torch_compile: bool = Field(
        False, description="Compile each decoder layer with torch.compile for training: later steps run faster, the "
        "compilation costs about half a minute first (pays on long runs only)."
    )
    auto_find_batch_size: bool = Field(
        False,
        description="On a CUDA out-of-memory error, halve --batch-size and start again (accelerate's "
        "find_executable_batch_size, through transformers' Trainer).",
    )

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        return one_of(value, OPTIMIZERS, "optimizer")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        return one_of(value, SCHEDULERS, "scheduler")

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, value: int) -> int:
        # transformers' set_seed seeds numpy too, which takes 0 .. 2**32 - 1 and fails only when training starts.
        if not 0 <= value < 2**32:
            raise ValueError(f"must be between 0 and {2**32 - 1} (the seeds numpy takes); got {value}")
        return value


class LoraParams(Schema):
    """LoRA: adapters instead of all weights. Every field but `peft` means something only with it."""

    peft: bool = Field(False, description="Train LoRA adapters instead of all weights.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Dropout on the LoRA path. None follows --disable-dropout: 0 while the model's dropout is off (the "
        "default; TRL zeroes LoRA's dropout too, so aitraining's ORPO and DPO runs trained with none), aitraining's "
        "0.05 with --no-disable-dropout (0 on mixture-of-experts models whose fused expert weights get adapters: peft "
        "applies no dropout to those). A value given is used as it is.",
    )
    target_modules: str = Field(
        "all-linear", description="Modules that get adapters: 'all-linear' or comma-separated names."
    )
    merge_adapter: bool = Field(
        True, description="Also save a merged full model (the adapter is kept in <project>/adapter)."
    )


class TemplateParams(Schema):
    """Chat template: how conversations become text."""

    chat_template: Literal["tokenizer", "chatml", "zephyr", "none"] | None = Field(
        None, description="Chat template: none given uses the tokenizer's own where it has one, else no template."
    )
    apply_chat_template: bool = Field(
        True, description="Render rows with the chat template; --no-apply-chat-template is --chat-template none."
    )
    tools_column: str | None = Field(
        None, description="Column of the tool definitions (a list of JSON-schema functions, or that list as JSON "
        "text) the chat template writes into each prompt of the row. Default: 'tools' when the data has one.",
    )
    reasoning_loss: Literal["include", "exclude"] = Field(
        "include", description="An answer's reasoning (reasoning_content / thinking, as the template writes it): "
        "include trains it with the answer (in the preference log-probs and the NLL); exclude makes it context, read "
        "but not trained. Empty think blocks are never trained.",
    )


class EvaluationParams(Schema):
    """Evaluation: when the validation split is scored, and the sample answers."""

    eval_strategy: Literal["epoch", "steps"] = Field(
        "epoch",
        description="When to evaluate on --valid-split (besides before training): each epoch, or every --eval-steps.",
    )
    eval_steps: AutoOrPositive = Field(-1, description="Evaluate every N optimizer steps when --eval-strategy steps.")
    sample_answers: int = Field(
        0,
        ge=0,
        description="Answer this many validation prompts greedily before and after training; shown in the summary "
        "and the model card (needs --valid-split).",
    )
    use_enhanced_eval: bool = Field(
        False, description="Add the --eval-metrics to each evaluation's metrics (eval_<name>)."
    )
    eval_metrics: str = Field(
        "perplexity",
        description="Comma-separated metrics for --use-enhanced-eval. Known here: perplexity (exp of the validation "
        "NLL per completion token). aitraining's text metrics (bleu, rouge, ...) need generated answers: not done.",
    )
    custom_metrics: str | None = Field(
        None,
        description='JSON array of metric names added to each evaluation, e.g. \'["perplexity"]\' (the names of '
        "--eval-metrics).",
    )

    @field_validator("eval_metrics")
    @classmethod
    def _known_metrics(cls, value: str) -> str:
        for name in value.split(","):
            known_metric(name.strip())
        return value

    @field_validator("custom_metrics")
    @classmethod
    def _known_custom(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                names = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON ({exc.msg} at position {exc.pos})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError('must be a JSON array of metric names, e.g. ["perplexity"]')
            for name in names:
                known_metric(name)
        return value


class ScaleOutParams(Schema):
    """Scale-out: launched processes and quantized weights."""

    distributed_backend: Literal["ddp", "fsdp", "deepspeed"] | None = Field(
        None,
        description="Run under `accelerate launch` with this backend. Default: ddp when more than one GPU is "
        "visible, else one process.",
    )
    deepspeed_stage: int = Field(2, ge=2, le=3, description="DeepSpeed ZeRO stage with --distributed-backend deepspeed.")
    ddp_timeout: int = Field(
        7200, ge=1, description="Seconds a process waits for the others in a collective before failing (NCCL timeout)."
    )
    quantization: Literal["int4", "int8"] | None = Field(
        None, description="Load the base model quantized with bitsandbytes (QLoRA: needs --peft and a CUDA GPU)."
    )


class LoggingParams(Schema):
    """Logging and saving: the tracker, the logging interval, checkpoints and resuming."""

    log: Literal["none", "tensorboard", "wandb"] = Field("none", description="Experiment tracker.")
    logging_steps: AutoOrPositive = Field(-1, description="Log every N optimizer steps; -1 chooses from the data size.")
    save_total_limit: int = Field(1, ge=1, description="Checkpoints kept.")
    save_strategy: Literal["epoch", "steps", "no"] = Field(
        "epoch",
        description="When to save a checkpoint: each epoch, every --save-steps, or never. Giving --save-steps alone "
        "means steps.",
    )
    save_steps: AutoOrPositive = Field(500, description="Optimizer steps between checkpoints with --save-strategy steps.")
    wandb_token: SecretStr | None = Field(
        None, description="W&B API key for --log wandb (never written to disk; WANDB_API_KEY works too)."
    )
    wandb_run_id: str | None = Field(None, description="W&B run id to resume (logs into that run instead of a new one).")
    wandb_visualizer: bool | None = Field(
        None,
        description="Print the command that opens W&B's terminal visualizer on this run (wandb beta leet). "
        "Default: on with --log wandb.",
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="Resume an interrupted run: 'auto' (the newest checkpoint, or start fresh if there is none), "
        "'latest' (the newest checkpoint, which must exist) or a checkpoint folder.",
    )


class HubParams(Schema):
    """Hub: uploading the result."""

    push_to_hub: bool = Field(False, description="Upload the result to the hub as --repo-id (or <username>/<project_name>).")
    repo_id: str | None = Field(None, description="Hub repository for push_to_hub, e.g. my-org/my-model.")
    hub_private: bool = Field(True, description="Create the hub repository private.")
    username: str | None = Field(None, description="Hub user or organisation for push_to_hub.")
    token: SecretStr | None = Field(
        None,
        description="Hub token for push_to_hub (never written to disk). Prefer the HF_TOKEN environment variable: a "
        "token on the command line is visible to other users of the machine (ps) and in the shell history.",
    )
