"""The family as mmdet's heads call it: RTMDet, GFL, TOOD (QualityFocalLoss) and VFNet
(VarifocalLoss), each built from its mmdet 3.3.0 config (channels shrunk, BN instead of SyncBN),
run on the same random features and ground truth with mmdet's loss and with ours. loss_cls and
its gradient with respect to the head's classification scores agree to 1e-5: the heads' calling
conventions (RTMDet's and TOOD's (labels, assign metrics) with avg_factor 1.0, GFL's
(labels, IoU scores), VFNet's dense IoU targets) are covered end to end.
"""
import copy

import pytest
import torch
from _inputs import IMPLS, device_of, impl_context, make_generator
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.structures import InstanceData
from reference import rel_err

from mmdet_focal_triton import swap_focal_loss
from mmdet_focal_triton.mm_utils import load_mmdet_config

register_all_modules(init_default_scope=True)



pytestmark = pytest.mark.usefixtures('one_torch_thread', 'mmdet_scope')

HEADS = {
    'rtmdet': 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
    'gfl': 'gfl/gfl_r50_fpn_1x_coco.py',
    'tood': 'tood/tood_r50_fpn_1x_coco.py',
    'vfnet': 'vfnet/vfnet_r50_fpn_1x_coco.py',
}
IMG = 128


def build_heads(name):
    """mmdet's head and the same head with our loss (same weights)."""
    cfg = load_mmdet_config(HEADS[name])
    head_cfg = copy.deepcopy(cfg.model.bbox_head)
    head_cfg.update(in_channels=32, feat_channels=32, stacked_convs=1,
                    train_cfg=cfg.model.train_cfg, test_cfg=cfg.model.test_cfg)
    if 'norm_cfg' in head_cfg:
        head_cfg.norm_cfg = dict(type='BN', requires_grad=True) if name == 'rtmdet' else \
            head_cfg.norm_cfg
    theirs = MODELS.build(head_cfg)
    ours_cfg = dict(model=dict(bbox_head=copy.deepcopy(head_cfg)))
    assert swap_focal_loss(ours_cfg) >= 1
    ours = MODELS.build(ours_cfg['model']['bbox_head'])
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.fixture
def epoch():
    """TOOD reads the epoch from mmengine's MessageHub: past its warm-up epochs (where it uses
    its FocalLoss), its loss is the QualityFocalLoss."""
    from mmengine.logging import MessageHub

    hub = MessageHub.get_current_instance()
    old = hub.get_info('epoch')
    hub.update_info('epoch', 100)
    yield
    hub.update_info('epoch', old)


def _strides(head):
    gen = getattr(head, 'prior_generator', None) or head.anchor_generator
    return [s[0] if isinstance(s, tuple) else s for s in gen.strides]


def _gt(g, device):
    gts = []
    for _ in range(2):
        xy = torch.rand(4, 2, generator=g) * (IMG - 40)
        wh = torch.rand(4, 2, generator=g) * 30 + 8
        gts.append(InstanceData(bboxes=torch.cat([xy, xy + wh], 1).to(device),
                                labels=torch.randint(0, 80, (4,), generator=g).to(device)))
    return gts


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('name', sorted(HEADS))
def test_head_loss_matches_mmdet(impl, name, epoch):
    dev = device_of(impl)
    g = make_generator('head', name)
    theirs, ours = build_heads(name)
    theirs.to(dev).train()
    ours.to(dev).train()
    feats = [torch.randn(2, 32, IMG // s, IMG // s, generator=g).to(dev)
             for s in _strides(theirs)]
    metas = [dict(img_shape=(IMG, IMG), pad_shape=(IMG, IMG), batch_input_shape=(IMG, IMG),
                  scale_factor=(1.0, 1.0))] * 2
    gts = _gt(g, dev)
    with torch.no_grad():
        outs = theirs(feats)
    results = []
    for head in (theirs, ours):
        leaves = [[t.detach().clone().requires_grad_(True) for t in group] for group in outs]
        with impl_context(impl):
            losses = head.loss_by_feat(*leaves, gts, metas)
            loss_cls = losses['loss_cls']
            total = sum(loss_cls) if isinstance(loss_cls, (list, tuple)) else loss_cls
            grads = torch.autograd.grad(total, leaves[0])
        results.append((total.detach(), grads))
    (lt, gt_), (lo, go) = results
    assert torch.isfinite(lo) and lo.item() > 0
    assert rel_err(lo, lt) <= 1e-5, (name, lo.item(), lt.item())
    assert rel_err(torch.cat([x.flatten() for x in go]),
                   torch.cat([x.flatten() for x in gt_])) <= 1e-5
    kind = type(ours.loss_cls).__name__
    assert kind in ('TritonQualityFocalLoss', 'TritonVarifocalLoss'), kind
