"""`TritonVarifocalLoss`: mmdet's `VarifocalLoss` interface, computed by the fused op."""
from mmdet.models.losses import VarifocalLoss
from mmdet.registry import MODELS
from torch import Tensor

from .family import call_reduction
from .functional import varifocal_loss


@MODELS.register_module()
class TritonVarifocalLoss(VarifocalLoss):
    """Drop-in replacement for mmdet 3.x ``VarifocalLoss`` (VFNet): same constructor, attributes,
    assertions, forward and results (a subclass of mmdet's class).

    Args:
        use_sigmoid (bool): must be True (as in mmdet). Defaults to True.
        alpha (float): factor of the elements with target <= 0; must be >= 0 (as in mmdet).
            Defaults to 0.75.
        gamma (float): exponent of their modulating factor. Defaults to 2.0.
        iou_weighted (bool): weight the elements with target > 0 by their target. Defaults to
            True.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        loss_weight (float): weight of the loss. Defaults to 1.0.
    """

    def __init__(self, use_sigmoid: bool = True, alpha: float = 0.75, gamma: float = 2.0,
                 iou_weighted: bool = True, reduction: str = 'mean',
                 loss_weight: float = 1.0) -> None:
        super().__init__(use_sigmoid=use_sigmoid, alpha=alpha, gamma=gamma,
                         iou_weighted=iou_weighted, reduction=reduction,
                         loss_weight=loss_weight)

    def forward(self, pred: Tensor, target: Tensor, weight: Tensor | None = None,
                avg_factor: None | int | float | Tensor = None,
                reduction_override: str | None = None) -> Tensor:
        """Same arguments as mmdet's ``VarifocalLoss.forward``: a target of pred's shape."""
        reduction = call_reduction(self, reduction_override)
        return varifocal_loss(pred, target, weight, alpha=self.alpha, gamma=self.gamma,
                              iou_weighted=self.iou_weighted, reduction=reduction,
                              avg_factor=avg_factor, loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, gamma={self.gamma}, iou_weighted={self.iou_weighted}, '
                f'reduction={self.reduction!r}, loss_weight={self.loss_weight}')
