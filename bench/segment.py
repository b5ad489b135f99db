"""Images (or volumes) per second of our segmentation training loop against a bare
MONAI/PyTorch loop with the same network, data, batch, loss and threads, interleaved in
the same run; then the sliding-window prediction time for one 3D volume.

    .venv/bin/python bench/segment.py [--device cpu|cuda|auto] [--threads 2] [--steps 8]
                                      [--rounds 3] [--augment] [--batch-2d 16] [--batch-3d 2]

Ours is the exact path `finetune_segmenter` runs for an epoch: `training_batches`
(shuffle, crop, move, scale, augment) feeding `train_epoch` (`train_step` with autocast on
CUDA, cosine schedule, the progress reporter). The bare loop indexes, scales, and steps
`DiceCELoss` + Adam on the same `Segmenter`, with the same autocast on CUDA, so the ratio
is our loop's overhead. Target: ratio >= 0.9 on CPU. Networks: the seed presets
resnet18-2d (Kvasir-SEG, 128 px RGB) and resnet10-3d (hippocampus, 48x64x48).
With --augment ours also flips and rotates image and mask (a cost the bare loop does not
pay; reported as its own row). On CUDA the share of a step spent making the batch tells
whether data handling is the bottleneck, and GPU utilisation is read when pynvml is there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.zoo.seg_data import HIPPOCAMPUS, KVASIR, load_seg  # noqa: E402
from zoo.architectures import build_encoder  # noqa: E402
from zoo.segmentation import Segmenter, segmenter_from_encoder  # noqa: E402
from zoo.training.finetune import StepReporter  # noqa: E402
from zoo.training.seg_augment import SegmentationPolicy  # noqa: E402
from zoo.training.segment import (  # noqa: E402
    dice_ce_loss,
    predict_labels,
    train_epoch,
    training_batches,
)
from zoo.training.train import pick_device  # noqa: E402

CASES = {  # file, preset architecture
    "2d": (KVASIR, "resnet18", {"widths": [16, 32, 64, 128]}),
    "3d": (HIPPOCAMPUS, "resnet10", {"widths": [8, 16, 32, 64]}),
}
AUGMENT = ["horizontal_flip", "vertical_flip", "small_rotation"]
LR = 1e-3


def network(file: str, arch: str, args: dict, size: list[int], channels: int,
            classes: int) -> Segmenter:
    torch.manual_seed(0)
    encoder = build_encoder(arch, len(size), channels, [28] * len(size), args)
    return segmenter_from_encoder(encoder, classes, size, [0.5], [0.5])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(model: Segmenter, images: torch.Tensor, masks: torch.Tensor, batch: int,
         policy: SegmentationPolicy | None, device: torch.device) -> Callable[[], None]:
    """One epoch of the real loop per call."""
    model = copy.deepcopy(model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10_000)
    loss_fn = dice_ce_loss()
    gen = torch.Generator().manual_seed(0)
    aug_gen = torch.Generator(device=device).manual_seed(0)
    reporter = StepReporter(lambda *_: None, 1)
    patch = list(images.shape[2:])
    count = [0]

    def on_step(loss: torch.Tensor) -> None:
        count[0] += 1
        reporter(count[0], 10_000, loss)

    def epoch() -> None:
        batches = training_batches(images, masks, batch, patch, policy, gen, aug_gen, device)
        train_epoch(model, batches, loss_fn, opt, sched, on_step)
        sync(device)

    return epoch


def bare(model: Segmenter, images: torch.Tensor, masks: torch.Tensor, batch: int,
         device: torch.device) -> Callable[[], None]:
    """The loop a user would write around the same network."""
    from monai.losses import DiceCELoss

    model = copy.deepcopy(model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    cuda = device.type == "cuda"

    def epoch() -> None:
        model.train()
        order = torch.randperm(len(images))
        for i in range(0, len(images) - batch + 1, batch):
            idx = order[i:i + batch]
            x = images[idx].to(device).float() / 255
            y = masks[idx].to(device).long()[:, None]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model.logits(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)

    return epoch


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batch_share(images: torch.Tensor, masks: torch.Tensor, batch: int,
                policy: SegmentationPolicy | None, device: torch.device) -> float:
    """Seconds per batch spent making batches alone (shuffle, crop, move, augment)."""
    gen = torch.Generator().manual_seed(1)
    aug_gen = torch.Generator(device=device).manual_seed(1)
    start = time.perf_counter()
    n = 0
    for _ in training_batches(images, masks, batch, list(images.shape[2:]), policy, gen,
                              aug_gen, device):
        n += 1
    sync(device)
    return (time.perf_counter() - start) / max(1, n)


def gpu_utilisation() -> str:
    try:
        return f"{torch.cuda.utilization()} %"
    except Exception as err:  # pynvml missing or no NVML: say so, do not fail the bench
        return f"n/a ({type(err).__name__})"


def compare(case: str, args: argparse.Namespace, device: torch.device) -> None:
    file, arch, arch_args = CASES[case]
    batch = args.batch_2d if case == "2d" else args.batch_3d
    data = load_seg(file, {"train": batch * args.steps, "val": 1, "test": 1})
    train = data.splits["train"]
    images, masks = train.images, train.masks
    if device.type == "cuda":  # as finetune_segmenter does: data kept on the GPU
        images, masks = images.to(device), masks.to(device)
    classes = len(data.info["mask_classes"])
    model = network(file, arch, arch_args, data.image_size, data.channels, classes)
    loops = {"ours": ours(model, images, masks, batch, None, device),
             "bare": bare(model, images, masks, batch, device)}
    if args.augment:
        policy = SegmentationPolicy.build(AUGMENT, data.channels)
        loops["ours+augment"] = ours(model, images, masks, batch, policy, device)
    for fn in loops.values():  # warm-up: allocator, kernels, autotuning
        fn()
    times: dict[str, list[float]] = {k: [] for k in loops}
    names = list(loops)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:  # interleaved, order alternating
            times[name].append(timed(loops[name]))
    seen = len(images) // batch * batch
    rate = {k: seen / statistics.median(v) for k, v in times.items()}
    unit = "images" if case == "2d" else "volumes"
    size = "x".join(map(str, data.image_size))
    print(f"{case}: {file}, {size}, {arch} {arch_args['widths']}, batch {batch}, "
          f"{args.steps} steps x {args.rounds} rounds, {device.type}, "
          f"{torch.get_num_threads()} threads")
    for name, value in rate.items():
        spread = ", ".join(f"{seen / t:.1f}" for t in times[name])
        print(f"  {name:13s} {value:7.2f} {unit}/s (rounds: {spread})")
    print(f"  ratio ours / bare: {rate['ours'] / rate['bare']:.3f}"
          + (f"; with augmentation {rate['ours+augment'] / rate['bare']:.3f}"
             if args.augment else ""))
    step = statistics.median(times["ours"]) / (seen // batch)
    prep = batch_share(images, masks, batch, None, device)
    print(f"  batch making: {prep * 1000:.1f} ms of a {step * 1000:.1f} ms step "
          f"({prep / step:.1%})" + (f"; GPU utilisation {gpu_utilisation()}"
                                     if device.type == "cuda" else ""))


def sliding_window(args: argparse.Namespace, device: torch.device) -> None:
    """One hippocampus test volume: whole at once, and in 32^3 windows (overlap 0.25)."""
    file, arch, arch_args = CASES["3d"]
    data = load_seg(file, {"train": 1, "val": 1, "test": 1})
    volume = data.splits["test"].images
    model = network(file, arch, arch_args, data.image_size, 1, 3).eval()
    for window in (data.image_size, [32, 32, 32]):
        def run(w: list[int] = window) -> None:
            predict_labels(model, volume, device, w, batch_size=4, overlap=0.25)
            sync(device)

        run()
        seconds = statistics.median(timed(run) for _ in range(args.rounds))
        how = "whole volume" if window == data.image_size else f"windows {window}"
        print(f"  predict one {'x'.join(map(str, data.image_size))} volume, {how}: "
              f"{seconds * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="batches per timed epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--batch-2d", type=int, default=16)
    ap.add_argument("--batch-3d", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=["2d", "3d"], choices=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    for case in args.cases:
        compare(case, args, device)
    print("sliding-window prediction (3d):")
    sliding_window(args, device)


if __name__ == "__main__":
    main()
