# RetinaNet R18-FPN on the synthetic shapes dataset, sized for a CPU: the default config of
# `tools/parity.py` (`make parity`) on a machine without CUDA.
#
# It is mmdet's own `retinanet_r50_fpn_1x_coco.py` (anchors, assigner, FocalLoss, L1 box loss,
# test-time NMS all unchanged) made small enough to train from scratch on 2 CPU cores in a few
# minutes and still learn something measurable:
# - ResNet-18 backbone, FPN and head 128 channels wide (instead of 256), GroupNorm in the head
#   (the usual choice when training a head from scratch at batch 2);
# - 256-pixel images, batch 2, 400 iterations, AdamW lr 3e-4 (SGD at lr 0.01-0.04 barely moves
#   the classification loss in a few hundred iterations from random init);
# - no pretrained weights (`init_cfg=None`, no network): the backbone starts from random init, so
#   its stem and BN layers are trained, not frozen.
# The loss stays mmdet's `FocalLoss`: tools/parity.py trains it once as it is and once with
# `swap_focal_loss()` (-> `TritonFocalLoss`), from the same initial weights and data order.
#
# Data: `data_root` below is a placeholder. tools/parity.py fills it in with the folder that
# `mmdet_focal_triton.datasets.make_synthetic_coco()` generates (and the ann files / prefixes
# below match that layout). To run it on real COCO instead: set
#   data_root = 'data/coco/', ann_file = 'annotations/instances_{train,val}2017.json',
#   data_prefix = dict(img='{train,val}2017/'), drop `metainfo`, num_classes = 80,
# (and, with network access, put back the ImageNet init:
#   backbone.init_cfg = dict(type='Pretrained', checkpoint='torchvision://resnet18')).
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_focal_triton'], allow_failed_imports=False)

data_root = 'data/synthetic_coco/'  # placeholder: tools/parity.py sets the generated dataset
classes = ('circle', 'rectangle', 'triangle', 'ellipse', 'cross', 'ring')
metainfo = dict(classes=classes)
img_scale = (256, 256)

# what tools/parity.py uses when its options are not given
parity = dict(iters=400, num_train=200, num_val=50, img_size=256)

model = dict(
    backbone=dict(depth=18, frozen_stages=-1, norm_eval=False, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    bbox_head=dict(
        num_classes=6,
        in_channels=128,
        feat_channels=128,
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# short iteration-based schedule: warm up over 20 iterations, then constant LR
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=400, val_interval=400)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=20),
]
optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=3e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=35, norm_type=2))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=-1, save_last=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=16)
