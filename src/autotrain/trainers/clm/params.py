"""The import path of the parent tool: `from autotrain.trainers.clm.params import LLMTrainingParams`.

The schema lives in autotrain.params.
"""

from autotrain.params import LLMTrainingParams

__all__ = ["LLMTrainingParams"]
