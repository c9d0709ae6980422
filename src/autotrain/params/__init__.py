"""The run's parameters: LLMTrainingParams and the schema it is built on (see autotrain.params.llm)."""

from autotrain.params.llm import LORA_FIELDS, SECRET_FIELDS, SECTIONS, LLMTrainingParams
from autotrain.params.method import TRAINER_NAMES
from autotrain.params.schema import Schema
from autotrain.params.sections import DEFAULT_MODEL, OPTIMIZERS, SAMPLE_DATA, SCHEDULERS

__all__ = ["DEFAULT_MODEL", "LORA_FIELDS", "OPTIMIZERS", "SAMPLE_DATA", "SCHEDULERS", "SECRET_FIELDS", "SECTIONS",
           "TRAINER_NAMES", "LLMTrainingParams", "Schema"]
