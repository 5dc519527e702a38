"""mmdetection's own FocalLoss unit tests, rewritten against TritonFocalLoss.

Ported from open-mmlab/mmdetection (v3.3.0 tree, Apache-2.0):

* tests/test_models/test_losses/test_loss.py
    - test_loss_with_reduction_override  (its FocalLoss parametrisation)
    - test_FocalLoss_loss                 (both input shapes: (10, 5) with class indices and
                                           (3, 5, 40, 40) with a dense one-hot NCHW target)
* tests/test_models/test_dense_heads/test_fcos_head.py   test_fcos_head_loss
* tests/test_models/test_dense_heads/test_atss_head.py   test_atss_head_loss
* tests/test_models/test_dense_heads/test_fsaf_head.py   test_fsaf_head_loss
  (the dense-head tests whose heads train with FocalLoss; FSAF calls it with reduction='none'
  and per-anchor-per-class weights)

The assertions of the originals are kept as they are (mmdet's tests hold no expected numbers for
FocalLoss, only "is a tensor", "raises", "> 0", "== 0"); each ported test also checks that
TritonFocalLoss gives the value mmdet's FocalLoss gives for the same call (rel. 1e-5).

Left out, and why:
* every other test of test_loss.py (IoU-family, CrossEntropy, QualityFocal, GHM, Dice, EQLv2,
  DDQAux, ... losses): they do not involve FocalLoss;
* mmdet has no focal-loss-specific test file under tests/test_models/test_losses;
* test_deformable_detr_head.py / DETR-family head tests: the version of the file at hand uses
  the mmdet 2.x head API (`self.loss(cls_scores, ..., gt_bboxes, gt_labels, img_metas)`), which
  3.3.0 no longer has; DETR-family models with TritonFocalLoss are built from their configs in
  test_registry_and_configs.py instead;
* mmdet's other dense-head tests (RetinaHead via test_anchor_head.py, GFL, VFNet, TOOD, ...) use
  other losses (CrossEntropy, QualityFocal, VariFocal), or the FocalLoss default of a head
  covered above.
"""
from math import ceil

import pytest
import torch
import torch.nn.functional as F
from mmdet.models.dense_heads import ATSSHead, FCOSHead, FSAFHead
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS
from mmengine import Config
from mmengine.structures import InstanceData

import mmdet_focal_triton  # noqa: F401  (registers TritonFocalLoss)
from mmdet_focal_triton import TritonFocalLoss

pytestmark = pytest.mark.usefixtures('one_torch_thread', 'mmdet_scope')


def _close(a, b, tol=1e-5):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return ((a - b).norm() <= tol * b.norm()).item()


# ----------------------------------------------------------------- test_loss.py
@pytest.mark.parametrize('loss_class', [TritonFocalLoss])
def test_loss_with_reduction_override(loss_class):
    pred = torch.rand((10, 4))
    target = torch.rand((10, 4))  # (mmdet's original has a stray comma: a tuple)
    weight = None
    assert isinstance(loss_class()(pred, target, weight), torch.Tensor)  # the call itself works

    with pytest.raises(AssertionError, match='reduction_override'):
        # only reduction_override from [None, 'none', 'mean', 'sum']
        # is not allowed
        reduction_override = True
        loss_class()(
            pred, target, weight, reduction_override=reduction_override)


@pytest.mark.parametrize('loss_class', [TritonFocalLoss])
@pytest.mark.parametrize('input_shape', [(10, 5), (3, 5, 40, 40)])
def test_FocalLoss_loss(loss_class, input_shape):
    pred = torch.rand(input_shape)
    target = torch.randint(0, 5, (input_shape[0], ))
    if len(input_shape) == 4:
        B, N, W, H = input_shape
        target = F.one_hot(torch.randint(0, 5, (B * W * H, )),
                           5).reshape(B, W, H, N).permute(0, 3, 1, 2)
    ref = FocalLoss()  # added: every value must also be mmdet's

    # Test loss forward
    loss = loss_class()(pred, target)
    assert isinstance(loss, torch.Tensor)
    assert _close(loss, ref(pred, target))

    # Test loss forward with reduction_override
    loss = loss_class()(pred, target, reduction_override='mean')
    assert isinstance(loss, torch.Tensor)
    assert _close(loss, ref(pred, target, reduction_override='mean'))

    # Test loss forward with avg_factor
    loss = loss_class()(pred, target, avg_factor=10)
    assert isinstance(loss, torch.Tensor)
    assert _close(loss, ref(pred, target, avg_factor=10))

    with pytest.raises(ValueError):
        # loss can evaluate with avg_factor only if
        # reduction is None, 'none' or 'mean'.
        reduction_override = 'sum'
        loss_class()(
            pred, target, avg_factor=10, reduction_override=reduction_override)

    # Test loss forward with avg_factor and reduction
    for reduction_override in [None, 'none', 'mean']:
        loss = loss_class()(
            pred, target, avg_factor=10, reduction_override=reduction_override)
        assert isinstance(loss, torch.Tensor)
        expected = ref(pred, target, avg_factor=10, reduction_override=reduction_override)
        assert loss.shape == expected.shape
        assert _close(loss, expected)


