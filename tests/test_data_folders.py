import os

import numpy as np
import pytest
from PIL import Image

from deepsea.data import (
    BadImageError,
    FolderError,
    Preprocess,
    check_images,
    preprocess_image,
    read_image,
    scan_flat_folder,
    scan_labelled_folder,
)


def _jpeg(path, size=(20, 30), value=100):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


@pytest.fixture
def labelled(tmp_path):
    for cls, n in (("b_class", 3), ("a_class", 2)):
        for i in range(n):
            _jpeg(str(tmp_path / cls / f"{cls}{i}.jpg"))
    (tmp_path / "a_class" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "a_class" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "b_class" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "README.md").write_text("stray")
    return tmp_path


def test_labelled_folder(labelled, caplog):
    with caplog.at_level("WARNING"):
        f = scan_labelled_folder(labelled)
    assert f.classes == ("a_class", "b_class")  # sorted; the hidden folder is not a class
    assert len(f) == 5 and list(f.labels) == [0, 0, 1, 1, 1]
    assert f.ids == ("a_class0", "a_class1", "b_class0", "b_class1", "b_class2")
    assert sorted(f.ignored) == sorted(
        [".hidden", "README.md", "a_class/.DS_Store", "a_class/Thumbs.db", "b_class/notes.txt"]
    )
    assert "ignored 5 hidden or non-image file(s)" in caplog.text
    np.testing.assert_array_equal(f.class_counts(), [2, 3])


def test_empty_class_folder_is_an_error(labelled):
    (labelled / "c_empty").mkdir()
    (labelled / "c_empty" / ".DS_Store").write_bytes(b"")
    with pytest.raises(FolderError, match="c_empty"):
        scan_labelled_folder(labelled)


def test_root_without_class_folders(tmp_path):
    _jpeg(str(tmp_path / "x.jpg"))
    with pytest.raises(FolderError, match="has no class folders"):
        scan_labelled_folder(tmp_path)
    with pytest.raises(FolderError, match="does not exist"):
        scan_labelled_folder(tmp_path / "missing")


def test_flat_folder(tmp_path):
    for name in ("2.jpg", "10.jpg", "1.png"):
        _jpeg(str(tmp_path / name))
    (tmp_path / "Thumbs.db").write_bytes(b"")
    f = scan_flat_folder(tmp_path)
    assert f.names == ("1.png", "10.jpg", "2.jpg") and f.labels is None and f.ignored == ("Thumbs.db",)
    with pytest.raises(FolderError, match="has no images"):
        scan_flat_folder(_empty(tmp_path))


@pytest.mark.slow
def test_flat_folder_of_a_hundred_thousand_images_scans_in_linear_time(tmp_path):
    """The NDSB test folder has 130,400 images: one pass, no list lookups per entry."""
    import time

    for i in range(100_000):
        os.close(os.open(tmp_path / f"{i}.jpg", os.O_CREAT | os.O_WRONLY))  # scanning reads names, not bytes
    (tmp_path / "notes.txt").write_text("x")
    t0 = time.perf_counter()
    f = scan_flat_folder(tmp_path)
    seconds = time.perf_counter() - t0
    assert len(f) == 100_000 and f.ignored == ("notes.txt",)
    assert seconds < 2.0, f"scanning took {seconds:.2f} s"


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


# --- bad and odd images -------------------------------------------------------------------


def test_corrupt_truncated_empty_and_missing_files(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\x00\x01garbage" * 50)
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name, reason in (
        ("truncated.jpg", "corrupt or truncated"),
        ("garbage.jpg", "not an image"),
        ("empty.jpg", "empty file"),
        ("missing.jpg", "no such file"),
    ):
        with pytest.raises(BadImageError, match=reason) as err:
            read_image(tmp_path / name)
        assert err.value.path.endswith(name) and name in str(err.value)


def test_check_images_names_every_bad_file_and_skips_only_when_asked(labelled):
    (labelled / "a_class" / "broken.jpg").write_bytes(b"not a jpeg")
    (labelled / "b_class" / "cut.jpg").write_bytes((labelled / "b_class" / "b_class0.jpg").read_bytes()[:40])
    f = scan_labelled_folder(labelled)
    advice = r"\(to skip and list them: --set data.skip_bad_images=true when training, --skip-bad-images when"
    with pytest.raises(BadImageError, match=r"2 unreadable image\(s\) " + advice + r".*broken\.jpg.*cut\.jpg"):
        check_images(f, progress=False)
    kept, sizes, bad = check_images(f, skip_bad=True, progress=False)
    assert len(kept) == len(f) - 2 and sorted(os.path.basename(p) for p, _ in bad) == [
        "broken.jpg",
        "cut.jpg",
    ]
    assert sizes.shape == (len(kept), 2) and (sizes == [20, 30]).all()
    assert kept.classes == f.classes


def test_rgb_palette_alpha_and_16bit_images_are_converted(tmp_path):
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray = read_image(tmp_path / "rgb.png")
    assert gray.shape == (8, 9) and gray.dtype == np.uint8
    # ITU-R 601-2 luma, as PIL defines "L"
    assert abs(int(gray[0, 0]) - round(200 * 0.299 + 100 * 0.587 + 50 * 0.114)) <= 1
    assert read_image(tmp_path / "rgb.png", "RGB").shape == (8, 9, 3)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").shape == (8, 9)
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent: must become the white background
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert (read_image(tmp_path / "alpha.png") == 255).all()
    Image.fromarray(np.full((5, 5), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert (read_image(tmp_path / "deep.png") == 255).all()


@pytest.mark.parametrize("shape", [(1, 1), (3000, 3000), (1, 40), (400, 7)])
def test_tiny_and_huge_images_are_rescaled_like_any_other(shape):
    img = np.zeros(shape, np.uint8)  # black = organism everywhere after inversion
    x = preprocess_image(img, Preprocess())
    assert x.shape == (95, 95, 1) and x.dtype == np.float32 and np.isfinite(x).all()
    # the largest side becomes 85 px: the patch's centre is organism, its corners background
    assert x[47, 47, 0] == pytest.approx(1.0, abs=1e-5)
    assert x[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
