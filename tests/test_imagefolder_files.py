"""What `--dataset imagefolder` reads of the files in its folder: split folders by their
usual names, images turned by EXIF and scaled by their bit depth, the kinds of file read,
linked folders, and what it says of the files it leaves out."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from conftest import make_image_folder
from PIL import Image

from promptclimb.agent.core.errors import PromptclimbError
from promptclimb.evaluators.datasets import IMAGE_EXTENSIONS, eight_bits, load_dataset, open_image

CLASSNAMES = ["blue lake", "green field", "red square"]


def _ids(data) -> list[str]:
    return sorted(i for items in data.splits.values() for i, _ in items)


def _loaded_quietly(root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left out to say
        return load_dataset("imagefolder", str(root))


@pytest.mark.parametrize("train, val, test", [("Train", "Val", "Test"), ("TRAIN", None, "TEST"),
                                              ("training", "validation", "testing"), ("train", "valid", "test")])
def test_split_folders_spelled_otherwise_are_the_splits(tmp_path, train, val, test):
    """`Train/ Val/ Test/` were read as three classes, each holding every real class's images
    (a search ran to its end and renamed 'Train'); `valid/` beside train/ and test/ was not read
    (val was drawn from train)."""
    for folder, n in ((train, 3), (val, 2), (test, 2)):
        if folder:
            make_image_folder(tmp_path / "d" / folder, per_class=n)
    data = _loaded_quietly(tmp_path / "d")
    assert data.classnames == CLASSNAMES
    for split, folder, n in (("train", train, 9), ("val", val, 6), ("test", test, 6)):
        assert len(data.splits[split]) == (n if folder else 0)
        assert all(i.startswith(f"{folder}/") for i, _ in data.splits[split])
        assert all((tmp_path / "d" / i).is_file() for i, _ in data.splits[split])


def test_a_class_named_like_a_split_folder_is_a_class(tmp_path):
    """Only a train and a test folder together make split folders; the aliases keep that rule."""
    vehicles = make_image_folder(tmp_path / "vehicles", classes={"Training": (9, 9, 9), "car": (90, 9, 9)})
    assert _loaded_quietly(vehicles).classnames == ["Training", "car"]


def test_two_folders_of_one_split_are_refused_naming_both(tmp_path):
    for folder in ("train", "val", "valid", "test"):
        make_image_folder(tmp_path / "d" / folder, per_class=2)
    with pytest.raises(PromptclimbError, match=r"d has val/ and valid/: two folders of its val split; merge them"):
        load_dataset("imagefolder", str(tmp_path / "d"))


def test_a_folder_beside_split_folders_is_refused_naming_it(tmp_path):
    """A class folder `c/` beside train/ and test/ was left out, unsaid."""
    for folder in ("train", "test"):
        make_image_folder(tmp_path / "d" / folder, per_class=2)
    make_image_folder(tmp_path / "d", classes={"c": (1, 2, 3)}, per_class=2)
    with pytest.raises(PromptclimbError, match=r"d has split folders \(train/, test/\) and beside them c/, which would "
                                               r"not be read: move class folders into the split folders"):
        load_dataset("imagefolder", str(tmp_path / "d"))


def _portrait_on_its_side(path):
    """A 40x20 photo stored on its side, as a phone does: EXIF orientation 6 turns it to 20x40,
    its red left half on top."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif)


def test_a_photo_is_turned_as_its_exif_orientation_says(tmp_path, image_folder):
    """A phone's portrait photo was read on its side (a Hugging Face dataset's was turned)."""
    _portrait_on_its_side(image_folder / "red_square" / "phone.png")
    image = open_image(image_folder / "red_square" / "phone.png")
    assert image.size == (20, 40)
    assert image.getpixel((10, 5)) == (255, 0, 0) and image.getpixel((10, 35)) == (0, 0, 255)


