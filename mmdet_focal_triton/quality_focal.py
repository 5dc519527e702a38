"""`TritonQualityFocalLoss`: mmdet's `QualityFocalLoss` interface, computed by the fused op."""
from mmdet.models.losses import QualityFocalLoss
from mmdet.registry import MODELS
from torch import Tensor

from .family import call_reduction
from .functional import quality_focal_loss


@MODELS.register_module()
class TritonQualityFocalLoss(QualityFocalLoss):
    """Drop-in replacement for mmdet 3.x ``QualityFocalLoss`` (GFL, RTMDet, TOOD, DDQ): same
    constructor, attributes, forward and results.

    A subclass of mmdet's class, so that heads which test ``isinstance(self.loss_cls,
    QualityFocalLoss)`` (DETR, DINO) pass it the ``(labels, scores)`` targets they pass mmdet's.

    Args:
        use_sigmoid (bool): must be True (as in mmdet). Defaults to True.
        beta (float): exponent of the modulating factor. Defaults to 2.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        loss_weight (float): weight of the loss. Defaults to 1.0.
        activated (bool): pred holds probabilities (DDQ). Defaults to False.
    """

    def __init__(self, use_sigmoid: bool = True, beta: float = 2.0, reduction: str = 'mean',
                 loss_weight: float = 1.0, activated: bool = False) -> None:
        super().__init__(use_sigmoid=use_sigmoid, beta=beta, reduction=reduction,
                         loss_weight=loss_weight, activated=activated)

    def forward(self, pred: Tensor, target, weight: Tensor | None = None,
                avg_factor: None | int | float | Tensor = None,
                reduction_override: str | None = None) -> Tensor:
        """Same arguments as mmdet's ``QualityFocalLoss.forward``: ``target`` is a
        ``(labels, scores)`` pair (labels (N,) with background = num_classes, scores (N,)) or a
        dense quality target of pred's shape."""
        reduction = call_reduction(self, reduction_override)
        return quality_focal_loss(pred, target, weight, reduction=reduction,
                                  avg_factor=avg_factor, beta=self.beta,
                                  activated=self.activated, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return (f'beta={self.beta}, reduction={self.reduction!r}, '
                f'loss_weight={self.loss_weight}, activated={self.activated}')
