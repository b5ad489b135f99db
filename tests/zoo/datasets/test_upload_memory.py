"""Hostile uploads are refused before they cost memory (security issue: memory blow-ups
before refusal).

Each case runs in a fresh interpreter: the payload is built there (streamed, so building
it costs little), the peak RSS is reset, the upload is validated through the same call the
API makes, and the child reports the error and how far the peak RSS rose above what it was
before the call. Every case must be refused with its reason and rise less than 300 MB; the
two near-limit uploads must be accepted within the same bound.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
LIMIT_MB = 300
UPLOAD_LIMIT = 512 * 1024 * 1024  # the service's default max_upload_bytes


# Payload builders: run inside the child, each costs a few MB at most.

def png_declaring(width: int, height: int) -> bytes:
    """A black grayscale PNG: its pixel data deflates about 1000:1, so a 10000x10000 image
    is ~100 KB on the wire and 100 MB once decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    z = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    per_block = max(1, (1 << 20) // len(row))
    parts, left = [], height
    while left:
        k = min(left, per_block)
        parts.append(z.compress(row * k))
        left -= k
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def zip_of_pngs(png: bytes, n: int, labels: bool = True) -> bytes:
    """n copies of one PNG plus a labels.csv with two classes (none: unlabelled)."""
    buf, rows = io.BytesIO(), io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["filename", "label"])
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(n):  # stored as is, like any PNG: deflating it again would gain
            zf.writestr(f"imgs/{i}.png", png, zipfile.ZIP_STORED)
            writer.writerow([f"imgs/{i}.png", "ab"[i % 2]])
        if labels:
            zf.writestr("labels.csv", rows.getvalue())
    return buf.getvalue()


def _block(ratio_bytes: int) -> bytes:
    """1 MiB that deflates to about ratio_bytes: a little noise, then zeros."""
    noise = np.random.default_rng(0).integers(0, 256, ratio_bytes, dtype=np.uint8).tobytes()
    return noise + bytes((1 << 20) - ratio_bytes)


