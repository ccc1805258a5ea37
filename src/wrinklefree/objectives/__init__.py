"""Training objectives, the manager that weights them and the curriculum that schedules them.

See docs/objectives.md for every formula, its paper and its options.
"""

from wrinklefree.objectives.attention import (
    AttentionRelationDistillObjective,
    BlockAttentionDistillObjective,
)
from wrinklefree.objectives.base import Objective, ObjectiveOutput, Requirements
from wrinklefree.objectives.certainty import CertaintyForcingObjective
from wrinklefree.objectives.continue_pretrain import ContinuePretrainObjective
from wrinklefree.objectives.curriculum import CurriculumPhase, CurriculumScheduler
from wrinklefree.objectives.dlm import MASK_TOKEN, DLMObjective, add_mask_token, check_mask_token
from wrinklefree.objectives.factory import OBJECTIVES, build_objective, create_objective_manager
from wrinklefree.objectives.forward import run_model
from wrinklefree.objectives.layerwise import LayerwiseDistillObjective, LRCReconstructionObjective
from wrinklefree.objectives.logits_distill import LogitsDistillObjective
from wrinklefree.objectives.manager import ManagerOutput, ObjectiveManager
from wrinklefree.objectives.on_policy import OnPolicyDistillObjective
from wrinklefree.objectives.repetition import RepetitionObjective
from wrinklefree.objectives.tcs import TCSDistillObjective

__all__ = [
    "MASK_TOKEN",
    "OBJECTIVES",
    "AttentionRelationDistillObjective",
    "BlockAttentionDistillObjective",
    "CertaintyForcingObjective",
    "ContinuePretrainObjective",
    "CurriculumPhase",
    "CurriculumScheduler",
    "DLMObjective",
    "LRCReconstructionObjective",
    "LayerwiseDistillObjective",
    "LogitsDistillObjective",
    "ManagerOutput",
    "Objective",
    "ObjectiveManager",
    "ObjectiveOutput",
    "OnPolicyDistillObjective",
    "RepetitionObjective",
    "Requirements",
    "TCSDistillObjective",
    "add_mask_token",
    "build_objective",
    "check_mask_token",
    "create_objective_manager",
    "run_model",
]
