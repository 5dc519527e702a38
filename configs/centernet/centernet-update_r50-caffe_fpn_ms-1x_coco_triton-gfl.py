_base_ = 'mmdet::centernet/centernet-update_r50-caffe_fpn_ms-1x_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_cls=dict(
    type='TritonGaussianFocalLoss', pos_weight=0.25, neg_weight=0.75, loss_weight=1.0)))
