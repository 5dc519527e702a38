"""Small helpers around mmdet's packaged configs."""
import os.path as osp


def mmdet_config_path(name: str) -> str:
    """Path of one of mmdet's own configs, e.g. 'retinanet/retinanet_r50_fpn_1x_coco.py'
    (the mmdet wheel ships them under mmdet/.mim/configs; an 'mmdet::' prefix is accepted)."""
    import mmdet

    if name.startswith('mmdet::'):
        name = name[len('mmdet::'):]
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', name)
    if not osp.isfile(path):
        raise FileNotFoundError(f'mmdet has no config {name!r} (looked at {path})')
    return path


def load_mmdet_config(name: str):
    """`mmengine.Config` of one of mmdet's own configs ('mmdet::' prefix optional)."""
    from mmengine.config import Config

    return Config.fromfile(mmdet_config_path(name))