def npz_streamed(arrays: dict[str, tuple[tuple[int, ...], str, int | None]]) -> bytes:
    """An npz written member by member without holding any array: each entry is
    (shape, dtype, bytes of data actually written or None for all). Image data is mostly
    zeros with some noise, so each member stays under the 200:1 zip-bomb ratio."""
    buf = io.BytesIO()
    block = _block(4500)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for key, (shape, dtype, written) in arrays.items():
            dt = np.dtype(dtype)
            total = int(np.prod(shape, dtype=object)) * dt.itemsize
            written = total if written is None else written
            with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, {
                    "descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
                    "shape": shape})
                if key.endswith("_labels"):  # two classes
                    rng = np.random.default_rng(1)
                    fh.write(rng.integers(0, 2, written // dt.itemsize).astype(dt).tobytes())
                    continue
                while written > 0:
                    fh.write(block[:written])
                    written -= len(block)
    return buf.getvalue()


def small_npz(label: int) -> bytes:
    """A small valid-looking npz (28x28 gray) whose train labels hold one huge label."""
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 40), ("val", 10), ("test", 10)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{s}_labels"] = (np.arange(n) % 2).astype(np.int64)[:, None]
    arrays["train_labels"][0, 0] = label
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def rgb_npz(train: int, side: int, written: int | None = None, labels: bool = True) -> bytes:
    """MedMNIST layout, channels-last RGB (the layout that needs a transpose on load);
    without labels, train images only (an unlabelled set)."""
    arrays: dict[str, tuple[tuple[int, ...], str, int | None]] = {}
    for s, n in (("train", train), ("val", 8), ("test", 8)):
        if not labels and s != "train":
            continue
        arrays[f"{s}_images"] = ((n, side, side, 3), "uint8", written if s == "train" else None)
        if labels:
            arrays[f"{s}_labels"] = ((n, 1), "uint8", None)
    return npz_streamed(arrays)


# Each case: the code that builds the payload, the call, the expected error and its text.

ZIP_CALL = "load_upload('up.zip', data, 'up', {channels}, {limit})"
NPZ_CALL = "load_upload('up.npz', data, 'up', 1, {limit})"
CASES: dict[str, dict[str, Any]] = {
    # The 473 KB zip: few PNGs, each declaring a huge image.
    "zip_huge_pngs": dict(build="zip_of_pngs(png_declaring(10000, 10000), 5)",
                          call=ZIP_CALL.format(channels=1, limit=UPLOAD_LIMIT),
                          error="InvalidDataset", match="10000x10000"),
    # Many small PNGs, each allowed, that together decode to far more than the budget.
    "zip_many_pngs": dict(build="zip_of_pngs(png_declaring(512, 512), 1100)",
                          call=ZIP_CALL.format(channels=3, limit=UPLOAD_LIMIT),
                          error="InvalidDataset", match="decode to"),
    # The 2.2 MB npz: every member under the 200:1 ratio, 440 MB once inflated.
    "npz_inflating": dict(build="rgb_npz(9000, 128)", call=NPZ_CALL.format(limit=UPLOAD_LIMIT),
                          error="InvalidDataset", match="decompressed"),
    # A member whose header declares 262 GB but that holds 1 KB.
    "npz_lying_header": dict(build="rgb_npz(1_000_000, 512, written=1024)",
                             call=NPZ_CALL.format(limit=UPLOAD_LIMIT),
                             error="InvalidDataset", match="decompressed"),
    # The same two, unlabelled (no labels.csv; train images only).
    "zip_unlabelled_many_pngs": dict(
        build="zip_of_pngs(png_declaring(512, 512), 1100, labels=False)",
        call=ZIP_CALL.format(channels=3, limit=UPLOAD_LIMIT), error="InvalidDataset",
        match="decode to"),
    "npz_unlabelled_inflating": dict(build="rgb_npz(9000, 128, labels=False)",
                                     call=NPZ_CALL.format(limit=UPLOAD_LIMIT),
                                     error="InvalidDataset", match="decompressed"),
    # The 57 KB npz with one label of 5,000,000.
    "npz_huge_label": dict(build="small_npz(5_000_000)", call=NPZ_CALL.format(limit=UPLOAD_LIMIT),
                           error="InvalidDataset", match="label 5000000"),
    # The encoder upload declaring a 1024^3 input: refused by the card, before any
    # model is built.
    "encoder_huge_input": dict(
        build="(card(dims=3, input_size=[1024, 1024, 1024]), weights(card(dims=3)))",
        call="prepare(*data)", error="RegistrationError", match="over the limit"),
    # A card at the input limit (256^3 voxels): a size-agnostic network is exported and
    # checked on a small probe, so registering it costs what a 28^3 one does.
    "encoder_at_input_limit": dict(
        build="(card(dims=3, input_size=[256, 256, 256]), weights(card(dims=3)))",
        call="prepare(*data)", error=None, match=None),
    # Huge declared widths with small weights: refused from the safetensors header against
    # the architecture built on the meta device, before any tensor is allocated.
    "encoder_huge_widths": dict(
        build="(card(dims=3, arch={'name': 'resnet10', 'args': {'widths': [65536] * 4}}), "
              "weights(card(dims=3)))",
        call="prepare(*data)", error="RegistrationError", match="do not fit"),
    # A ViT whose token count (and attention memory) would explode.
    "encoder_vit_many_tokens": dict(
        build="(card(arch={'name': 'vit', 'args': {'patch_size': 4}}, input_size=[512, 512]), "
              "__import__('safetensors.torch', fromlist=['save']).save({}))",
        call="prepare(*data)", error="RegistrationError", match="tokens"),
    # Near the limits and valid: accepted, and loading stays within the same bound.
    "zip_near_limit": dict(build="zip_of_pngs(png_declaring(512, 512), 990)",
                           call=ZIP_CALL.format(channels=1, limit=UPLOAD_LIMIT),
                           error=None, match=None),
    "npz_near_limit": dict(build="rgb_npz(5000, 128)", call=NPZ_CALL.format(limit=UPLOAD_LIMIT),
                           error=None, match=None),
    # /predict's decoding (zoo.imaging.load): an 82 KB gray PNG of 8192x8192, exactly the
    # default budget of 64 Mi values, for a 128-px RGB model. It must cost about its float
    # copy (256 MB) and the decoded picture, not three channels at full size and an
    # anti-aliasing filter over them (11.8 GB in the attack on a live server).
    "predict_huge_gray_png": dict(
        build="(__import__('monai.transforms'), __import__('tests.zoo.test_imaging_native', "
              "fromlist=['png']).png(numpy.full((8192, 8192), 7, numpy.uint8)))[1]",
        call="__import__('zoo.imaging', fromlist=['load']).load('a.png', data, "
             "spatial_dims=2, channels=3, input_size=[128, 128])",
        error=None, match=None, limit_mb=500),
}

CHILD = textwrap.dedent("""
    import json, sys
    import numpy, torch, PIL.Image
    from service.datasets import load_upload
    from zoo.registry import prepare
    from tests.utils import card, weights
    from tests.zoo.datasets.test_upload_memory import (
        png_declaring, zip_of_pngs, rgb_npz, small_npz)

    def status(key):
        with open("/proc/self/status") as fh:
            return next(int(x.split()[1]) for x in fh if x.startswith(key + ":"))

    data = {build}
    try:  # peak RSS back to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = status("VmRSS")
    except OSError:
        before = status("VmHWM")
    error = message = None
    try:
        {call}
    except Exception as err:
        error, message = type(err).__name__, str(err)
    size = len(data if isinstance(data, bytes) else data[1])
    print(json.dumps({{"rise_mb": (status("VmHWM") - before) / 1024, "error": error,
                      "message": message, "upload_kb": size / 1024}}))
""")


def run_case(name: str, timeout: float = 120) -> dict[str, Any]:
    case = CASES[name]
    code = CHILD.format(build=case["build"], call=case["call"])
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CASES))
def test_upload_stays_within_memory_bound(name: str) -> None:
    case = CASES[name]
    got = run_case(name)
    if case["error"] is None:
        assert got["error"] is None, got["message"]
    else:
        assert got["error"] == case["error"], got
        assert case["match"] in got["message"], got["message"]
        assert len(got["message"]) < 1000, "error messages stay short"
    limit = case.get("limit_mb", LIMIT_MB)
    assert got["rise_mb"] < limit, f"{name}: peak RSS rose {got['rise_mb']:.0f} MB"


