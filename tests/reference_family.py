"""Float64 references of the rest of mmdet 3.3.0's focal family: transcriptions of
`mmdet/models/losses/gfocal_loss.py` (`quality_focal_loss`, `quality_focal_loss_with_prob`,
`quality_focal_loss_tensor_target`) and `varifocal_loss.py` (`varifocal_loss`), each followed by
`weight_reduce_loss` and multiplied by `loss_weight` as the modules do, evaluated in float64 with
autograd (loss and gradient). Independent of the package's code.

Faithful to mmdet, including what it does with labels outside [0, C] (background) and with
weights: QFL multiplies its *per-row* loss (summed over classes) by `weight` with torch
broadcasting; VFL its elementwise loss.
"""
import torch
import torch.nn.functional as F
from reference import avg_factor_plus_eps


def weight_reduce_loss(loss, weight=None, reduction='mean', avg_factor=None):
    if weight is not None:
        loss = loss * weight.double()
    if avg_factor is None:
        return {'none': loss, 'mean': loss.mean(), 'sum': loss.sum()}[reduction]
    if reduction == 'mean':
        return loss.sum() / avg_factor_plus_eps(avg_factor)
    if reduction != 'none':
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def _qfl_tuple(pred, label, score, beta, activated):
    """mmdet's quality_focal_loss (logits) / quality_focal_loss_with_prob (activated)."""
    loss_function = F.binary_cross_entropy if activated else F.binary_cross_entropy_with_logits
    pred_sigmoid = pred if activated else pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = loss_function(pred, zerolabel, reduction='none') * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = loss_function(
        pred[pos, pos_label], score[pos], reduction='none') * scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def _qfl_tensor_target(pred, target, beta, activated):
    """mmdet's quality_focal_loss_tensor_target."""
    assert pred.size() == target.size()
    if activated:
        pred_sigmoid = pred
        loss_function = F.binary_cross_entropy
    else:
        pred_sigmoid = pred.sigmoid()
        loss_function = F.binary_cross_entropy_with_logits
    scale_factor = pred_sigmoid
    target = target.type_as(pred)
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = loss_function(pred, zerolabel, reduction='none') * scale_factor.pow(beta)
    pos = (target != 0)
    scale_factor = target[pos] - pred_sigmoid[pos]
    loss[pos] = loss_function(pred[pos], target[pos], reduction='none') * \
        scale_factor.abs().pow(beta)
    return loss.sum(dim=1, keepdim=False)


def reference_quality_focal_loss(pred, target, weight=None, beta=2.0, reduction='mean',
                                 avg_factor=None, activated=False, loss_weight=1.0):
    """`QualityFocalLoss(beta, reduction, loss_weight, activated)(pred, target, weight,
    avg_factor)` in float64. `target`: a (labels, scores) pair or a dense tensor."""
    pred = pred.double()
    if isinstance(target, torch.Tensor):
        loss = _qfl_tensor_target(pred, target.double(), beta, activated)
    else:
        label, score = target
        loss = _qfl_tuple(pred, label, score.double(), beta, activated)
    return loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


def reference_varifocal_loss(pred, target, weight=None, alpha=0.75, gamma=2.0,
                             iou_weighted=True, reduction='mean', avg_factor=None,
                             loss_weight=1.0):
    """`VarifocalLoss(alpha, gamma, iou_weighted, reduction, loss_weight)(pred, target, weight,
    avg_factor)` in float64."""
    pred = pred.double()
    assert pred.size() == target.size()
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    if iou_weighted:
        focal_weight = target * (target > 0.0).double() + \
            alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).double()
    else:
        focal_weight = (target > 0.0).double() + \
            alpha * (pred_sigmoid - target).abs().pow(gamma) * (target <= 0.0).double()
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction='none') * focal_weight
    return loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


def reference_gaussian_focal_loss(pred, target, weight=None, alpha=2.0, gamma=4.0,
                                  pos_weight=1.0, neg_weight=1.0, reduction='mean',
                                  avg_factor=None, loss_weight=1.0, pos_inds=None,
                                  pos_labels=None, eps=0.0):
    """`GaussianFocalLoss(alpha, gamma, reduction, loss_weight, pos_weight, neg_weight)(pred,
    target, pos_inds, pos_labels, weight, avg_factor)` in float64: mmdet's
    `gaussian_focal_loss` / `gaussian_focal_loss_with_pos_inds` with their eps inside the logs
    as a parameter (mmdet: 1e-12; default 0, the mathematics the fused loss follows). Terms
    whose factor is 0 are left out, as mathematics has it (mmdet's eps keeps them finite)."""
    pred = pred.double()
    target = target.double()
    neg_weights = (1 - target).pow(gamma)
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_weights
    neg_loss = torch.where(neg_weights == 0, torch.zeros((), dtype=pred.dtype), neg_loss)
    if pos_inds is None:
        pos = target.eq(1)
        pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha)
        pos_loss = torch.where(pos, pos_loss, torch.zeros((), dtype=pred.dtype))
        loss = pos_weight * pos_loss + neg_weight * neg_loss
        return loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)
    pos_pred = pred[pos_inds].gather(1, pos_labels.long().unsqueeze(1))
    pos_loss = -(pos_pred + eps).log() * (1 - pos_pred).pow(alpha)
    pos_loss = weight_reduce_loss(pos_loss, None, reduction, avg_factor)
    neg_loss = weight_reduce_loss(neg_loss, None, reduction, avg_factor)
    return loss_weight * (pos_weight * pos_loss + neg_weight * neg_loss)