def test_a_folder_decoded_as_before_keeps_its_identity(tmp_path, image_folder):
    """Turning by EXIF and scaling 16-bit images by their depth change what some images
    decode to: a folder holding one is encoded anew (its identity keys the feature cache);
    one holding none keeps its identity, so a run begun on it resumes with no 'evaluator
    changed' warning."""
    assert _loaded_quietly(image_folder).identity.endswith(":decoded:2")
    turned = make_image_folder(tmp_path / "turned", per_class=3)
    _portrait_on_its_side(turned / "red_square" / "phone.png")
    assert _loaded_quietly(turned).identity.endswith(":decoded:3")
    deep = make_image_folder(tmp_path / "deep", per_class=3)
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(deep / "red_square" / "scan.png")
    assert _loaded_quietly(deep).identity.endswith(":decoded:3")


@pytest.mark.parametrize("top, dtype", [(1023, np.uint16), (4095, np.uint16), (16383, np.uint16), (65535, np.uint16),
                                        (255, np.uint16), (4095, np.int32), (2 ** 17 - 1, np.int32)])
def test_integer_images_are_scaled_by_the_depth_of_their_values(top, dtype):
    """A 16-bit image of a 12-bit camera's values was scaled by 65535: near black (4095 -> 16)."""
    image = Image.fromarray(np.linspace(0, top, 64).astype(dtype).reshape(8, 8))
    assert image.mode.startswith("I")
    pixels = np.asarray(eight_bits(image))
    assert pixels.min() == 0 and pixels.max() == 255


