"""A synthetic, deterministic COCO-format detection dataset, shipped as code.

Six shape classes (``SYNTHETIC_CLASSES``) in many sizes (from about 6 % to 75 % of the image side,
so every FPN level from P3 to P7 gets objects), aspect ratios, rotations and colours, partly
occluding each other, on textured backgrounds (gradients, stripes, smooth noise, checkers, clutter
lines, pixel noise). Every image is drawn from its own seeded ``numpy.random.Generator``
(seed, split, index), so the same parameters give the same bytes on every machine with the same
OpenCV, and a short training run learns something measurable.

Layout (what mmdet's ``CocoDataset`` expects)::

    ROOT/train/000000.jpg ...      ROOT/annotations/instances_train.json
    ROOT/val/000000.jpg ...        ROOT/annotations/instances_val.json
    ROOT/meta.json                 (parameters; written last, marks the folder complete)

Boxes are the tight box of each object's visible pixels, in COCO ``[x, y, w, h]`` with pixel-edge
coordinates (``0 <= x``, ``x + w <= width``); ``area`` is the visible pixel count; no object is
more than 40 % hidden by later ones. Category ids are 1..6 in ``SYNTHETIC_CLASSES`` order.

``paired=True`` (``--paired``) makes another dataset, in which images 2k and 2k+1 have the same
size and the same objects, so exactly the same annotations, on different backgrounds in different
colours: data-parallel training on 2 ranks (rank r gets images r, r+2, ...) then sees on each rank
the same number of positive anchors as the other rank, which single-process training at twice
the batch (images 2k, 2k+1 together) sees twice (tools/ddp_parity.py).

Use from Python::

    from mmdet_focal_triton.datasets import make_synthetic_coco, SYNTHETIC_CLASSES
    root = make_synthetic_coco(num_train=200, num_val=50, img_size=320)

or from the shell::

    python -m mmdet_focal_triton.datasets.synthetic --out data/synthetic --num-train 200
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SYNTHETIC_CLASSES = ('circle', 'rectangle', 'triangle', 'ellipse', 'cross', 'ring')
GENERATOR_VERSION = 1  # bump when the drawing code changes: it is part of the cache key
_SPLIT_IDS = {'train': 0, 'val': 1}
_JPEG_QUALITY = 92
_GEOMETRY_STREAM = 1  # the 4th seed word of the geometry generator of paired images


@dataclasses.dataclass(frozen=True)
class SyntheticStyle:
    """How hard the images are: what a dataset's drawings vary, beyond its size and seed.

    The default is the original dataset (``GENERATOR_VERSION`` 1: every image as it was drawn
    before styles existed). ``EASY`` is what the parity runs train on: objects in the size band
    RetinaNet's anchors cover at small image sizes, no background textures that look like object
    edges, a little less occlusion, so a detector trained from scratch for a few minutes reaches
    a real accuracy (configs/parity/ say why).

    Attributes:
        min_size, max_size: the object extent, log-uniform between these fractions of the
            image's short side (never below 10 px).
        textures: stripe and checkerboard backgrounds and thin clutter lines (distractors whose
            edges look like object edges); without them backgrounds are gradients or smooth
            noise only.
        min_visible: an annotated object keeps at least this fraction of its pixels visible.
    """

    min_size: float = 0.06
    max_size: float = 0.75
    textures: bool = True
    min_visible: float = 0.6

    def __post_init__(self):
        if not 0 < self.min_size <= self.max_size < 1:
            raise ValueError(f'need 0 < min_size <= max_size < 1, got {self.min_size}, '
                             f'{self.max_size}')
        if not 0 < self.min_visible <= 1:
            raise ValueError(f'min_visible must be in (0, 1], got {self.min_visible}')

    def changes(self) -> dict:
        """The fields that differ from the default style (what enters the cache key)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != f.default}


DEFAULT_STYLE = SyntheticStyle()
EASY = SyntheticStyle(min_size=0.2, max_size=0.65, textures=False, min_visible=0.75)
STYLES = {'default': DEFAULT_STYLE, 'easy': EASY}


def style_from(style) -> SyntheticStyle:
    """A ``SyntheticStyle`` from itself, a name of ``STYLES`` or a dict of its fields."""
    if style is None:
        return DEFAULT_STYLE
    if isinstance(style, SyntheticStyle):
        return style
    if isinstance(style, str):
        if style not in STYLES:
            raise ValueError(f'style must be one of {sorted(STYLES)} or a dict, got {style!r}')
        return STYLES[style]
    if isinstance(style, dict):
        return SyntheticStyle(**style)
    raise TypeError(f'style must be a SyntheticStyle, a name or a dict, got {type(style)}')


