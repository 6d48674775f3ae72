"""Loose objects from a bucket prefix (NIH's layout: 112,120 small PNGs under png/), listed and fetched the old way
and the new way, side by side, against fake-gcs-server on this machine.

  listing  old: client.list_blobs with the full resource of every object (what ingest listed before)
           new: data.gcs.list_blobs, only the fields a download needs (name, size, crc32c, generation)
  fetching old: data.gcs.download_blob one object after another (what a unit of loose files did before)
           new: data.gcs.download_blobs, --threads objects at a time (what a batch of loose objects does now)

Prints objects/s for each and the ratio new / old, first against the emulator alone, then with a round trip added
to every request by a proxy (--latency-ms). The emulator answers in well under a millisecond and shares this
machine's cores with the client, so alone it measures the CPU cost per object; on GCS one request takes tens of
milliseconds, which the sequential fetch waits out object after object and the threads overlap.

    python -m benchmarks.bench_gcs_loose [--objects 3000] [--object-kb 64] [--threads 8,32] [--latency-ms 0,20]

(from the repository root, so that data/ imports as the scripts import it)
"""
import argparse
import io
import os
import shutil
import tempfile
import threading
import time

import numpy as np
from google.cloud.storage import transfer_manager

from data import gcs
from sample_world.fake_gcs import GcsProxy, free_port, start_fake_gcs


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure(client, bucket_name, count, threads, repeat, work):
    """Best seconds of each way over `repeat` rounds."""
    best = {}

    def keep(key, seconds):
        best[key] = min(best.get(key, float("inf")), seconds)

    for _ in range(repeat):
        full, seconds = timed(lambda: list(client.list_blobs(bucket_name, prefix="png/")))
        assert len(full) == count
        keep("list old", seconds)
        blobs, seconds = timed(lambda: gcs.list_blobs(client, f"gs://{bucket_name}/png"))
        assert len(blobs) == count
        keep("list new", seconds)
        pairs = [(blobs[n], os.path.join(work, n.replace("/", "_"))) for n in sorted(blobs)]
        for t in [1] + threads:
            if t == 1:  # the old way: the loop a unit of loose files ran before
                _, seconds = timed(lambda: [gcs.download_blob(b, d) for b, d in pairs])
            else:
                _, seconds = timed(lambda: gcs.download_blobs(pairs, t))
            assert len(os.listdir(work)) == count
            keep("fetch old" if t == 1 else f"fetch new {t}", seconds)
            shutil.rmtree(work)
    return best


def report(best, count, object_kb, threads, title):
    mb = count * object_kb / 1024
    print(title)

    def line(label, key):
        fetched = f" ({mb / best[key]:6.1f} MB/s)" if key.startswith("fetch") else ""
        print(f"  {label:<46}: {count / best[key]:7.0f} objects/s{fetched}")
    line("list, old: full resource of every object", "list old")
    line("list, new: name, size, crc32c, generation", "list new")
    line("fetch, old: one object after another", "fetch old")
    for t in threads:
        line(f"fetch, new: {t} threads", f"fetch new {t}")
    print(f"  ratio new / old, listing                      : {best['list old'] / best['list new']:.2f}")
    for t in threads:
        print(f"  ratio new / old, fetching with {t:>2} threads     : "
              f"{best['fetch old'] / best[f'fetch new {t}']:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=3000,
                   help="loose objects under the prefix (default: 3000, three pages of a listing)")
    p.add_argument("--object-kb", type=int, default=64, help="size of each object in KiB (default: 64)")
    p.add_argument("--threads", default="8,32", help="thread counts of the new fetch (default: 8,32)")
    p.add_argument("--latency-ms", default="0,20",
                   help="added per request by a proxy in front of the emulator, one measurement each; 0: the "
                        "emulator alone (default: 0,20)")
    p.add_argument("--repeat", type=int, default=2, help="rounds; the best of each figure is kept (default: 2)")
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]

    port = free_port()
    server = start_fake_gcs(port)
    work = tempfile.mkdtemp(prefix="bench_gcs_loose_")
    proxies = []
    try:
        os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
        client = gcs.make_client(max(threads))
        bucket = client.create_bucket("nih-bench")
        rng = np.random.default_rng(0)
        data = [rng.bytes(args.object_kb * 1024) for _ in range(16)]
        names = [f"png/{i // 3 + 1:08d}_{i % 3:03d}.png" for i in range(args.objects)]  # NIH's names
        _, seconds = timed(lambda: transfer_manager.upload_many(
            [(io.BytesIO(data[i % 16]), bucket.blob(n)) for i, n in enumerate(names)],
            max_workers=32, worker_type=transfer_manager.THREAD, raise_exception=True))
        print(f"{args.objects} objects of {args.object_kb} KiB in fake-gcs-server (uploaded in {seconds:.1f} s); "
              f"cores available: {len(os.sched_getaffinity(0))}")
        for latency in (float(x) for x in args.latency_ms.split(",")):
            if latency:
                proxy = GcsProxy(free_port(), port, delay_s=latency / 1000)
                threading.Thread(target=proxy.serve_forever, daemon=True).start()
                proxies.append(proxy)
                os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{proxy.server_address[1]}"
                title = f"with {latency:g} ms added to every request (a proxy; GCS's own round trip, roughly)"
            else:
                title = "against the emulator alone (sub-millisecond round trips: the CPU sets the pace)"
            best = measure(gcs.make_client(max(threads)), "nih-bench", args.objects, threads, args.repeat,
                           os.path.join(work, "fetched"))
            report(best, args.objects, args.object_kb, threads, title)
    finally:
        for proxy in proxies:
            proxy.shutdown()
            proxy.server_close()
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
