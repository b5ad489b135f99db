"""ONNX export with a structural check and a numerical parity check against PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

PARITY_TOLERANCE = 1e-4


class ExportError(ValueError):
    pass


def probe_input(in_channels: int, input_size: list[int], batch: int = 2,
                seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, in_channels, *input_size), generator=gen)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch axis; the file is complete once this returns."""
    import onnx

    model = model.eval()
    # The exporter logs one line per missing torchvision op; we do not use torchvision.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True,
                                    dynamic_shapes={"x": {0: batch}},
                                    input_names=["x"], output_names=["features"],
                                    verbose=False)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    tmp = path.with_suffix(".tmp")
    program.save(str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    tmp.replace(path)


def onnx_session(path: Path | str | bytes, providers: list[str] | None = None):  # noqa: ANN201
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    available = ort.get_available_providers()
    wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=[p for p in wanted if p in available])


def parity(model: nn.Module, onnx_path: Path, example: torch.Tensor) -> float:
    """Max absolute difference between PyTorch eager and onnxruntime on `example`."""
    with torch.inference_mode():
        expected = model.eval()(example).numpy()
    session = onnx_session(onnx_path, ["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: example.numpy()})[0]
    if got.shape != expected.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
    return float(np.max(np.abs(got - expected)))