@pytest.mark.parametrize("top", [255, 4095, 20000])
def test_almost_equal_images_read_almost_equal(top):
    """Scaled by the bit depth its brightest value needs, an image whose brightest pixel is one
    more than another's read up to 4 times darker (4095 -> 2000 read 125, 4096 -> 31)."""
    def read(brightest):
        return np.asarray(eight_bits(Image.fromarray(np.array([[0, 200 * top // 255, brightest]], np.int32))))[0]

    assert abs(int(read(top)[1]) - int(read(top + 1)[1])) <= 1


def test_a_16_bit_file_of_12_bit_values_reads_its_whole_range(tmp_path):
    ramp = np.linspace(0, 4095, 40 * 40).reshape(40, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    assert Image.open(tmp_path / "scan.png").mode == "I;16"
    assert np.asarray(open_image(tmp_path / "scan.png")).max() == 255


@pytest.mark.parametrize("values, read", [([0.0, 0.5, 1.0], [0, 128, 255]), ([0.0, 255.0], [0, 255]),
                                          ([0.0, 65535.0], [0, 255])])
def test_float_images_are_read_as_before(values, read):
    assert list(np.asarray(eight_bits(Image.fromarray(np.array([values], np.float32))))[0]) == read


def test_every_kind_of_image_listed_is_one_pillow_opens(tmp_path, image_folder):
    """.jfif, .jpe, .pbm, .pnm, .ico, .dib and .tga files were passed over, unsaid."""
    registered = Image.registered_extensions()
    assert {ext for ext in IMAGE_EXTENSIONS if registered.get(ext) not in Image.OPEN} == set()
    kinds = {".jfif": "RGB", ".jpe": "RGB", ".pbm": "1", ".pnm": "L", ".ico": "RGB", ".dib": "RGB", ".tga": "RGB"}
    for ext, mode in kinds.items():
        Image.new(mode, (16, 16)).save(image_folder / "blue_lake" / f"more{ext}", format=registered[ext])
    ids = _ids(_loaded_quietly(image_folder))
    assert {f"blue_lake/more{ext}" for ext in kinds} <= set(ids) and len(ids) == 24 + len(kinds)


def test_files_of_other_kinds_beside_images_are_said_in_one_line(image_folder):
    """A class's .heic photos beside its .png ones were left out, unsaid (said only where a
    class had no image left)."""
    for name in ("IMG_0001.HEIC", "IMG_0002.heic", "notes.txt", "Thumbs.db", "desktop.ini", ".DS_Store"):
        (image_folder / "blue_lake" / name).write_bytes(b"x")
    with pytest.warns(UserWarning) as said:
        data = load_dataset("imagefolder", str(image_folder))
    lines = [str(w.message) for w in said]
    assert len(lines) == 1 and lines[0].endswith("images: left out 3 file(s) of a kind not read as an image: "
                                                 ".heic (2), .txt (1) (the kinds read: .avif, .bmp, .dib, .gif, .ico, "
                                                 ".jfif, .jpe, .jpeg, .jpg, .pbm, .pgm, .png, .pnm, .ppm, .tga, .tif, "
                                                 ".tiff, .webp)")
    assert len(_ids(data)) == 24


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="symbolic links")
def test_a_linked_sub_folder_is_read_once_and_a_broken_link_is_said(tmp_path, image_folder):
    """A linked class folder and linked images were read, a linked sub-folder was not, unsaid;
    a link to a folder of the data itself (the class's own, the data's folder, another split's)
    is not read twice, said; a broken link is said with its reason."""
    more = make_image_folder(tmp_path / "elsewhere", classes={"lake": (10, 40, 200)}, per_class=2) / "lake"
    (image_folder / "blue_lake" / "more").symlink_to(more, target_is_directory=True)
    (image_folder / "blue_lake" / "again").symlink_to(image_folder / "blue_lake", target_is_directory=True)
    (image_folder / "blue_lake" / "up").symlink_to(image_folder, target_is_directory=True)  # every class under it
    (image_folder / "red_square" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.warns(UserWarning, match=r"images: skipped 3 unreadable image\(s\): ") as said:
        ids = _ids(load_dataset("imagefolder", str(image_folder)))
    line = str(said[0].message)
    assert f"blue_lake/again/ (a link to {image_folder / 'blue_lake'}, a folder of the data itself: not read twice)" \
        in line and "blue_lake/up/ (a link to" in line
    assert "red_square/gone.png (a link to " in line and "nowhere.png, which does not exist)" in line
    assert [i for i in ids if i.startswith("blue_lake/more/")] == ["blue_lake/more/lake_000.png",
                                                                  "blue_lake/more/lake_001.png"]
    assert len(ids) == 26 and not any("again" in i or "/up/" in i for i in ids)
    # split folders: a link in train/ to a class of test/ would put test images in train
    split = make_image_folder(tmp_path / "split" / "train", per_class=3).parent
    make_image_folder(split / "test", per_class=3)
    (split / "train" / "blue_lake" / "peek").symlink_to(split / "test" / "red_square", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"train/blue_lake/peek/ \(a link to .*, a folder of the data itself"):
        ids = _ids(load_dataset("imagefolder", str(split)))
    assert not any("peek" in i for i in ids)


def test_an_image_over_pillows_pixel_limit_is_said_with_its_file_and_reason(image_folder, monkeypatch):
    """Pillow's warning ('Image size (...) exceeds limit ..., could be decompression bomb')
    named no file, and the image it refuses was 'skipped' with no reason. The limit is lowered
    here so that small images pass it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)  # 40x40 images pass; refused past twice it
    Image.new("RGB", (50, 50)).save(image_folder / "red_square" / "large.png")
    Image.new("RGB", (100, 100)).save(image_folder / "red_square" / "huge.png")
    with pytest.warns(UserWarning) as said:
        data = load_dataset("imagefolder", str(image_folder))
    lines = sorted(str(w.message) for w in said)
    assert len(lines) == 2
    assert lines[0].endswith("images: 1 image(s) over Pillow's pixel limit (PIL.Image.MAX_IMAGE_PIXELS, 0.002 MP) "
                             "read anyway (Pillow warns of each, naming no file, as a possible decompression bomb): "
                             "red_square/large.png (0.0025 MP)")
    assert lines[1].endswith("images: skipped 1 unreadable image(s): red_square/huge.png (0.01 MP, over Pillow's "
                             "limit of 0.004 MP (twice PIL.Image.MAX_IMAGE_PIXELS); downscale it or raise the limit)")
    assert "red_square/large.png" in _ids(data) and "red_square/huge.png" not in _ids(data)
    # a CoOp folder's image is not scanned first: the scorer says the error's own words
    with pytest.raises(Image.DecompressionBombError, match=r"^0.01 MP, over Pillow's limit of 0.004 MP"):
        open_image(image_folder / "red_square" / "huge.png")