# What the headers alone refuse, and what still loads as before.

def _npz(**arrays: np.ndarray) -> bytes:
    base = {f"{s}_{k}": (np.zeros((4, 28, 28), np.uint8) if k == "images"
                         else np.array([[0], [1], [0], [1]], np.uint8))
            for s in ("train", "val", "test") for k in ("images", "labels")}
    buf = io.BytesIO()
    np.savez(buf, **{**base, **arrays}, allow_pickle=True)
    return buf.getvalue()


def _truncated(data: bytes, member: str, keep: int) -> bytes:
    """The npz with one member cut to its first `keep` bytes (the zip stays valid)."""
    src, buf = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            body = src.read(info)
            out.writestr(info.filename, body[:keep] if info.filename == member else body)
    return buf.getvalue()


@pytest.mark.parametrize(("payload", "message"), [
    (dict(train_labels=np.array([[0], [1], [0], [1]], dtype=object)),
     "object and string arrays are refused"),
    (dict(val_labels=np.array(["a", "b", "a", "b"])), "labels must be integer class indices"),
    (dict(test_images=np.zeros((4, 28, 28), np.float64)), "expected uint8"),
    (dict(train_labels=np.zeros((3, 1), np.uint8)), "4 images but 3 labels"),
    (dict(train_labels=np.zeros((4, 2), np.uint8)), "multi-label"),
    (dict(val_images=np.zeros((4, 32, 32), np.uint8)), "disagree on image shape"),
    (dict(train_groups=np.zeros(3, np.int64)), "one group id per train image"),
    (dict(train_groups=np.zeros(4, np.float32)), "expected integers"),
    ("truncated", "truncated"),
])
def test_npz_layout_is_refused_from_headers(payload: Any, message: str) -> None:
    from zoo.datasets.ingest import from_npz_bytes
    from zoo.datasets.readers import DataError

    if payload == "truncated":
        data = _truncated(_npz(), "train_images.npy", 128 + 1000)
    else:
        data = _npz(**payload)
    with pytest.raises(DataError, match=message):
        from_npz_bytes(data, "x")


