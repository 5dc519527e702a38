"""The synthetic COCO dataset: deterministic, valid COCO, loadable by mmdet's CocoDataset."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip('cv2')

from mmdet_focal_triton.datasets import (  # noqa: E402
    SYNTHETIC_CLASSES,
    make_synthetic_coco,
    synthetic,  # noqa: E402
)

SMALL = dict(num_train=24, num_val=6, img_size=160)


def _tree_digest(root: Path) -> dict:
    """{relative path: sha256} of every file under root, meta.json excepted (it holds a date)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob('*')) if p.is_file() and p.name != 'meta.json'}


@pytest.fixture(scope='module')
def ds(tmp_path_factory):
    return make_synthetic_coco(tmp_path_factory.mktemp('syn') / 'a', seed=0, **SMALL)


def _load(root: Path, split: str) -> dict:
    return json.loads((root / 'annotations' / f'instances_{split}.json').read_text())


def test_same_seed_same_bytes_other_seed_differs(ds, tmp_path):
    again = make_synthetic_coco(tmp_path / 'b', seed=0, **SMALL)
    other = make_synthetic_coco(tmp_path / 'c', seed=1, **SMALL)
    da, db, dc = _tree_digest(ds), _tree_digest(again), _tree_digest(other)
    assert len(da) == SMALL['num_train'] + SMALL['num_val'] + 2
    assert da == db  # identical annotation JSON and identical image bytes
    assert set(da) == set(dc)
    assert da['annotations/instances_train.json'] != dc['annotations/instances_train.json']
    differing = [k for k in da if k.endswith('.jpg') and da[k] != dc[k]]
    assert len(differing) == SMALL['num_train'] + SMALL['num_val']


def test_image_i_does_not_depend_on_split_sizes(ds, tmp_path):
    bigger = make_synthetic_coco(tmp_path / 'big', seed=0, num_train=SMALL['num_train'] + 3,
                                 num_val=SMALL['num_val'], img_size=SMALL['img_size'])
    for i in (0, SMALL['num_train'] - 1):
        name = f'train/{i:06d}.jpg'
        assert (ds / name).read_bytes() == (bigger / name).read_bytes()


@pytest.mark.parametrize('split', ['train', 'val'])
def test_valid_coco(ds, split):
    coco = _load(ds, split)
    n = SMALL[f'num_{split}']
    assert [c['name'] for c in sorted(coco['categories'], key=lambda c: c['id'])] == \
        list(SYNTHETIC_CLASSES)
    cat_ids = {c['id'] for c in coco['categories']}
    images = {im['id']: im for im in coco['images']}
    assert len(images) == n == len(coco['images'])
    for im in coco['images']:
        img = cv2.imread(str(ds / split / im['file_name']))
        assert img is not None
        assert img.shape[:2] == (im['height'], im['width'])
        assert max(im['width'], im['height']) == SMALL['img_size']
    ann_ids = [a['id'] for a in coco['annotations']]
    assert len(set(ann_ids)) == len(ann_ids)
    per_image = {i: 0 for i in images}
    for a in coco['annotations']:
        im = images[a['image_id']]
        x, y, w, h = a['bbox']
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= im['width'] and y + h <= im['height']
        assert 0 < a['area'] <= w * h
        assert a['iscrowd'] == 0
        assert a['category_id'] in cat_ids
        per_image[a['image_id']] += 1
    assert all(c >= 1 for c in per_image.values())  # every image has an object


def test_variety(ds):
    """Several classes, small to large boxes, several aspect ratios: FPN levels all matter."""
    coco = _load(ds, 'train')
    sizes = {im['id']: (im['width'], im['height']) for im in coco['images']}
    cats = {a['category_id'] for a in coco['annotations']}
    assert len(cats) >= 5
    rel = np.array([max(a['bbox'][2], a['bbox'][3]) / min(sizes[a['image_id']])
                    for a in coco['annotations']])
    assert rel.min() < 0.15 and rel.max() > 0.45
    ar = np.array([a['bbox'][2] / a['bbox'][3] for a in coco['annotations']])
    assert ar.min() < 0.6 and ar.max() > 1.6
    assert len({s for s in sizes.values()}) >= 2  # not all images have the same shape


@pytest.mark.parametrize('index', range(6))
def test_boxes_are_tight_on_drawn_objects(index):
    """Each box is exactly the extent of its object's visible pixels, area their count."""
    img, anns, labels = synthetic._draw_image(3, 'train', index, 200, 6, return_labels=True)
    img2, anns2 = synthetic._draw_image(3, 'train', index, 200, 6)
    assert anns == anns2 and np.array_equal(img, img2)
    h, w = img.shape[:2]
    assert labels.shape == (h, w) and labels.max() == len(anns)
    for k, (_cls, (x, y, bw, bh), area) in enumerate(anns):
        ys, xs = np.nonzero(labels == k + 1)
        assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert area == ys.size
        assert area >= synthetic.DEFAULT_STYLE.min_visible * 40  # never a speck


