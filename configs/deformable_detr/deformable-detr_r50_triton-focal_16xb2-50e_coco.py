_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=2.0)))
