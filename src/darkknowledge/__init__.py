"""darkknowledge: knowledge distillation as in Hinton, Vinyals & Dean (2015), arXiv:1503.02531."""

from darkknowledge.api import Report, distill, train
from darkknowledge.errors import DKError
from darkknowledge.losses import distillation_loss, ensemble_probs, logit_matching_loss, soften
from darkknowledge.models import ARCHITECTURES, MLP, build_model
from darkknowledge.teachers import Teacher

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES", "DKError", "MLP", "Report", "Teacher", "build_model", "distill", "distillation_loss",
    "ensemble_probs", "logit_matching_loss", "soften", "train", "__version__",
]
