_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)))
