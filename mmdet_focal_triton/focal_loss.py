"""`TritonFocalLoss`: mmdet's `FocalLoss` interface, computed by the fused op."""

import torch.nn as nn
from mmdet.registry import MODELS
from torch import Tensor

from .family import call_reduction
from .functional import sigmoid_focal_loss


@MODELS.register_module()
class TritonFocalLoss(nn.Module):
    """Drop-in replacement for mmdet 3.x ``FocalLoss`` (same constructor, forward and results).

    Args:
        use_sigmoid (bool): must be True (as in mmdet; heads read ``loss_cls.use_sigmoid``).
        gamma (float): focusing parameter. Defaults to 2.0.
        alpha (float): balancing parameter. Defaults to 0.25.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        loss_weight (float): weight of the loss. Defaults to 1.0.
        activated (bool): pred holds probabilities (e.g. TOOD, DDQ). Defaults to False.
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: float = 0.25,
                 reduction: str = 'mean', loss_weight: float = 1.0,
                 activated: bool = False) -> None:
        super().__init__()
        assert use_sigmoid is True, 'Only sigmoid focal loss supported now.'
        self.use_sigmoid = use_sigmoid
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.activated = activated

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: None | int | float | Tensor = None,
                reduction_override: str | None = None) -> Tensor:
        """Same arguments as mmdet's ``FocalLoss.forward``: class-index (N,) targets with
        background = num_classes, or dense targets of pred's shape."""
        reduction = call_reduction(self, reduction_override)
        return sigmoid_focal_loss(pred, target, weight, gamma=self.gamma, alpha=self.alpha,
                                  reduction=reduction, avg_factor=avg_factor,
                                  activated=self.activated, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return (f'gamma={self.gamma}, alpha={self.alpha}, reduction={self.reduction!r}, '
                f'loss_weight={self.loss_weight}, activated={self.activated}')

