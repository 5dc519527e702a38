"""Float64 reference: a direct transcription of mmdet 3.3.0's python focal loss (one-hot and all).

`py_sigmoid_focal_loss` / `py_focal_loss_with_prob` + `weight_reduce_loss`, evaluated in float64
with autograd, so it gives both the loss and the gradient. Independent of the package's code.
"""
import torch
import torch.nn.functional as F
from _tolerances import rel_err  # noqa: F401  (where the tests have long imported it from)

EPS = torch.finfo(torch.float32).eps


def avg_factor_plus_eps(avg_factor):
    """mmdet's `avg_factor + eps` (torch evaluates it in avg_factor's dtype: float32 for an
    integer tensor), as a float64 number or tensor, so that the division by it stays float64."""
    den = avg_factor + EPS
    return den.double() if isinstance(den, torch.Tensor) else den


def reference_focal_loss(pred, target, weight=None, gamma=2.0, alpha=0.25, reduction='mean',
                         avg_factor=None, activated=False, loss_weight=1.0):
    pred = pred.double()
    if pred.dim() != target.dim():
        C = pred.size(1)
        target = F.one_hot(target.long(), num_classes=C + 1)[:, :C]
    target = target.double()
    if activated:
        pt = (1 - pred) * target + pred * (1 - target)
        fw = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
        loss = F.binary_cross_entropy(pred, target, reduction='none') * fw
    else:
        p = pred.sigmoid()
        pt = (1 - p) * target + p * (1 - target)
        fw = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
        loss = F.binary_cross_entropy_with_logits(pred, target, reduction='none') * fw
    if weight is not None:
        weight = weight.double()
        if weight.shape != loss.shape:
            if weight.size(0) == loss.size(0):
                weight = weight.view(-1, 1)
            else:
                weight = weight.reshape(loss.size(0), -1)
        loss = loss * weight
    if avg_factor is None:
        loss = {'none': loss, 'mean': loss.mean(), 'sum': loss.sum()}[reduction]
    elif reduction == 'mean':
        loss = loss.sum() / avg_factor_plus_eps(avg_factor)
    return loss_weight * loss