def test_cache_reuse_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv('MMDET_FOCAL_TRITON_CACHE', str(tmp_path / 'cache'))
    root = make_synthetic_coco(num_train=3, num_val=2, img_size=64, seed=5)
    assert root.parent == tmp_path / 'cache' / 'synthetic_coco'
    assert (root / 'meta.json').exists()
    stamp = (root / 'annotations' / 'instances_train.json').stat().st_mtime_ns
    assert make_synthetic_coco(num_train=3, num_val=2, img_size=64, seed=5) == root
    assert (root / 'annotations' / 'instances_train.json').stat().st_mtime_ns == stamp
    other = make_synthetic_coco(num_train=3, num_val=2, img_size=64, seed=6)
    assert other != root
    # no temporary folders left behind
    assert sorted(p.name for p in root.parent.iterdir()) == sorted([root.name, other.name])
    # an explicit root holding something else is refused, not silently mixed
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'x.txt').write_text('x')
    with pytest.raises(FileExistsError):
        make_synthetic_coco(tmp_path / 'junk', num_train=3, num_val=2, img_size=64)
    # an incomplete dataset (no meta.json) is regenerated with overwrite
    (root / 'meta.json').unlink()
    make_synthetic_coco(root, num_train=3, num_val=2, img_size=64, seed=5, overwrite=True)
    assert (root / 'meta.json').exists()


def test_concurrent_generation_keeps_the_first_finished_copy(tmp_path, monkeypatch):
    """Two runs generating the same cached dataset at once (parity runs started together):
    the one finishing second must neither move away nor delete the copy the first one
    finished, which that run may already be reading."""
    monkeypatch.setenv('MMDET_FOCAL_TRITON_CACHE', str(tmp_path / 'cache'))
    kw = dict(num_train=2, num_val=1, img_size=64, seed=7)
    write_split = synthetic._write_split
    seen = {}

    def slow_write(tmp, split, n, params):
        if not seen:  # the outer run, mid-way: another run generates and finishes first
            seen['started'] = True
            seen['root'] = make_synthetic_coco(**kw)
            seen['inode'] = (seen['root'] / 'meta.json').stat().st_ino
        write_split(tmp, split, n, params)

    monkeypatch.setattr(synthetic, '_write_split', slow_write)
    root = make_synthetic_coco(**kw)
    assert root == seen['root']
    assert (root / 'meta.json').stat().st_ino == seen['inode']  # the first copy, untouched
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name]  # no leftovers


def test_cli(tmp_path, capsys):
    out = tmp_path / 'cli'
    assert synthetic.main(['--out', str(out), '--num-train', '2', '--num-val', '1',
                           '--img-size', '64', '--seed', '2']) == 0
    assert str(out) in capsys.readouterr().out
    assert len(list((out / 'train').glob('*.jpg'))) == 2
    assert len(_load(out, 'val')['images']) == 1


def test_loads_in_mmdet_coco_dataset(ds):
    pytest.importorskip('mmdet.datasets')
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    coco = _load(ds, 'train')
    dataset = CocoDataset(
        data_root=str(ds), ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'), metainfo=dict(classes=SYNTHETIC_CLASSES),
        filter_cfg=dict(filter_empty_gt=True, min_size=0),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                  dict(type='PackDetInputs')])
    assert len(dataset) == SMALL['num_train']
    id2name = {c['id']: c['name'] for c in coco['categories']}
    for idx in (0, len(dataset) - 1):
        sample = dataset[idx]
        ds_ = sample['data_samples']
        img_id = ds_.img_id
        h, w = ds_.img_shape
        gt = ds_.gt_instances
        bboxes, labels = gt.bboxes.numpy(), gt.labels.numpy()
        expected = [a for a in coco['annotations'] if a['image_id'] == img_id]
        assert len(bboxes) == len(expected) >= 1
        assert sample['inputs'].shape[1:] == (h, w)
        assert (bboxes[:, 0] >= 0).all() and (bboxes[:, 1] >= 0).all()
        assert (bboxes[:, 2] <= w).all() and (bboxes[:, 3] <= h).all()
        assert (bboxes[:, 2] > bboxes[:, 0]).all() and (bboxes[:, 3] > bboxes[:, 1]).all()
        got = sorted((SYNTHETIC_CLASSES[lab], *np.round(b).tolist())
                     for lab, b in zip(labels, bboxes, strict=True))
        want = sorted((id2name[a['category_id']], a['bbox'][0], a['bbox'][1],
                       a['bbox'][0] + a['bbox'][2], a['bbox'][1] + a['bbox'][3])
                      for a in expected)
        assert got == want


