"""Images benchmark: resizing a 2-megapixel JPEG to 200 pixels wide through kiln, beside Pillow in-process.

The photo is generated (1600x1250: gradients, shapes and grain, JPEG quality 90). Each operation decodes it,
resizes it to 200x156 with Lanczos and encodes a JPEG at quality 85. Prints, in one run on one machine:

- direct: the same Pillow calls images_svc makes (``Image.open``, the JPEG draft decode at twice the output size,
  ``resize`` with Lanczos, ``save``), in this process: sequential, and on as many threads as kiln gets calls in
  flight;
- kiln: ``kiln.api.images.resize`` (gRPC to ``python -m images_svc``), sequential and with ``--inflight``
  ``resize_async`` calls at a time;
- the ratio of kiln's throughput to direct Pillow's for each.

``--no-draft`` measures both sides decoding the JPEG in full (the service with ``--no-jpeg-draft``).

Usage::

    .venv/bin/python bench/images_bench.py [--ops 100] [--rounds 6] [--inflight 4] [--no-draft]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import pathlib
import random
import sys
import tempfile
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

from kiln_platform import auth  # noqa: E402
from kiln.api import _rpc, images  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

SECRET = "bench-secret"
SOURCE_SIZE = (1600, 1250)
WIDTH = 200
QUALITY = 85


def photo() -> bytes:
    """A photo-like 2-megapixel JPEG: smooth gradients, soft shapes and sensor grain (compresses like a photo)."""
    w, h = SOURCE_SIZE
    base = Image.merge("RGB", [Image.linear_gradient("L").resize((w, h)),
                               Image.linear_gradient("L").rotate(90).resize((w, h)),
                               Image.radial_gradient("L").resize((w, h))])
    draw = ImageDraw.Draw(base)
    rng = random.Random(1)
    for _ in range(40):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(20, 200)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    base = base.filter(ImageFilter.GaussianBlur(6))
    grain = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(base, grain, 0.15)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def direct_once(data: bytes, draft: bool) -> bytes:
    """What images_svc does for this request, minus kiln: decode (drafted), resize, encode."""
    img = Image.open(io.BytesIO(data))
    out_h = SOURCE_SIZE[1] * WIDTH // SOURCE_SIZE[0]
    if draft:
        img.draft("RGB", (2 * WIDTH, 2 * out_h))
    img = img.resize((WIDTH, out_h), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def kiln_once(data: bytes) -> bytes:
    return images.resize(data, width=WIDTH, output_encoding=images.JPEG, quality=QUALITY)


def sequential(fn: Callable[[], bytes], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def threaded(fn: Callable[[], bytes], n: int, threads: int) -> float:
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        start = time.perf_counter()
        for future in [pool.submit(fn) for _ in range(n)]:
            future.result()
        return n / (time.perf_counter() - start)


def kiln_inflight(data: bytes, n: int, inflight: int) -> float:
    """``inflight`` resize_async calls outstanding at all times."""
    start = time.perf_counter()
    pending: list[images.RPC] = []
    for _ in range(n):
        if len(pending) == inflight:
            pending.pop(0).get_result()
        pending.append(images.resize_async(data, width=WIDTH, output_encoding=images.JPEG, quality=QUALITY))
    for rpc in pending:
        rpc.get_result()
    return n / (time.perf_counter() - start)


def check_same(data: bytes, draft: bool) -> None:
    """Both sides produce the same picture (so the comparison is of like with like)."""
    a = Image.open(io.BytesIO(direct_once(data, draft))).convert("RGB")
    b = Image.open(io.BytesIO(kiln_once(data))).convert("RGB")
    assert a.size == b.size, (a.size, b.size)
    diff = max(max(abs(p - q) for p, q in zip(a.getpixel((x, y)), b.getpixel((x, y))))
               for x in range(0, a.size[0], 7) for y in range(0, a.size[1], 7))
    assert diff <= 8, f"kiln's result differs from direct Pillow's by {diff}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=100, help="resizes per measurement")
    parser.add_argument("--inflight", type=int, default=4, help="kiln calls in flight / direct threads")
    parser.add_argument("--rounds", type=int, default=6,
                        help="interleaved rounds; the best of each is kept (other load only ever slows a round)")
    parser.add_argument("--no-draft", action="store_true", help="decode the JPEG in full on both sides")
    args = parser.parse_args()
    draft = not args.no_draft
    data = photo()
    sup = Supervisor(pathlib.Path(tempfile.mkdtemp(prefix="kiln-images-bench-")))
    results: dict[str, float] = {}
    try:
        ready = sup.run_dir / "images.addr"
        env = {**os.environ, "KILN_IMAGES_SERVICE_SECRET": SECRET}
        extra = [] if draft else ["--no-jpeg-draft"]
        svc = sup.start("images_svc", python_module("images_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                    str(ready), *extra), env=env, ready_file=ready)
        os.environ["KILN_IMAGES_ADDR"] = svc.address
        os.environ["KILN_APP_TOKEN"] = auth.mint_app_token(SECRET, "bench")
        _rpc.reset()
        check_same(data, draft)
        sequential(lambda: direct_once(data, draft), 20)
        sequential(lambda: kiln_once(data), 20)   # warm both paths
        measures: dict[str, Callable[[], float]] = {
            "direct": lambda: sequential(lambda: direct_once(data, draft), args.ops),
            "kiln": lambda: sequential(lambda: kiln_once(data), args.ops),
            "direct_threads": lambda: threaded(lambda: direct_once(data, draft), args.ops, args.inflight),
            "kiln_inflight": lambda: kiln_inflight(data, args.ops, args.inflight),
        }
        for _ in range(args.rounds):   # interleaved, so machine noise hits every side alike
            for name, measure in measures.items():
                results[name] = max(results.get(name, 0.0), measure())
    finally:
        sup.stop_all()
    print(f"Images benchmark ({os.cpu_count()} CPUs; {SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG of {len(data):,} bytes "
          f"-> {WIDTH} px wide JPEG q{QUALITY}; Lanczos; JPEG draft decode {'on' if draft else 'off'}; "
          f"{args.ops} resizes a measurement, best of {args.rounds})")
    rows = [("direct Pillow, sequential", "direct"), ("kiln images.resize, sequential", "kiln"),
            (f"direct Pillow, {args.inflight} threads", "direct_threads"),
            (f"kiln, {args.inflight} calls in flight", "kiln_inflight")]
    for label, key in rows:
        print(f"{label:<34} {results[key]:8.1f} resizes/s  ({1e3 / results[key]:6.2f} ms each)")
    sequential_ratio = results["kiln"] / results["direct"]
    inflight_ratio = results["kiln_inflight"] / results["direct_threads"]
    print(f"ratio kiln/direct, sequential:     {sequential_ratio:.0%}")
    print(f"ratio kiln/direct, {args.inflight} at a time:    {inflight_ratio:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