def default_cache_dir() -> Path:
    """``${MMDET_FOCAL_TRITON_CACHE:-${XDG_CACHE_HOME:-~/.cache}/mmdet-focal-triton}``."""
    env = os.environ.get('MMDET_FOCAL_TRITON_CACHE')
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    base = Path(xdg).expanduser() if xdg else Path.home() / '.cache'
    return base / 'mmdet-focal-triton'


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - cv2 comes with mmcv
        raise ImportError('make_synthetic_coco needs OpenCV (opencv-python-headless)') from e
    return cv2


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------
def _hsv_colour(rng: np.random.Generator, s_range, v_range) -> np.ndarray:
    """A random colour (float32, 0..255, 3 channels) from hue / saturation / value ranges."""
    h = rng.uniform(0.0, 6.0)
    s = rng.uniform(*s_range)
    v = rng.uniform(*v_range)
    c = v * s
    x = c * (1 - abs(h % 2 - 1))
    m = v - c
    i = int(h) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][i]
    return (np.array(rgb, dtype=np.float32) + m) * 255.0


def _background(rng: np.random.Generator, h: int, w: int, textures: bool = True) -> np.ndarray:
    cv2 = _cv2()
    c1 = _hsv_colour(rng, (0.0, 0.5), (0.15, 0.85))
    c2 = _hsv_colour(rng, (0.0, 0.5), (0.15, 0.85))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # without textures: gradients and smooth noise only (kinds 0 and 2)
    kind = int(rng.integers(0, 4)) if textures else 2 * int(rng.integers(0, 2))
    if kind == 0:  # linear gradient
        theta = rng.uniform(0, 2 * math.pi)
        t = xx * math.cos(theta) + yy * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    elif kind == 1:  # stripes
        theta = rng.uniform(0, math.pi)
        period = rng.uniform(6.0, 40.0)
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    elif kind == 2:  # smooth noise
        gh, gw = int(rng.integers(3, 10)), int(rng.integers(3, 10))
        t = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h),
                       interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0.0, 1.0)
    else:  # checkerboard
        cell = rng.uniform(10.0, 48.0)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
    img = c1[None, None, :] * (1 - t[..., None]) + c2[None, None, :] * t[..., None]
    # clutter: thin random lines that are not objects
    img = np.ascontiguousarray(img, dtype=np.float32)
    for _ in range(int(rng.integers(0, 6)) if textures else 0):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        col = _hsv_colour(rng, (0.0, 0.6), (0.1, 0.9)).tolist()
        cv2.line(img, p1, p2, col, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return img


def _rot(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _shape_mask(rng: np.random.Generator, cls: int, h: int, w: int,
                style: SyntheticStyle = DEFAULT_STYLE) -> np.ndarray | None:
    """Draw one object of class `cls` (index into SYNTHETIC_CLASSES) into a fresh uint8 mask."""
    cv2 = _cv2()
    short = min(h, w)
    # object extent: log-uniform between the style's fractions of the short side (default ~6 %
    # to ~75 %: P3 .. P7 objects)
    lo = max(10.0, style.min_size * short)
    size = math.exp(rng.uniform(math.log(lo), math.log(max(lo, style.max_size * short))))
    mask = np.zeros((h, w), dtype=np.uint8)
    name = SYNTHETIC_CLASSES[cls]
    if name in ('circle', 'ring'):
        aspect = 1.0 if name == 'circle' else rng.uniform(0.8, 1.25)
        ax = (size / 2, size / 2 * aspect)
    elif name in ('ellipse', 'rectangle'):
        # ellipses clearly elongated (so they are not circles); rectangles any aspect
        lo, hi = (1.7, 3.0) if name == 'ellipse' else (1.0, 2.5)
        elong = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        ax = (size / 2, size / 2 / elong) if rng.random() < 0.5 else (size / 2 / elong, size / 2)
    else:
        ax = (size / 2, size / 2)
    half_w, half_h = ax
    if 2 * half_w >= w - 2 or 2 * half_h >= h - 2:
        return None
    cx = rng.uniform(half_w + 1, w - half_w - 1)
    cy = rng.uniform(half_h + 1, h - half_h - 1)
    centre = (int(round(cx)), int(round(cy)))
    if name == 'circle':
        cv2.circle(mask, centre, max(2, int(round(half_w))), 1, -1)
    elif name == 'ring':
        axes = (max(3, int(round(half_w))), max(3, int(round(half_h))))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
        frac = rng.uniform(0.45, 0.7)
        inner = (max(1, int(round(axes[0] * frac))), max(1, int(round(axes[1] * frac))))
        cv2.ellipse(mask, centre, inner, 0, 0, 360, 0, -1)
    elif name == 'ellipse':
        angle = float(rng.choice([0.0, 90.0, rng.uniform(0, 180)]))
        axes = (max(2, int(round(half_w))), max(2, int(round(half_h))))
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    elif name == 'rectangle':
        cv2.rectangle(mask, (int(round(cx - half_w)), int(round(cy - half_h))),
                      (int(round(cx + half_w)), int(round(cy + half_h))), 1, -1)
    elif name == 'triangle':
        base = rng.uniform(0, 2 * math.pi)
        angles = base + np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
        angles += rng.uniform(-0.35, 0.35, size=3)
        radii = half_w * rng.uniform(0.8, 1.0, size=3)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    elif name == 'cross':
        t = rng.uniform(0.18, 0.34)  # arm half-thickness / half-size
        a, b = 1.0, t
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]], dtype=np.float64) * half_w
        angle = float(rng.choice([0.0, math.pi / 4, rng.uniform(0, math.pi / 2)]))
        pts = _rot(pts, angle) + np.array([cx, cy])
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:  # pragma: no cover
        raise AssertionError(name)
    return mask


