_base_ = 'mmdet::atss/atss_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)))
