"""`TritonGaussianFocalLoss`: mmdet's `GaussianFocalLoss` interface, computed by the fused op."""
from mmdet.models.losses import GaussianFocalLoss
from mmdet.registry import MODELS
from torch import Tensor

from .family import call_reduction
from .functional import gaussian_focal_loss


@MODELS.register_module()
class TritonGaussianFocalLoss(GaussianFocalLoss):
    """Drop-in replacement for mmdet 3.x ``GaussianFocalLoss`` (CenterNet, CenterNet-update,
    CornerNet, CentripetalNet): same constructor, attributes, forward and results (a subclass
    of mmdet's class), with exact logs where mmdet adds eps = 1e-12 (``gaussian_focal_loss``).

    Args:
        alpha (float): exponent of the modulating factor. Defaults to 2.0.
        gamma (float): exponent of the negatives' Gaussian factor (1 - target). Defaults to 4.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        loss_weight (float): weight of the loss. Defaults to 1.0.
        pos_weight (float): factor of the positives' term. Defaults to 1.0.
        neg_weight (float): factor of the negatives' term. Defaults to 1.0.
    """

    def __init__(self, alpha: float = 2.0, gamma: float = 4.0, reduction: str = 'mean',
                 loss_weight: float = 1.0, pos_weight: float = 1.0,
                 neg_weight: float = 1.0) -> None:
        super().__init__(alpha=alpha, gamma=gamma, reduction=reduction, loss_weight=loss_weight,
                         pos_weight=pos_weight, neg_weight=neg_weight)

    def forward(self, pred: Tensor, target: Tensor, pos_inds: Tensor | None = None,
                pos_labels: Tensor | None = None, weight: Tensor | None = None,
                avg_factor: None | int | float | Tensor = None,
                reduction_override: str | None = None) -> Tensor:
        """Same arguments as mmdet's ``GaussianFocalLoss.forward``: probabilities and a
        Gaussian heatmap of one shape, or with CenterNet-update's ``pos_inds`` /
        ``pos_labels``."""
        reduction = call_reduction(self, reduction_override, sigmoid=False)
        return gaussian_focal_loss(pred, target, weight, alpha=self.alpha, gamma=self.gamma,
                                   pos_weight=self.pos_weight, neg_weight=self.neg_weight,
                                   reduction=reduction, avg_factor=avg_factor,
                                   pos_inds=pos_inds, pos_labels=pos_labels,
                                   loss_weight=self.loss_weight)

    def extra_repr(self) -> str:
        return (f'alpha={self.alpha}, gamma={self.gamma}, pos_weight={self.pos_weight}, '
                f'neg_weight={self.neg_weight}, reduction={self.reduction!r}, '
                f'loss_weight={self.loss_weight}')