def test_fortran_order_and_channels_last_load_as_channels_first() -> None:
    from zoo.datasets.ingest import from_npz_bytes

    rng = np.random.default_rng(0)
    rgb = {s: rng.integers(0, 256, (6, 28, 28, 3), dtype=np.uint8) for s in ("train", "val")}
    labels = np.array([[0], [1], [0], [1], [0], [1]], np.uint8)
    data = _npz(train_images=rgb["train"], val_images=np.asfortranarray(rgb["val"]),
                test_images=rgb["val"][:4], train_labels=labels, val_labels=labels)
    ds = from_npz_bytes(data, "x")
    assert ds.channels == 3 and ds.image_size == [28, 28]
    for s in ("train", "val"):
        assert np.array_equal(ds.splits[s].images.numpy(), np.moveaxis(rgb[s], -1, 1))
        assert ds.splits[s].images.is_contiguous()


def test_real_files_still_load() -> None:
    """Every labelled npz under the data dir: accepted as an upload where the ratio guard
    allows, and by path (the larger budget) in every case, with MedMNIST's split sizes."""
    from tests.utils import DATA_DIR
    from zoo.datasets.ingest import MAX_RATIO, MAX_UPLOAD_DECODED_BYTES, from_npz_bytes
    from zoo.datasets.readers import load_npz

    files = sorted((DATA_DIR / "medmnist").glob("*.npz")) + sorted(
        (DATA_DIR / "extra").glob("*.npz")) + [DATA_DIR / "segmentation" / "ph2_128.npz"]
    if not all(f.exists() for f in files) or len(files) < 3:
        pytest.skip(f"real data not found at {DATA_DIR}")
    uploaded = 0
    for path in files:
        ds = load_npz(path)
        with zipfile.ZipFile(path) as zf:
            ratio = max(i.file_size / max(i.compress_size, 1) for i in zf.infolist())
        size = sum(s.images.numel() for s in ds.splits.values())
        if ratio <= MAX_RATIO and size <= MAX_UPLOAD_DECODED_BYTES:
            up = from_npz_bytes(path.read_bytes(), path.stem)
            assert [len(up.splits[s]) for s in ("train", "val", "test")] == \
                   [len(ds.splits[s]) for s in ("train", "val", "test")]
            uploaded += 1
    assert uploaded >= len(files) - 1  # adrenalmnist3d_64 (396 MiB, 221:1) is path-only


def _zip(csv_text: bytes, pngs: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()  # stored: these tests are not about the compression ratio guard
    with zipfile.ZipFile(buf, "w") as zf:
        for name, png in pngs.items():
            zf.writestr(name, png)
        zf.writestr("labels.csv", csv_text)
    return buf.getvalue()


@pytest.mark.parametrize(("csv_text", "pngs", "message"), [
    (b"filename,label\na.png,\xff\xfe\n", None, "not a readable UTF-8 CSV"),
    (b"filename,label,group\na.png,x,99999999999999999999999\n", None, "patient id"),
    (b"filename,label\n" + b"a.png,x\n" * 2_500_000, None, "at most 16 MiB"),
    (b"filename,label\n" + b"a.png,x\n" * 100_001, None, "more than 100,000 rows"),
    (b"filename,label\n", None, "lists no images"),
    (b"filename,label\na.png,x\nb.png,y\n", {"b.png": png_declaring(600, 8)},
     "600x8 pixels; images may be at most 512x512"),
    (b"filename,label\na.png,x\nb.png,y\n", {"b.png": png_declaring(16, 8)},
     r"b.png is \(8, 16\), others are \(8, 8\)"),
    (b"filename,label\na.png,x\nb.png,y\n", {"b.png": png_declaring(14000, 14000)},
     "far too large"),
])
def test_labels_csv_and_image_headers_are_refused_unread(
        csv_text: bytes, pngs: dict[str, bytes] | None, message: str) -> None:
    from zoo.datasets.ingest import from_zip_bytes
    from zoo.datasets.readers import DataError

    files = {"a.png": png_declaring(8, 8), **(pngs or {})}
    with pytest.raises(DataError, match=message):
        from_zip_bytes(_zip(csv_text, files), "x", UPLOAD_LIMIT)