def _draw_image(seed: int, split: str, index: int, img_size: int, max_objects: int,
                return_labels: bool = False, geometry_index: int | None = None,
                style: SyntheticStyle = DEFAULT_STYLE):
    """Return (uint8 HxWx3 image, list of (class index, bbox xywh, area)), plus the int16 map of
    which object (k + 1 for annotation k, 0 = background) each pixel shows if `return_labels`.

    `geometry_index`: None (the default) draws everything from one generator, (seed, split,
    index). Otherwise the geometry (aspect ratio, number, classes, shapes and places of the
    objects) comes from a second generator, (seed, split, geometry_index, _GEOMETRY_STREAM), and
    the appearance (background, object colours and shading, blur, noise) from the first: two
    images with the same `geometry_index` have the same size, the same objects and the same
    boxes, on different backgrounds, in different colours. The geometry draws never depend on
    the appearance draws (the occlusion rule looks at masks only), which is what makes this
    split possible; with one generator the draws are interleaved exactly as before."""
    cv2 = _cv2()
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    geo = rng if geometry_index is None else np.random.default_rng(
        [seed, _SPLIT_IDS[split], geometry_index, _GEOMETRY_STREAM])
    aspect = float(geo.choice([1.0, 4 / 3, 3 / 4]))
    if aspect >= 1:
        w, h = img_size, int(round(img_size / aspect))
    else:
        w, h = int(round(img_size * aspect)), img_size
    img = _background(rng, h, w, style.textures)
    labels = np.zeros((h, w), dtype=np.int16)  # 0 = background, k = object k-1
    full_area: list[int] = []
    visible = np.zeros(0, dtype=np.int64)  # visible pixels of each placed object
    classes: list[int] = []
    n_obj = int(geo.integers(1, max_objects + 1))
    for _ in range(n_obj):
        for _attempt in range(20):
            cls = int(geo.integers(0, len(SYNTHETIC_CLASSES)))
            mask = _shape_mask(geo, cls, h, w, style)
            if mask is None:
                continue
            m = mask.astype(bool)
            area = int(m.sum())
            if area < 40:
                continue
            # no earlier object may lose more than (1 - min_visible) of its pixels
            covered = labels[m]
            covered = covered[covered > 0]
            hidden = np.bincount(covered, minlength=len(full_area) + 1)[1:]
            if np.any(visible - hidden < style.min_visible * np.array(full_area)):
                continue
            visible = np.append(visible - hidden, area)
            colour = _hsv_colour(rng, (0.35, 1.0), (0.3, 1.0))
            under = img[m].mean(axis=0)
            if np.abs(colour - under).max() < 60:  # too close to what is underneath: push away
                colour = np.where(under > 127, under - 110, under + 110).astype(np.float32)
            # a little shading across the object, so its fill is not flat
            yy, xx = np.nonzero(m)
            theta = rng.uniform(0, 2 * math.pi)
            ramp = (xx * math.cos(theta) + yy * math.sin(theta))
            ramp = (ramp - ramp.mean()) / max(float(np.ptp(ramp)), 1.0)
            shade = rng.uniform(0, 50)
            img[yy, xx] = colour[None, :] + (ramp * shade)[:, None]
            labels[m] = len(full_area) + 1
            full_area.append(area)
            classes.append(cls)
            break
    # light blur (soft edges) and pixel noise
    img = cv2.GaussianBlur(img, (3, 3), float(rng.uniform(0.3, 0.9)))
    img += rng.normal(0.0, rng.uniform(2.0, 10.0), size=img.shape).astype(np.float32)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    anns = []
    for k, cls in enumerate(classes):
        ys, xs = np.nonzero(labels == k + 1)
        if ys.size == 0:  # pragma: no cover - excluded by the visibility rule
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        anns.append((cls, [x1, y1, x2 - x1, y2 - y1], int(ys.size)))
    return (img, anns, labels) if return_labels else (img, anns)


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def _params(num_train, num_val, img_size, seed, max_objects, paired=False,
            style: SyntheticStyle = DEFAULT_STYLE) -> dict:
    params = dict(generator_version=GENERATOR_VERSION, num_train=int(num_train),
                  num_val=int(num_val), img_size=int(img_size), seed=int(seed),
                  max_objects=int(max_objects), classes=list(SYNTHETIC_CLASSES))
    if paired:  # only when set: the unpaired datasets keep their cache key and meta.json
        params['paired'] = True
    if style.changes():  # likewise: the default style keeps the cache key it always had
        params['style'] = style.changes()
    return params


