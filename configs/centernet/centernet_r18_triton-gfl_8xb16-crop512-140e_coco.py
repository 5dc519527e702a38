_base_ = 'mmdet::centernet/centernet_r18_8xb16-crop512-140e_coco.py'
custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)
model = dict(bbox_head=dict(loss_center_heatmap=dict(type='TritonGaussianFocalLoss',
                                                     loss_weight=1.0)))
