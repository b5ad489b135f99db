"""TaskAlign model zoo: encoder cards, architectures, content-addressed storage, the SQL
catalog, ONNX export with parity checks, and Hugging Face compatible transfer.

`load_encoder` is imported lazily so that `import zoo` stays cheap (no torch).
"""

from __future__ import annotations

from typing import Any


def load_encoder(name: str, revision: str | None = None, **kwargs: Any) -> Any:
    from .loader import load_encoder as _load

    return _load(name, revision=revision, **kwargs)


__all__ = ["load_encoder"]
