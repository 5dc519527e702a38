"""The installed stack works: mmdet imports, mmcv's compiled ops run, RetinaNet builds from
mmdet's own config and computes its losses on CPU, and the package registers its loss."""
import torch


def test_mmdet_models_import_and_mmcv_ops():
    import mmcv
    import mmdet
    import mmdet.models  # noqa: F401  (loads mmcv.ops -> needs the compiled mmcv._ext)
    import mmengine
    from mmcv.ops import nms

    assert mmcv.__version__ == '2.1.0' and mmdet.__version__ == '3.3.0'
    assert mmengine.__version__ == '0.10.7'
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def test_retinanet_from_mmdet_config_loss_forward_cpu():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    import mmdet_focal_triton  # noqa: F401
    from mmdet_focal_triton.mm_utils import load_mmdet_config

    register_all_modules()
    cfg = load_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None  # offline: no torchvision download
    cfg.model.bbox_head.loss_cls.type = 'TritonFocalLoss'
    model = MODELS.build(cfg.model)
    model.init_weights()
    packed = demo_mm_inputs(2, [(3, 96, 128), (3, 128, 96)], num_items=[3, 5], num_classes=80)
    data = model.data_preprocessor(packed, True)
    losses = model.loss(data['inputs'], data['data_samples'])
    assert type(model.bbox_head.loss_cls).__name__ == 'TritonFocalLoss'
    assert len(losses['loss_cls']) == 5  # one per FPN level
    total = sum(sum(v) for v in losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.bbox_head.retina_cls.weight.grad is not None
