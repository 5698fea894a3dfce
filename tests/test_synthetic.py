import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from deepsea.data import invert, read_image, scan_labelled_folder, stratified_split
from deepsea.data.sources import default_synthetic_dir
from deepsea.data.synthetic import SYNTHETIC_CLASSES, make_synthetic

PER_CLASS = 40


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return scan_labelled_folder(make_synthetic(tmp_path_factory.mktemp("syn"), per_class=PER_CLASS, progress=False))


def test_balance_ids_and_look(synth):
    assert 10 <= len(synth.classes) <= 20 and set(synth.classes) == set(SYNTHETIC_CLASSES)
    assert (synth.class_counts() == PER_CLASS).all()
    assert len(set(synth.ids)) == len(synth)  # unique across classes, like NDSB ids
    shapes = [read_image(p).shape for p in synth.paths]
    assert len(set(shapes)) > 20  # images of varying size
    img = read_image(synth.paths[0])
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert border.mean() > 200 and img.min() < 150  # dark organism on white


def test_deterministic(tmp_path):
    a = make_synthetic(tmp_path / "a", per_class=3, seed=5, progress=False)
    b = make_synthetic(tmp_path / "b", per_class=3, seed=5, progress=False)
    c = make_synthetic(tmp_path / "c", per_class=3, seed=6, progress=False)

    def digest(root):
        f = scan_labelled_folder(root)
        return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in f.paths]

    assert digest(a) == digest(b) and digest(a) != digest(c)


def test_default_dir_is_generated_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPSEA_DATA", str(tmp_path))
    path = default_synthetic_dir(per_class=2, seed=1)
    assert os.path.isdir(path) and len(scan_labelled_folder(path)) == 2 * len(SYNTHETIC_CLASSES)
    mtime = os.path.getmtime(path)
    assert default_synthetic_dir(per_class=2, seed=1) == path and os.path.getmtime(path) == mtime
    assert not [e for e in os.listdir(tmp_path) if ".tmp." in e]


def _features(path, use_size=True):
    """Rotation-invariant shape features: radial mass profile, elongation, ring crossings (+ size)."""
    x = invert(read_image(path)).astype(np.float64)
    m = (x > 0.25).astype(np.float64)
    h, w = m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    area = m.sum()
    cy, cx = (m * yy).sum() / area, (m * xx).sum() / area
    ev = np.sort(np.linalg.eigvalsh(np.cov(np.stack([yy[m > 0] - cy, xx[m > 0] - cx]))))
    r = np.hypot(yy - cy, xx - cx)[m > 0]
    rmax = r.max()
    hist = np.histogram(r / rmax, bins=8, range=(0, 1))[0] / area
    rings = []
    t = np.linspace(0, 2 * np.pi, 180, endpoint=False)
    for frac in (0.4, 0.7, 0.9):
        ys = np.clip(np.round(cy + frac * rmax * np.sin(t)).astype(int), 0, h - 1)
        xs = np.clip(np.round(cx + frac * rmax * np.cos(t)).astype(int), 0, w - 1)
        v = m[ys, xs]
        rings += [v.mean(), np.abs(np.diff(v)).sum()]
    shape = [np.log(ev[1] / max(ev[0], 1e-3)), area / (np.pi * rmax**2), *hist, *rings]
    size = [np.log(area), np.log(max(h, w)), np.log(rmax)] if use_size else []
    return np.array(size + shape)


def _nearest_neighbour_accuracy(folder, use_size):
    x = np.array([_features(p, use_size) for p in folder.paths])
    y = folder.labels
    tr, va = stratified_split(y, 0.3, seed=0)
    mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-9
    z = (x - mu) / sd
    d = ((z[va][:, None] - z[tr][None]) ** 2).sum(-1)
    pred = y[tr][d.argmin(1)]
    return (pred == y[va]).mean(), pred, y[va]


def test_learnable_with_rotation_invariant_features_and_size(synth):
    acc, pred, true = _nearest_neighbour_accuracy(synth, use_size=True)
    assert acc >= 0.9
    # the classes that differ only in size: separable with size, less so without it
    pair = [synth.classes.index("disc_small"), synth.classes.index("disc_large")]
    in_pair = np.isin(true, pair)
    pair_acc = (pred[in_pair] == true[in_pair]).mean()
    acc_nosize, pred_ns, _ = _nearest_neighbour_accuracy(synth, use_size=False)
    pair_acc_nosize = (pred_ns[in_pair] == true[in_pair]).mean()
    assert pair_acc >= 0.95 and pair_acc_nosize < pair_acc and acc_nosize < acc
