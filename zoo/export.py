"""ONNX export with a structural check and a numerical parity check against PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

PARITY_TOLERANCE = 1e-4
# Networks that end in global pooling give the same features at any input size. They are
# exported with dynamic spatial axes and checked on a probe of at most this many pixels a
# side, so registering one costs the same memory whatever input size its card declares.
MAX_PROBE_SIDE = 32


class ExportError(ValueError):
    pass


def probe_input(in_channels: int, input_size: list[int], batch: int = 2,
                seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((batch, in_channels, *input_size), generator=gen)


def size_agnostic(model: nn.Module) -> bool:
    return bool(getattr(model, "size_agnostic", False))


def probe_size(model: nn.Module, input_size: list[int]) -> list[int]:
    """The input size to export and check a model at: the declared one, or a small one
    for size-agnostic networks."""
    if size_agnostic(model):
        return [min(s, MAX_PROBE_SIDE) for s in input_size]
    return list(input_size)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                output: str = "features") -> None:
    """Export with a dynamic batch axis (and dynamic spatial axes for size-agnostic
    networks); the file is complete once this returns."""
    import onnx

    model = model.eval()
    # The exporter logs one line per missing torchvision op; we do not use torchvision.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    axes: dict[int, torch.export.Dim] = {0: torch.export.Dim("batch", min=1, max=4096)}
    if size_agnostic(model):
        for axis in range(2, example.dim()):
            axes[axis] = torch.export.Dim(f"side{axis - 1}", min=4, max=1024)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True,
                                    dynamic_shapes={"x": axes},
                                    input_names=["x"], output_names=[output],
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