def _style(params: dict) -> SyntheticStyle:
    return SyntheticStyle(**params.get('style', {}))


def _geometry_index(params: dict, index: int) -> int | None:
    """Paired datasets: images 2k and 2k+1 share the geometry of pair k."""
    return index // 2 if params.get('paired') else None


def _params_hash(params: dict) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def _is_complete(root: Path, params: dict) -> bool:
    try:
        meta = json.loads((root / 'meta.json').read_text())
    except (OSError, ValueError):
        return False
    return meta.get('params') == params


def _write_split(out: Path, split: str, n: int, params: dict) -> None:
    cv2 = _cv2()
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(n):
        img, anns = _draw_image(params['seed'], split, i, params['img_size'],
                                params['max_objects'],
                                geometry_index=_geometry_index(params, i),
                                style=_style(params))
        file_name = f'{i:06d}.jpg'
        if not cv2.imwrite(str(out / split / file_name), img,
                           [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f'could not write {out / split / file_name}')
        h, w = img.shape[:2]
        images.append(dict(id=i + 1, file_name=file_name, width=w, height=h))
        for cls, bbox, area in anns:
            annotations.append(dict(id=ann_id, image_id=i + 1, category_id=cls + 1,
                                    bbox=[float(v) for v in bbox], area=float(area),
                                    iscrowd=0))
            ann_id += 1
    coco = dict(
        info=dict(description='mmdet-focal-triton synthetic shapes', version=str(
            GENERATOR_VERSION), year=2026),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=k + 1, name=name, supercategory='shape')
                    for k, name in enumerate(SYNTHETIC_CLASSES)])
    (out / 'annotations').mkdir(parents=True, exist_ok=True)
    with open(out / 'annotations' / f'instances_{split}.json', 'w') as f:
        json.dump(coco, f, sort_keys=True)


