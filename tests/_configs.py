"""Helpers of the config tests: mmdet's packaged configs, their loss dicts, offline builds."""
import ast
import contextlib
import copy
import glob
import os
import os.path as osp
import tempfile
from unittest import mock

import mmdet
import torch
from mmengine.config import Config, ConfigDict

MMDET_CONFIGS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
FAMILY = ('FocalLoss', 'QualityFocalLoss', 'VarifocalLoss', 'GaussianFocalLoss')
MMDET_TYPES = FAMILY + tuple(f'mmdet.{name}' for name in FAMILY)
OUR_NAMES = {name: f'Triton{name}' for name in FAMILY}


def walk_dicts(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk_dicts(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from walk_dicts(v)


def loss_dicts(model_cfg, types=MMDET_TYPES):
    """The dicts of `model_cfg` whose type is one of `types` (strings)."""
    return [d for d in walk_dicts(model_cfg) if isinstance(d.get('type'), str)
            and d['type'] in types]


def base_name(type_name):
    """'mmdet.TritonFocalLoss' -> 'TritonFocalLoss'."""
    return type_name.split('.')[-1]


def offline_model_cfg(model_cfg):
    """A copy that builds without the network: backbone init_cfg, any `pretrained` and LAD's
    `teacher_ckpt` (a checkpoint its constructor downloads) -> None; LD's `teacher_config` (a
    path relative to mmdet's repository) resolved in the wheel."""
    model_cfg = copy.deepcopy(model_cfg)
    for d in walk_dicts(model_cfg):
        for key in ('pretrained', 'teacher_ckpt'):
            if key in d:
                d[key] = None
        if isinstance(d.get('backbone'), dict):
            d['backbone']['init_cfg'] = None
        tc = d.get('teacher_config')
        if isinstance(tc, str) and tc.startswith('configs/'):
            d['teacher_config'] = osp.join(MMDET_CONFIGS, tc[len('configs/'):])
    return model_cfg


def resolve_mmdet_path(path):
    assert path.startswith('mmdet::'), path
    return osp.join(MMDET_CONFIGS, path[len('mmdet::'):])


def strip_scope(node):
    """Drop the `_scope_` keys mmengine adds to what a config inherits from `mmdet::` bases
    (those dicts are built in mmdet's scope, which is also the default scope here)."""
    if isinstance(node, dict):
        return {k: strip_scope(v) for k, v in node.items() if k != '_scope_'}
    if isinstance(node, (list, tuple)):
        return type(node)(strip_scope(v) for v in node)
    return node


def base_of(config_file):
    """The `_base_` of a config file (a str or a list), read from its source, or None."""
    tree = ast.parse(open(config_file).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == '_base_':
            return ast.literal_eval(node.value)
    return None


def resolved_bases(config_file):
    bases = base_of(config_file)
    bases = [] if bases is None else [bases] if isinstance(bases, str) else list(bases)
    here = osp.dirname(config_file)
    return [resolve_mmdet_path(b) if b.startswith('mmdet::') else osp.normpath(osp.join(here, b))
            for b in bases]


@contextlib.contextmanager
def _ram_tempdir():
    # mmengine writes (and deletes) a temporary copy of every config file it parses: on a
    # RAM-backed tmpdir that is ~25 % faster than on a VM disk
    old = tempfile.tempdir
    if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK):
        tempfile.tempdir = '/dev/shm'
    try:
        yield
    finally:
        tempfile.tempdir = old


def discover_family_configs(words=('FocalLoss', 'VarifocalLoss', 'DDQDETRHead')):
    """mmdet's packaged configs that may use the focal family: the files that name one of
    `words` (QualityFocalLoss contains FocalLoss; DDQ's head builds a QualityFocalLoss of its
    own) and every config that inherits from one of them, at any depth. A config whose model
    holds a family loss dict names it in its file or in a base: nothing else needs loading
    (mmdet 3.3.0's packaged configs are all `_base_` configs, none of them lazy-import).

    Returns (configs using the family: {rel path: Config}, the other candidates, load errors),
    and the number of config files."""
    files = sorted(glob.glob(osp.join(MMDET_CONFIGS, '**', '*.py'), recursive=True))
    text = {f: open(f).read() for f in files}
    assert not any('read_base' in t for t in text.values()), 'lazy-import configs: load them all'
    candidates = {f for f in files if any(w in text[f] for w in words)}
    bases = {f: set(resolved_bases(f)) for f in files}
    while True:
        more = {f for f in files if f not in candidates and bases[f] & candidates}
        if not more:
            break
        candidates |= more
    uses, others, errors = {}, {}, {}
    with _ram_tempdir():
        for f in sorted(candidates):
            rel = osp.relpath(f, MMDET_CONFIGS)
            try:
                # custom_imports are imported at build time (where a failure is reported)
                cfg = Config.fromfile(f, import_custom_modules=False)
            except Exception as e:  # noqa: BLE001 - reported by the tests
                errors[rel] = e
                continue
            model = cfg.get('model')
            if isinstance(model, dict) and loss_dicts(model.to_dict()):
                uses[rel] = cfg
            else:
                others[rel] = cfg
    return uses, others, errors, len(files)


@contextlib.contextmanager
def no_weight_init():
    """torch.nn.init's functions return their tensor untouched: building a model then costs its
    Python and its allocations, not the random fills of ~10^8 weights (5x faster on CPU). What a
    config build test checks (which modules, with which arguments) does not depend on it."""
    with contextlib.ExitStack() as stack:
        for name in dir(torch.nn.init):
            if name.endswith('_') and not name.startswith('_'):
                stack.enter_context(mock.patch.object(torch.nn.init, name,
                                                      lambda tensor, *a, **k: tensor))
        yield


def build_offline(model_cfg):
    """The model of a (swapped, offline) model dict, built through mmdet's registry without
    weight initialisation."""
    from mmdet.registry import MODELS

    with no_weight_init():
        return MODELS.build(ConfigDict(model_cfg))
