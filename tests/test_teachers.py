"""Soft targets, distillation and pseudo-labels: the loss against a float64 reference, the batch mix, resume,
and the teacher predictions file's checks."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from deepsea.data import AugmentedSource, MixedSource, Preprocess, Rescale, train_batches
from deepsea.data.synthetic import make_synthetic
from deepsea.step import example_losses
from deepsea.teachers import (
    TeacherPredictions,
    align_teacher_predictions,
    load_teacher_predictions,
    save_teacher_predictions,
)


def _log_softmax64(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("shape", [(4, 5), (7, 121)])
def test_soft_targets_and_distillation_match_a_float64_reference(shape, rng):
    logits = rng.standard_normal(shape).astype(np.float32) * 3
    labels = rng.integers(0, shape[1], shape[0]).astype(np.int32)
    one_hot = np.eye(shape[1], dtype=np.float32)[labels]
    hard = np.asarray(example_losses(jnp.asarray(logits), {"label": jnp.asarray(labels)}))
    soft = np.asarray(example_losses(jnp.asarray(logits), {"label": jnp.asarray(labels), "target": one_hot}))
    np.testing.assert_allclose(soft, hard, rtol=1e-6)  # one-hot targets are the integer labels
    np.testing.assert_allclose(hard, -_log_softmax64(logits)[np.arange(shape[0]), labels], rtol=1e-5)
    target = rng.dirichlet(np.ones(shape[1]), shape[0]).astype(np.float32)
    got = np.asarray(example_losses(jnp.asarray(logits), {"label": jnp.asarray(labels), "target": target}))
    np.testing.assert_allclose(got, -(target * _log_softmax64(logits)).sum(-1), rtol=1e-5)
    teacher = _log_softmax64(rng.standard_normal(shape) * 2).astype(np.float32)
    w, t = 0.7, 3.0
    batch = {"label": jnp.asarray(labels), "teacher": jnp.asarray(teacher)}
    got = np.asarray(example_losses(jnp.asarray(logits), batch, w, t))
    p_teacher = np.exp(_log_softmax64(teacher / t))
    want = (1 - w) * -_log_softmax64(logits)[np.arange(shape[0]), labels] + w * t**2 * -(
        p_teacher * _log_softmax64(logits / t)
    ).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # weight 0: the labels alone, whatever the teacher says
    np.testing.assert_allclose(np.asarray(example_losses(jnp.asarray(logits), batch, 0.0, t)), hard, rtol=1e-6)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from deepsea.data import scan_labelled_folder

    root = make_synthetic(tmp_path_factory.mktemp("syn"), per_class=3, progress=False)
    folder = scan_labelled_folder(root)
    return folder, Preprocess(size=15, rescale=Rescale("max_side", 13))


def _mixed(folder, pp, fraction_of_8: int, seed: int = 0):
    k = len(folder.classes)
    real = AugmentedSource(folder.paths[:20], folder.labels[:20], pp, seed=seed)
    targets = np.full((len(folder) - 20, k), 1.0 / k, np.float32)  # uniform: never one-hot
    pseudo = AugmentedSource(folder.paths[20:], targets.argmax(1), pp, seed=seed + 1, targets=targets)
    return MixedSource(real, pseudo, 8, fraction_of_8, k)


@pytest.mark.parametrize("per_batch", [1, 3, 5])
def test_each_batch_holds_the_configured_share_of_pseudo_labels_and_resumes_exactly(folders, per_batch):
    folder, pp = folders
    source = _mixed(folder, pp, per_batch)
    with train_batches(source, 8, workers=0) as it:
        batches = [next(it) for _ in range(6)]
    for b in batches:
        assert b["target"].shape == (8, len(folder.classes))
        pseudo = b["target"].max(1) < 1  # the real examples' targets are one-hot
        assert pseudo.sum() == per_batch and pseudo[-per_batch:].all()
        np.testing.assert_array_equal(b["target"][~pseudo].argmax(1), b["label"][~pseudo])
    with train_batches(_mixed(folder, pp, per_batch), 8, workers=0, start_step=4) as it:
        for want in batches[4:]:
            got = next(it)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(ValueError, match="between 1 and 7"):
        _mixed(folder, pp, 8)


def test_teacher_predictions_round_trip_and_refuse_what_does_not_match(folders, tmp_path):
    folder, _ = folders
    rel = [os.path.relpath(p, folder.root) for p in folder.paths]
    probs = np.random.default_rng(0).dirichlet(np.ones(len(folder.classes)), len(rel)).astype(np.float32)
    tp = TeacherPredictions(folder.root, tuple(rel), tuple(folder.classes), probs, {"runs": ["r"]})
    path = save_teacher_predictions(str(tmp_path / "t.npz"), tp)
    back = load_teacher_predictions(path)
    assert (back.root, back.images, back.classes, back.teachers) == (tp.root, tp.images, tp.classes, tp.teachers)
    np.testing.assert_array_equal(back.probs, probs)
    order = [folder.paths[i] for i in (5, 0, 3)]
    np.testing.assert_array_equal(align_teacher_predictions(back, order, folder.classes, path), probs[[5, 0, 3]])
    with pytest.raises(ValueError, match="other classes"):
        align_teacher_predictions(back, order, [*folder.classes[:-1], "other"], path)
    with pytest.raises(ValueError, match="no predictions for 1 of the 2 images"):
        align_teacher_predictions(back, [order[0], str(tmp_path / "elsewhere.jpg")], folder.classes, path)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        load_teacher_predictions(str(tmp_path / "nowhere.npz"))
    np.savez(tmp_path / "other.npz", probs=probs)
    with pytest.raises(ValueError, match="not a teacher predictions file"):
        load_teacher_predictions(str(tmp_path / "other.npz"))


def test_hold_out_links_a_stratified_aside_part_and_its_unlabelled_copy(folders, tmp_path):
    from deepsea.data import FolderError, scan_flat_folder, scan_labelled_folder
    from deepsea.data.folders import hold_out

    folder, _ = folders
    res = hold_out(folder.root, tmp_path / "ho", fraction=0.34, seed=1)
    train = scan_labelled_folder(tmp_path / "ho" / "train")
    aside = scan_labelled_folder(tmp_path / "ho" / "aside")
    flat = scan_flat_folder(tmp_path / "ho" / "aside_images")
    assert (res.train, res.aside) == (len(train), len(aside)) and res.train + res.aside == len(folder)
    assert train.classes == folder.classes and aside.classes == folder.classes  # one of each class of 3 set aside
    real = lambda f: {os.path.realpath(p) for p in f.paths}  # noqa: E731
    assert not real(train) & real(aside) and real(train) | real(aside) == real(folder)
    assert real(flat) == real(aside) and all(c not in n for n in flat.names for c in folder.classes)
    with pytest.raises(FolderError, match="exists"):
        hold_out(folder.root, tmp_path / "ho")
