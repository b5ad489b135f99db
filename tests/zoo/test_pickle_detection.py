"""Pickle detection by content, with no false positives: a thousand valid safetensors
files of random shapes and dtypes are accepted (their 8-byte header length starts with
0x80 about once in sixteen, like a pickle), and every pickle-based checkpoint is refused."""

from __future__ import annotations

import io
import pickle
import random

import pytest
import torch
from safetensors.torch import save

from zoo.registry import RegistrationError, check_safetensors

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.uint8]


def random_safetensors(rnd: random.Random) -> bytes:
    tensors = {}
    for i in range(rnd.randint(1, 6)):
        shape = [rnd.randint(1, 9) for _ in range(rnd.randint(0, 4))]
        name = f"layer{i}." + "x" * rnd.randint(0, 40)  # varies the header length
        tensors[name] = torch.zeros(shape, dtype=rnd.choice(DTYPES))
    return save(tensors, metadata={"note": "y" * rnd.randint(0, 300)})


def test_a_thousand_valid_files_are_accepted() -> None:
    rnd = random.Random(0)
    starts_like_pickle = 0
    for _ in range(1000):
        data = random_safetensors(rnd)
        starts_like_pickle += data[0] == 0x80
        check_safetensors(data)  # raises on a false positive
    assert starts_like_pickle > 20  # the case that was refused before is covered


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickles_are_refused(protocol: int) -> None:
    with pytest.raises(RegistrationError, match="pickle"):
        check_safetensors(pickle.dumps({"w": [0.0] * 4}, protocol=protocol))


def test_torch_save_zip_is_refused() -> None:
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    with pytest.raises(RegistrationError, match="pickle"):
        check_safetensors(buf.getvalue())


@pytest.mark.parametrize("data", [b"", b"1234", b"\x10" + b"\x00" * 7 + b"[1, 2, 3, 4]" + b"0" * 8,
                                  b"\x04" + b"\x00" * 7 + b"{bad"])
def test_other_bytes_are_not_safetensors(data: bytes) -> None:
    with pytest.raises(RegistrationError, match="not a safetensors file"):
        check_safetensors(data)
