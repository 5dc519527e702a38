_base_ = 'mmdet::vfnet/vfnet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonVarifocalLoss', use_sigmoid=True, alpha=0.75, gamma=2.0, iou_weighted=True,
    loss_weight=1.0)))