def make_synthetic_coco(root: None | str | os.PathLike = None, num_train: int = 200,
                        num_val: int = 50, img_size: int = 320, seed: int = 0,
                        max_objects: int = 6, overwrite: bool = False,
                        verbose: bool = False, paired: bool = False,
                        style: SyntheticStyle | str | dict | None = None) -> Path:
    """Generate the synthetic COCO dataset (or reuse a complete one) and return its root.

    Args:
        root: output folder. None: ``default_cache_dir()/synthetic_coco/<hash of the params>``,
            created on first use and reused afterwards.
        num_train, num_val: number of images per split.
        img_size: long side of every image (aspect ratios 1, 4:3 and 3:4).
        seed: the seed; image i of a split is the same whatever num_train / num_val.
        max_objects: at most this many objects per image (at least one).
        overwrite: regenerate even when `root` already holds a complete dataset; with an explicit
            `root` holding something else (another parameter set, or not a dataset), an error is
            raised unless this is set.
        verbose: print what is done.
        paired: images 2k and 2k+1 (of each split) have the same size and the same objects,
            hence exactly the same annotations (boxes, categories, areas), drawn on different
            backgrounds in different colours (an odd last image has no partner). Made for
            comparing data-parallel training with single-process training at the same total
            batch (tools/ddp_parity.py): with a per-image loss normaliser such as RetinaNet's
            number of positive anchors, the two images of a pair have the same anchor
            assignment, so the normaliser is the same on every rank. A different dataset from
            the unpaired one (its own cache key); False leaves the output byte for byte as it
            was before this option existed.
        style: a ``SyntheticStyle``, a name of ``STYLES`` ('default', 'easy') or a dict of its
            fields: object sizes, background textures, occlusion. None: the default style, the
            original dataset byte for byte (same cache key); any other style has its own.

    The folder is written atomically (into a temporary sibling, then renamed), so a crashed or
    concurrent run never leaves a half-written dataset that later runs would take as complete.
    """
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    if img_size < 32:
        raise ValueError(f'img_size must be >= 32, got {img_size}')
    if max_objects < 1:
        raise ValueError(f'max_objects must be >= 1, got {max_objects}')
    style = style_from(style)
    params = _params(num_train, num_val, img_size, seed, max_objects, paired, style)
    if root is None:
        root = default_cache_dir() / 'synthetic_coco' / _params_hash(params)
    root = Path(root).expanduser().absolute()
    if _is_complete(root, params) and not overwrite:
        if verbose:
            print(f'synthetic COCO: reusing {root}')
        return root
    if root.exists() and not overwrite and any(root.iterdir()):
        raise FileExistsError(f'{root} exists and is not this synthetic dataset (or another '
                              'parameter set); pass overwrite=True (--overwrite) or another root')
    root.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        for split, n in (('train', num_train), ('val', num_val)):
            _write_split(tmp, split, n, params)
        meta = dict(params=params, root=str(root), opencv=_cv2().__version__,
                    numpy=np.__version__, created=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
        (tmp / 'meta.json').write_text(json.dumps(meta, indent=1, sort_keys=True))
        if not overwrite and _is_complete(root, params):
            # a concurrent run finished first (and may be reading it already): use its copy
            shutil.rmtree(tmp, ignore_errors=True)
            return root
        if root.exists():  # overwrite, or an empty folder
            old = root.with_name(f'.{root.name}.old-{os.getpid()}')
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if _is_complete(root, params):  # a concurrent run finished first: use its copy
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if verbose:
        print(f'synthetic COCO: wrote {num_train} + {num_val} '
              f"{'paired ' if paired else ''}images to {root} in "
              f'{time.perf_counter() - t0:.1f} s')
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog='python -m mmdet_focal_triton.datasets.synthetic',
        description='Generate the synthetic COCO-format shapes dataset (deterministic).')
    p.add_argument('--out', default=None,
                   help='output folder (default: the cache, '
                        f'{default_cache_dir()}/synthetic_coco/<params hash>)')
    p.add_argument('--num-train', type=int, default=200)
    p.add_argument('--num-val', type=int, default=50)
    p.add_argument('--img-size', type=int, default=320, help='long side of the images')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--max-objects', type=int, default=6)
    p.add_argument('--paired', action='store_true',
                   help='images 2k and 2k+1 get the same objects and boxes on different '
                        'backgrounds, in different colours (for tools/ddp_parity.py)')
    p.add_argument('--style', choices=sorted(STYLES), default='default',
                   help="'easy': objects 20-65 %% of the short side, no textured backgrounds or "
                        'clutter lines, less occlusion (the parity runs\' dataset)')
    p.add_argument('--overwrite', action='store_true')
    args = p.parse_args(argv)
    root = make_synthetic_coco(args.out, num_train=args.num_train, num_val=args.num_val,
                               img_size=args.img_size, seed=args.seed,
                               max_objects=args.max_objects, overwrite=args.overwrite,
                               verbose=True, paired=args.paired, style=args.style)
    print(root)
    print(f"classes: {', '.join(SYNTHETIC_CLASSES)} (category ids 1..{len(SYNTHETIC_CLASSES)})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