def test_paired_images_share_annotations_not_pixels(tmp_path, monkeypatch):
    """paired=True: images 2k and 2k+1 have the same size and annotations (so the same anchor
    assignment and number of positives), different backgrounds and colours; its own dataset."""
    monkeypatch.setenv('MMDET_FOCAL_TRITON_CACHE', str(tmp_path / 'cache'))
    kw = dict(num_train=8, num_val=3, img_size=96, seed=0)
    paired = make_synthetic_coco(paired=True, **kw)
    plain = make_synthetic_coco(**kw)
    assert paired != plain  # its own cache key
    assert json.loads((paired / 'meta.json').read_text())['params']['paired'] is True
    assert 'paired' not in json.loads((plain / 'meta.json').read_text())['params']
    for split, n in (('train', 8), ('val', 3)):
        coco = _load(paired, split)
        images = sorted(coco['images'], key=lambda im: im['id'])
        assert len(images) == n
        anns = {im['id']: sorted((a['category_id'], a['bbox'], a['area'])
                                 for a in coco['annotations'] if a['image_id'] == im['id'])
                for im in images}
        for a, b in zip(images[0::2], images[1::2]):
            assert (a['width'], a['height']) == (b['width'], b['height'])
            assert anns[a['id']] == anns[b['id']] and anns[a['id']]
            pa = cv2.imread(str(paired / split / a['file_name'])).astype(np.int16)
            pb = cv2.imread(str(paired / split / b['file_name'])).astype(np.int16)
            assert np.abs(pa - pb).mean() > 10  # another background, other colours
        # consecutive pairs differ from each other
        assert anns[images[0]['id']] != anns[images[2]['id']]
    # the same on the drawing level, with the object masks
    img0, anns0, lab0 = synthetic._draw_image(0, 'train', 4, 96, 6, True, geometry_index=2)
    img1, anns1, lab1 = synthetic._draw_image(0, 'train', 5, 96, 6, True, geometry_index=2)
    assert anns0 == anns1 and np.array_equal(lab0, lab1) and not np.array_equal(img0, img1)


# annotations of train images 0-2 (seed 0, 160 px) as drawn before `paired` existed: the
# geometry draws of the default path must stay interleaved with the appearance draws as they were
PINNED_UNPAIRED = [
    [(4, [11, 87, 23, 22], 302), (3, [57, 108, 13, 29], 248)],
    [(0, [20, 130, 17, 17], 197), (0, [63, 65, 27, 27], 529), (5, [47, 97, 43, 49], 1047),
     (0, [39, 135, 17, 17], 197), (3, [91, 115, 21, 19], 289)],
    [(4, [12, 46, 32, 32], 591), (5, [56, 24, 21, 23], 267), (4, [35, 70, 57, 57], 1133)],
]


def test_unpaired_output_unchanged():
    """paired=False draws what it drew before the option existed (annotations pinned; pixels
    depend on the OpenCV build, so they are not)."""
    for i, want in enumerate(PINNED_UNPAIRED):
        assert synthetic._draw_image(0, 'train', i, 160, 6)[1] == want


def test_cli_paired(tmp_path):
    out = tmp_path / 'cli'
    assert synthetic.main(['--out', str(out), '--num-train', '2', '--num-val', '1',
                           '--img-size', '64', '--paired']) == 0
    coco = _load(out, 'train')
    a, b = ([(x['category_id'], x['bbox']) for x in coco['annotations'] if x['image_id'] == i]
            for i in (1, 2))
    assert a == b


def test_easy_style(tmp_path, monkeypatch):
    """style='easy' (the parity runs' data): its own cache key and meta, objects within its
    size band, the default style's output unchanged; bad styles are refused."""
    monkeypatch.setenv('MMDET_FOCAL_TRITON_CACHE', str(tmp_path / 'cache'))
    kw = dict(num_train=16, num_val=2, img_size=160, seed=0)
    easy = make_synthetic_coco(style='easy', **kw)
    assert make_synthetic_coco(style=synthetic.EASY, **kw) == easy  # by name or by value
    plain = make_synthetic_coco(**kw)
    assert easy != plain
    meta = json.loads((easy / 'meta.json').read_text())['params']
    assert meta['style'] == dict(min_size=0.2, max_size=0.65, textures=False, min_visible=0.75)
    assert 'style' not in json.loads((plain / 'meta.json').read_text())['params']
    coco = _load(easy, 'train')
    shorts = {im['id']: min(im['width'], im['height']) for im in coco['images']}
    rel = np.array([max(a['bbox'][2], a['bbox'][3]) / shorts[a['image_id']]
                    for a in coco['annotations']])
    assert rel.max() <= 0.65 + 2 / 120  # a pixel of rounding on each side
    assert np.median(rel) > 0.25  # the default style's median is far smaller
    default_rel = [max(a['bbox'][2], a['bbox'][3]) / 120 for a in _load(plain, 'train')[
        'annotations']]
    assert min(default_rel) < 0.15
    assert synthetic._draw_image(0, 'train', 0, 160, 6)[1] == PINNED_UNPAIRED[0]
    with pytest.raises(ValueError, match='min_size <= max_size'):
        synthetic.SyntheticStyle(min_size=0.5, max_size=0.4)
    with pytest.raises(ValueError, match='style must be one of'):
        make_synthetic_coco(style='hard', **kw)
    with pytest.raises(TypeError):
        synthetic.SyntheticStyle(colours=3)