# ----------------------------------------------------------------- dense heads
def _swap_head_loss(head):
    """The head's FocalLoss replaced by a TritonFocalLoss with the same arguments."""
    old = head.loss_cls
    assert type(old) is FocalLoss
    head.loss_cls = MODELS.build(dict(
        type='TritonFocalLoss', use_sigmoid=old.use_sigmoid, gamma=old.gamma, alpha=old.alpha,
        reduction=old.reduction, loss_weight=old.loss_weight, activated=old.activated))
    return head


def _total(v):
    return sum(v) if isinstance(v, (list, tuple)) else v


def _losses_both(head, *args):
    """loss_by_feat with TritonFocalLoss, checked against the same call with mmdet's FocalLoss."""
    ref_loss_cls = head.loss_cls
    ref = head.loss_by_feat(*args)
    _swap_head_loss(head)
    try:
        out = head.loss_by_feat(*args)
    finally:
        triton_loss_cls, head.loss_cls = head.loss_cls, ref_loss_cls
    assert isinstance(triton_loss_cls, TritonFocalLoss)
    assert set(out) == set(ref)
    for k in ref:
        assert _close(_total(out[k]).detach(), _total(ref[k]).detach()), k
    return out


def test_fcos_head_loss():
    """Tests fcos head loss when truth is empty and non-empty."""
    s = 256
    img_metas = [{
        'img_shape': (s, s, 3),
        'pad_shape': (s, s, 3),
        'scale_factor': 1,
    }]
    fcos_head = FCOSHead(
        num_classes=4,
        in_channels=1,
        feat_channels=1,
        stacked_convs=1,
        norm_cfg=None)

    # Fcos head expects a multiple levels of features per image
    feats = (
        torch.rand(1, 1, s // stride[1], s // stride[0])
        for stride in fcos_head.prior_generator.strides)
    cls_scores, bbox_preds, centernesses = fcos_head.forward(feats)

    # Test that empty ground truth encourages the network to
    # predict background
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.empty((0, 4))
    gt_instances.labels = torch.LongTensor([])

    empty_gt_losses = _losses_both(fcos_head, cls_scores, bbox_preds, centernesses,
                                   [gt_instances], img_metas)
    # When there is no truth, the cls loss should be nonzero but
    # box loss and centerness loss should be zero
    empty_cls_loss = empty_gt_losses['loss_cls'].item()
    empty_box_loss = empty_gt_losses['loss_bbox'].item()
    empty_ctr_loss = empty_gt_losses['loss_centerness'].item()
    assert empty_cls_loss > 0, 'cls loss should be non-zero'
    assert empty_box_loss == 0, 'there should be no box loss when there are no true boxes'
    assert empty_ctr_loss == 0, \
        'there should be no centerness loss when there are no true boxes'

    # When truth is non-empty then all cls, box loss and centerness loss
    # should be nonzero for random inputs
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.Tensor(
        [[23.6667, 23.8757, 238.6326, 151.8874]])
    gt_instances.labels = torch.LongTensor([2])

    for setting in ('plain', 'center_sampling', 'norm_on_bbox'):
        if setting == 'center_sampling':
            # Test the `center_sampling` works fine.
            fcos_head.center_sampling = True
        elif setting == 'norm_on_bbox':
            # Test the `norm_on_bbox` works fine.
            fcos_head.norm_on_bbox = True
        losses = _losses_both(fcos_head, cls_scores, bbox_preds, centernesses,
                              [gt_instances], img_metas)
        assert losses['loss_cls'].item() > 0, 'cls loss should be non-zero'
        assert losses['loss_bbox'].item() > 0, 'box loss should be non-zero'
        assert losses['loss_centerness'].item() > 0, 'centerness loss should be non-zero'


def test_atss_head_loss():
    """Tests atss head loss when truth is empty and non-empty."""
    s = 256
    img_metas = [{
        'img_shape': (s, s, 3),
        'pad_shape': (s, s, 3),
        'scale_factor': 1
    }]
    cfg = Config(
        dict(
            assigner=dict(type='ATSSAssigner', topk=9),
            allowed_border=-1,
            pos_weight=-1,
            debug=False))
    atss_head = ATSSHead(
        num_classes=4,
        in_channels=1,
        stacked_convs=1,
        feat_channels=1,
        norm_cfg=None,
        train_cfg=cfg,
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            octave_base_scale=8,
            scales_per_octave=1,
            strides=[8, 16, 32, 64, 128]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0))
    feat = [
        torch.rand(1, 1, s // feat_size, s // feat_size)
        for feat_size in [8, 16, 32, 64, 128]
    ]
    cls_scores, bbox_preds, centernesses = atss_head.forward(feat)

    # Test that empty ground truth encourages the network to predict
    # background
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.empty((0, 4))
    gt_instances.labels = torch.LongTensor([])

    empty_gt_losses = _losses_both(atss_head, cls_scores, bbox_preds, centernesses,
                                   [gt_instances], img_metas)
    # When there is no truth, the cls loss should be nonzero but there
    # should be no box loss.
    empty_cls_loss = sum(empty_gt_losses['loss_cls'])
    empty_box_loss = sum(empty_gt_losses['loss_bbox'])
    empty_centerness_loss = sum(empty_gt_losses['loss_centerness'])
    assert empty_cls_loss.item() > 0, 'cls loss should be non-zero'
    assert empty_box_loss.item() == 0, \
        'there should be no box loss when there are no true boxes'
    assert empty_centerness_loss.item() == 0, \
        'there should be no centerness loss when there are no true boxes'

    # When truth is non-empty then both cls and box loss should be nonzero
    # for random inputs
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.Tensor(
        [[23.6667, 23.8757, 238.6326, 151.8874]])
    gt_instances.labels = torch.LongTensor([2])
    one_gt_losses = _losses_both(atss_head, cls_scores, bbox_preds, centernesses,
                                 [gt_instances], img_metas)
    onegt_cls_loss = sum(one_gt_losses['loss_cls'])
    onegt_box_loss = sum(one_gt_losses['loss_bbox'])
    onegt_centerness_loss = sum(one_gt_losses['loss_centerness'])
    assert onegt_cls_loss.item() > 0, 'cls loss should be non-zero'
    assert onegt_box_loss.item() > 0, 'box loss should be non-zero'
    assert onegt_centerness_loss.item() > 0, 'centerness loss should be non-zero'


def test_fsaf_head_loss():
    """Tests fsaf head loss when truth is empty and non-empty."""
    s = 300
    img_metas = [{
        'img_shape': (s, s),
        'pad_shape': (s, s),
        'scale_factor': 1,
    }]
    cfg = Config(
        dict(
            assigner=dict(
                type='CenterRegionAssigner',
                pos_scale=0.2,
                neg_scale=0.2,
                min_pos_iof=0.01),
            allowed_border=-1,
            pos_weight=-1,
            debug=False))
    fsaf_head = FSAFHead(
        num_classes=4,
        in_channels=1,
        stacked_convs=1,
        feat_channels=1,
        reg_decoded_bbox=True,
        anchor_generator=dict(
            type='AnchorGenerator',
            octave_base_scale=1,
            scales_per_octave=1,
            ratios=[1.0],
            strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='TBLRBBoxCoder', normalizer=4.0),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0,
            reduction='none'),
        loss_bbox=dict(
            type='IoULoss', eps=1e-6, loss_weight=1.0, reduction='none'),
        train_cfg=cfg)

    # FSAF head expects a multiple levels of features per image
    feats = (
        torch.rand(1, 1, ceil(s / stride[0]), ceil(s / stride[0]))
        for stride in fsaf_head.prior_generator.strides)
    cls_scores, bbox_preds = fsaf_head.forward(feats)

    # Test that empty ground truth encourages the network to
    # predict background
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.empty((0, 4))
    gt_instances.labels = torch.LongTensor([])

    empty_gt_losses = _losses_both(fsaf_head, cls_scores, bbox_preds, [gt_instances],
                                   img_metas)
    # When there is no truth, the cls loss should be nonzero but
    # box loss should be zero
    empty_cls_loss = sum(empty_gt_losses['loss_cls'])
    empty_box_loss = sum(empty_gt_losses['loss_bbox'])
    assert empty_cls_loss > 0, 'cls loss should be non-zero'
    assert empty_box_loss.item() == 0, \
        'there should be no box loss when there are no true boxes'

    # When truth is non-empty then both cls and box loss
    # should be nonzero for random inputs
    gt_instances = InstanceData()
    gt_instances.bboxes = torch.Tensor(
        [[23.6667, 23.8757, 238.6326, 151.8874]])
    gt_instances.labels = torch.LongTensor([2])

    one_gt_losses = _losses_both(fsaf_head, cls_scores, bbox_preds, [gt_instances],
                                 img_metas)
    onegt_cls_loss = sum(one_gt_losses['loss_cls'])
    onegt_box_loss = sum(one_gt_losses['loss_bbox'])
    assert onegt_cls_loss.item() > 0, 'cls loss should be non-zero'
    assert onegt_box_loss.item() > 0, 'box loss should be non-zero'
