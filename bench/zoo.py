"""Benchmark the zoo.

(a) Download throughput of a ~200 MB model file from the zoo's REST route against nginx
    serving the very same file on loopback, in the same run, both fetched with curl
    (a C client, so the client is not the bottleneck). Target: zoo >= 0.5 of nginx.
    Needs nginx on PATH (Debian: apt-get install nginx-light); skipped with a note if absent.
(b) Embedding throughput of onnxruntime against PyTorch eager on the same encoder, the
    same batch of real PneumoniaMNIST images and the same thread count, at batch 64 and 1.
    Target: onnxruntime >= 1.3x eager at batch 64 on CPU.

    .venv/bin/python bench/zoo.py [--skip-download] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, free_port  # noqa: E402
from tests.utils import card, medmnist, repo, upload_files, weights  # noqa: E402
from zoo.architectures import build_encoder  # noqa: E402
from zoo.export import export_onnx, probe_input  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
BIG = {"name": "resnet18", "args": {"widths": [128, 256, 512, 1024]}}  # ~45 M params


def curl_rate(url: str, runs: int) -> list[float]:
    rates = []
    for _ in range(runs):
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w",
                              "%{http_code} %{speed_download}", url],
                             capture_output=True, text=True, check=True).stdout
        code, speed = out.split()
        if code != "200":
            raise RuntimeError(f"{url} answered {code}")
        rates.append(float(speed) / 1e6)
    return rates


def start_nginx(root: Path, port: int, workdir: Path) -> subprocess.Popen:
    conf = workdir / "nginx.conf"
    import getpass

    conf.write_text(f"""
user {getpass.getuser()};
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
daemon off;
events {{ worker_connections 64; }}
http {{
  access_log off;
  sendfile on;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)])
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def bench_download(runs: int) -> None:
    if shutil.which("nginx") is None:
        print("(a) download: skipped - nginx is not installed (apt-get install nginx-light)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        server = Server(tmp_path / "home", TASKALIGN_ADMIN_TOKENS=TOKEN,
                        TASKALIGN_MAX_UPLOAD_BYTES=str(1 << 30))
        try:
            c = card("resnet18-2d.bench-large", arch=BIG)
            t0 = time.perf_counter()
            r = httpx.post(f"{server.url}/v1/encoders", files=upload_files(c, weights(c)),
                           headers={"Authorization": f"Bearer {TOKEN}"}, timeout=900)
            r.raise_for_status()
            upload_s = time.perf_counter() - t0
            entry = r.json()["files"]["model.safetensors"]
            blob = server.home / "artifacts" / "blobs" / entry["sha256"][:2] / entry["sha256"]
            www = tmp_path / "www"
            www.mkdir()
            os.link(blob, www / "model.safetensors")
            nginx_port = free_port()
            nginx = start_nginx(www, nginx_port, tmp_path)
            try:
                zoo_url = (f"{server.url}/v1/encoders/{repo(c['name'])}/files/"
                           "model.safetensors")  # an admin's upload: taskalign/<name>
                ngx_url = f"http://127.0.0.1:{nginx_port}/model.safetensors"
                curl_rate(zoo_url, 1)
                curl_rate(ngx_url, 1)  # warm the page cache for both
                zoo_rates, ngx_rates = [], []
                for _ in range(runs):  # interleave so drift hits both alike
                    zoo_rates += curl_rate(zoo_url, 1)
                    ngx_rates += curl_rate(ngx_url, 1)
            finally:
                nginx.terminate()
                nginx.wait(timeout=10)
        finally:
            server.stop()
    z, n = statistics.median(zoo_rates), statistics.median(ngx_rates)
    print(f"(a) download of a {entry['size'] / 1e6:.0f} MB model.safetensors, curl, "
          f"median of {runs} (upload incl. ONNX export and parity took {upload_s:.0f} s):")
    print(f"    zoo   {z:8.0f} MB/s   runs {[round(x) for x in zoo_rates]}")
    print(f"    nginx {n:8.0f} MB/s   runs {[round(x) for x in ngx_rates]}")
    verdict = "met" if z / n >= 0.5 else "NOT met"
    print(f"    ratio zoo/nginx {z / n:.2f} (target >= 0.5: {verdict})")


def bench_embed(threads: int, seconds: float, reps: int) -> None:
    from zoo.export import onnx_session

    torch.set_num_threads(threads)
    c = card("resnet18-2d.bench-embed", arch={"name": "resnet18",
                                               "args": {"widths": [32, 64, 128, 256]}})
    model = build_encoder(c["architecture"]["name"], 2, 1, [28, 28],
                          c["architecture"]["args"]).eval()
    images, _ = medmnist("pneumoniamnist", split="test", n=624)
    data = ((images.astype(np.float32) / 255 - 0.5) / 0.5)[:, None]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, probe_input(1, [28, 28]), path)
        session = onnx_session(path, ["CPUExecutionProvider"])  # as the /embed route builds it
    name = session.get_inputs()[0].name
    print(f"(b) embed, resnet18 widths 32-256 (2.8 M params), real PneumoniaMNIST test images, "
          f"torch threads {threads}, onnxruntime defaults; median of {reps} interleaved "
          f"{seconds:g} s measurements:")
    for batch in (64, 1):
        batches = [data[i:i + batch] for i in range(0, len(data) - batch + 1, batch)]

        def rate(fn, batches: list[np.ndarray] = batches, size: int = batch) -> float:  # noqa: ANN001
            for b in batches[:3]:
                fn(b)
            n, t0, i = 0, time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                fn(batches[i % len(batches)])
                n += size
                i += 1
            return n / (time.perf_counter() - t0)

        def eager(b: np.ndarray) -> None:
            with torch.inference_mode():
                model(torch.from_numpy(b))

        def onnx(b: np.ndarray) -> None:
            session.run(None, {name: b})

        eagers, onnxs = [], []
        for _ in range(reps):  # interleaved, so that machine noise hits both alike
            eagers.append(rate(eager))
            onnxs.append(rate(onnx))
        e, o = statistics.median(eagers), statistics.median(onnxs)
        target = " (target >= 1.3: " + ("met)" if o / e >= 1.3 else "NOT met)") if batch == 64 \
            else ""
        print(f"    batch {batch:3d}: eager {e:8.0f} img/s, onnxruntime {o:8.0f} img/s, "
              f"ratio {o / e:.2f}{target}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-download", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps({"cpus": os.cpu_count(), "torch": torch.__version__}))
    bench_embed(args.threads, args.seconds, args.reps)
    if not args.skip_download:
        bench_download(args.runs)


if __name__ == "__main__":
    main()
