_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonQualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0)))
