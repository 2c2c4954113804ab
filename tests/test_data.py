"""Training data: Cityscapes (real sample files), Facades, folder pairs, synthetic set, preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asapbench.data import build_dataset, describe_dataset, encode_batch
from asapbench.data.transforms import Preprocess
from asapbench.errors import UserError
from asapbench.registry import create_generator
from tests.conftest import shared_path


def _collate(ds, keys):
    return torch.utils.data.default_collate([ds[k] for k in keys])


# ---------------------------------------------------------------------------------------------
# Cityscapes (real files)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def city_root():
    return shared_path("data", "cityscapes_samples")


def test_cityscapes_flat_labels_instances_edges(city_root):
    spec = describe_dataset("cityscapes", city_root)
    assert spec.label_nc == 35 and spec.has_instances
    ds = build_dataset("cityscapes", city_root, (256, 512), 35, use_instances=True, flip=False)
    assert len(ds) == 8
    item = ds[0]
    key = ds.pairs[0].key
    raw_lab = np.array(Image.open(city_root / "train_label" / f"{key}_gtFine_labelIds.png"))
    raw_inst = np.array(Image.open(city_root / "train_inst" / f"{key}_gtFine_instanceIds.png"))
    assert raw_lab.shape == (1024, 2048)
    # PIL NEAREST 2048x1024 -> 512x256 samples source pixel floor((i + 0.5) * 4) = 4 i + 2
    hand_lab = raw_lab[2::4, 2::4]
    hand_inst = raw_inst[2::4, 2::4].astype(np.int64)
    assert item["label"].shape == (1, 256, 512) and item["label"].dtype == torch.int64
    assert np.array_equal(item["label"][0].numpy(), hand_lab)
    assert np.array_equal(item["inst"][0].numpy(), hand_inst)
    assert item["inst"].max() > 255  # 16-bit ids (class * 1000 + instance) survive
    # instance edge by hand: a pixel whose id differs from any existing 4-neighbour
    e = np.zeros(hand_inst.shape, bool)
    dx = hand_inst[:, 1:] != hand_inst[:, :-1]
    dy = hand_inst[1:, :] != hand_inst[:-1, :]
    e[:, 1:] |= dx
    e[:, :-1] |= dx
    e[1:, :] |= dy
    e[:-1, :] |= dy
    model = create_generator("asapnet-tiny", label_nc=35)
    x = encode_batch(_collate(ds, [0]), model, 35)
    assert x.shape == (1, 36, 256, 512)
    assert np.array_equal(x[0, -1].numpy().astype(bool), e)
    assert e.sum() > 1000
    onehot = x[0, :35].numpy()
    assert np.array_equal(onehot.argmax(0), hand_lab) and np.all(onehot.sum(0) == 1)


def test_cityscapes_photo_values_and_alignment(city_root):
    ds = build_dataset("cityscapes", city_root, (256, 512), 35, use_instances=False, flip=True, seed=3)
    key = ds.pairs[1].key
    raw = Image.open(city_root / "train_img" / f"{key}_leftImg8bit.png")
    flipped = seen = 0
    for epoch in range(6):
        item = ds[(1, epoch)]
        p = ds.preprocess.params((1024, 2048), ds.rng(1, epoch))
        ref = np.asarray(raw.resize((512, 256), Image.Resampling.BICUBIC), dtype=np.float32)
        if p["flip"]:
            ref = ref[:, ::-1]
            flipped += 1
        seen += 1
        img = item["image"].numpy()
        assert img.shape == (3, 256, 512) and img.min() >= -1 and img.max() <= 1
        assert np.allclose(img, (ref.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)
        # alignment: the photo explained by per-class mean colours fits far better than a mirrored photo
        lab = item["label"][0]
        photo = item["image"]

        def class_mean_error(ph, lab=lab):
            rec = torch.zeros_like(ph)
            for c in lab.unique():
                m = lab == c
                rec[:, m] = ph[:, m].mean(1, keepdim=True)
            return (rec - ph).abs().mean().item()

        assert class_mean_error(photo) < 0.8 * class_mean_error(photo.flip(-1))
        sky, road = photo[:, lab == 23], photo[:, lab == 7]
        if sky.numel() and road.numel():
            assert sky.mean() > road.mean() + 0.5  # bright sky above the road
    assert 0 < flipped < seen  # the flip was exercised both ways


def test_cityscapes_official_tree_matches_flat(city_root, tmp_path):
    root = tmp_path / "cs"
    for src, dst, suffix in (("train_label", "gtFine", "_gtFine_labelIds.png"),
                             ("train_inst", "gtFine", "_gtFine_instanceIds.png"),
                             ("train_img", "leftImg8bit", "_leftImg8bit.png")):
        for f in sorted((city_root / src).glob(f"*{suffix}"))[:3]:
            city = f.name.split("_")[0]
            d = root / dst / "train" / city
            d.mkdir(parents=True, exist_ok=True)
            os.symlink(f, d / f.name)
    tree = build_dataset("cityscapes", root, (64, 128), 35, use_instances=True, flip=False)
    flat = build_dataset("cityscapes", city_root, (64, 128), 35, use_instances=True, flip=False)
    assert len(tree) == 3
    for i in range(3):
        assert tree.pairs[i].key == flat.pairs[i].key
        a, b = tree[i], flat[i]
        for k in ("label", "inst", "image"):
            assert torch.equal(a[k], b[k])


def test_cityscapes_missing_pairs_are_listed(city_root, tmp_path):
    root = tmp_path / "cs"
    for sub in ("train_label", "train_inst", "train_img"):
        (root / sub).mkdir(parents=True)
        for f in sorted((city_root / sub).glob("*.png"))[:3]:
            os.symlink(f, root / sub / f.name)
    os.unlink(next((root / "train_img").glob("aachen_000001*")))
    os.unlink(next((root / "train_inst").glob("aachen_000002*")))
    with pytest.raises(UserError) as e:
        build_dataset("cityscapes", root, (64, 128), 35, use_instances=True)
    msg = str(e.value)
    assert "aachen_000001_000019" in msg and "without a photo" in msg
    assert "aachen_000002_000019" in msg and "without an instance map" in msg


def test_cityscapes_wrong_folder(tmp_path):
    with pytest.raises(UserError, match="not a Cityscapes folder"):
        describe_dataset("cityscapes", tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        describe_dataset("cityscapes", tmp_path / "nope")


# ---------------------------------------------------------------------------------------------
# Facades and generic folders (files written here)
# ---------------------------------------------------------------------------------------------
def _write_pair(folder_lab: Path, folder_img: Path, name: str, lab: np.ndarray, img_ext=".png", palette=False):
    folder_lab.mkdir(parents=True, exist_ok=True)
    folder_img.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(lab.astype(np.uint8))
    if palette:
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i * 20 % 256, i * 50 % 256, i * 90 % 256)])
    im.save(folder_lab / f"{name}.png")
    rgb = np.stack([lab * 20, 255 - lab * 20, np.full_like(lab, 128)], -1).astype(np.uint8)
    Image.fromarray(rgb).save(folder_img / f"{name}{img_ext}", quality=95)


def test_facades_cmp_layout(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        lab = np.ones((40, 30), np.uint8)
        lab[10:30, 5:25] = rng.integers(2, 13)
        _write_pair(tmp_path / "base", tmp_path / "base", f"cmp_b{i:04d}", lab, ".jpg", palette=True)
    spec = describe_dataset("facades", tmp_path)
    assert spec.label_nc == 13 and spec.has_instances is False
    ds = build_dataset("facades", tmp_path, (32, 32), 13, flip=False)
    assert len(ds) == 3
    item = ds[0]
    assert item["label"].shape == (1, 32, 32) and int(item["label"].min()) == 1
    assert "inst" not in item
    # left label, right photo: the palette PNG gives ids, not colours
    assert set(item["label"].unique().tolist()) <= set(range(1, 13))
    os.unlink(tmp_path / "base" / "cmp_b0001.jpg")
    with pytest.raises(UserError, match="cmp_b0001"):
        build_dataset("facades", tmp_path, (32, 32), 13)


def test_folder_pairs_label_range_and_16bit_instances(tmp_path):
    lab = np.zeros((16, 24), np.uint8)
    lab[:, 12:] = 4
    _write_pair(tmp_path / "label", tmp_path / "image", "a", lab)
    inst = np.zeros((16, 24), np.uint16)
    inst[:8] = 40000  # needs 16 bits
    (tmp_path / "inst").mkdir()
    Image.fromarray(inst).save(tmp_path / "inst" / "a.png")
    assert Image.open(tmp_path / "inst" / "a.png").mode.startswith("I")
    spec = describe_dataset("folder", tmp_path, label_nc=5)
    assert spec.label_nc == 5 and spec.has_instances
    ds = build_dataset("folder", tmp_path, (16, 24), 5, use_instances=True, flip=False, preprocess="none")
    item = ds[0]
    assert int(item["inst"].max()) == 40000
    assert torch.equal(item["label"][0], torch.from_numpy(lab.astype(np.int64)))
    # 32-bit "I" instance maps (Pillow writes those as TIFF) read the same
    os.unlink(tmp_path / "inst" / "a.png")
    Image.fromarray(inst.astype(np.int32)).save(tmp_path / "inst" / "a.tif")
    assert Image.open(tmp_path / "inst" / "a.tif").mode == "I"
    ds = build_dataset("folder", tmp_path, (16, 24), 5, use_instances=True, flip=False, preprocess="none")
    assert torch.equal(ds[0]["inst"], item["inst"])
    # a label id beyond the model's range names the file
    small = build_dataset("folder", tmp_path, (16, 24), 4, flip=False)
    with pytest.raises(UserError, match=r"a\.png.*label id 4.*--label-nc 5"):
        small[0]


def test_folder_mismatch_and_sizes(tmp_path):
    lab = np.zeros((16, 24), np.uint8)
    _write_pair(tmp_path / "labels", tmp_path / "images", "a", lab)
    _write_pair(tmp_path / "labels", tmp_path / "images", "b", lab)
    os.replace(tmp_path / "images" / "b.png", tmp_path / "images" / "c.png")
    with pytest.raises(UserError) as e:
        build_dataset("folder", tmp_path, (16, 24), 5)
    assert "b" in str(e.value) and "c" in str(e.value) and "without a photo" in str(e.value)
    os.unlink(tmp_path / "images" / "c.png")
    os.unlink(tmp_path / "labels" / "b.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    ds = build_dataset("folder", tmp_path, (16, 24), 5)
    with pytest.raises(UserError, match="sizes differ"):
        ds[0]
    with pytest.raises(UserError, match="needs a label folder"):
        build_dataset("folder", tmp_path / "labels", (16, 24), 5)


def test_rgb_label_map_rejected(tmp_path):
    _write_pair(tmp_path / "label", tmp_path / "image", "a", np.zeros((8, 8), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "label" / "a.png")
    with pytest.raises(UserError, match="colour-coded"):
        build_dataset("folder", tmp_path, (8, 8), 5, preprocess="none")[0]


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
def test_preprocess_crop_flip_keep_pairs_aligned():
    h, w = 48, 64
    lab = np.zeros((h, w), np.uint8)
    lab[:, w // 2:] = 1
    lab[: h // 3] += 2
    photo = Image.fromarray(np.stack([lab * 80] * 3, -1).astype(np.uint8))
    pre = Preprocess((24, 24), mode="resize_and_crop", load_size=(40, 52), flip=True)
    flips = set()
    for seed in range(12):
        p = pre.params((h, w), np.random.default_rng(seed))
        flips.add(p["flip"])
        lt = pre.ids(Image.fromarray(lab), p)[0]
        ph = pre.photo(photo, p)[0]
        inner = ph[2:-2, 2:-2]
        expect = (lt[2:-2, 2:-2].float() * 80 / 255 - 0.5) / 0.5
        # away from the class borders (bicubic blur), photo and labels agree pixel for pixel
        border = torch.zeros_like(lt, dtype=torch.bool)
        border[:, 1:] |= lt[:, 1:] != lt[:, :-1]
        border[:, :-1] |= lt[:, 1:] != lt[:, :-1]
        border[1:] |= lt[1:] != lt[:-1]
        border[:-1] |= lt[1:] != lt[:-1]
        border = torch.nn.functional.max_pool2d(border[None, None].float(), 5, 1, 2)[0, 0].bool()[2:-2, 2:-2]
        assert torch.allclose(inner[~border], expect[~border], atol=0.02)
    assert flips == {True, False}
    with pytest.raises(UserError, match="smaller than the training size"):
        Preprocess((64, 64), mode="resize_and_crop", load_size=(32, 32))
    with pytest.raises(UserError, match="unknown preprocessing"):
        Preprocess((64, 64), mode="zoom")


def test_dontcare_label_maps_255(tmp_path):
    lab = np.zeros((8, 8), np.uint8)
    lab[:4] = 255
    _write_pair(tmp_path / "label", tmp_path / "image", "a", lab)
    ds = build_dataset("folder", tmp_path, (8, 8), 3, contain_dontcare=True, preprocess="none", flip=False)
    item = ds[0]
    assert int(item["label"].max()) == 3
    model = create_generator("asapnet-tiny", label_nc=3, contain_dontcare=True, instance_edge=False)
    x = encode_batch(_collate(ds, [0]), model, 3)
    assert x.shape == (1, 4, 8, 8) and x[0, 3, :4].eq(1).all() and x[0, 0, 4:].eq(1).all()


# ---------------------------------------------------------------------------------------------
# synthetic set
# ---------------------------------------------------------------------------------------------
def test_synthetic_deterministic_and_cache_identical(tmp_path):
    mem = build_dataset("synthetic", None, (32, 48), 6, use_instances=True, synthetic_size=5, seed=1)
    again = build_dataset("synthetic", None, (32, 48), 6, use_instances=True, synthetic_size=5, seed=1)
    cached = build_dataset("synthetic", tmp_path, (32, 48), 6, use_instances=True, synthetic_size=5, seed=1)
    folder = next(tmp_path.glob("synthetic-*"))
    stamp = (folder / "synthetic.json").stat().st_mtime_ns
    cached2 = build_dataset("synthetic", tmp_path, (32, 48), 6, use_instances=True, synthetic_size=5, seed=1)
    assert (folder / "synthetic.json").stat().st_mtime_ns == stamp  # reused, not regenerated
    assert len(mem) == len(cached) == 5
    for key in [(0, 0), (3, 0), (3, 1), (4, 7)]:
        a, b, c, d = mem[key], again[key], cached[key], cached2[key]
        for k in ("label", "inst", "image"):
            assert torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) and torch.equal(a[k], d[k])
    labs = torch.stack([mem[i]["label"] for i in range(5)])
    assert labs.max() < 6 and len(labs.unique()) > 2
    assert not torch.equal(mem[0]["label"], mem[1]["label"])
    # the photo is a function of the labels: per-class mean colours explain most of it
    item = mem[0]
    rec = torch.zeros_like(item["image"])
    for c in item["label"].unique():
        m = item["label"][0] == c
        rec[:, m] = item["image"][:, m].mean(1, keepdim=True)
    assert (rec - item["image"]).abs().mean() < 0.5 * item["image"].std()


def test_unknown_dataset_and_missing_data():
    with pytest.raises(UserError, match="unknown dataset"):
        describe_dataset("imagenet", None)
    with pytest.raises(UserError, match="needs --data"):
        describe_dataset("cityscapes", None)
