"""Step 1: turn PadChest zips, the OpenI DICOM archive and NIH's loose PNGs into training-ready 8-bit PNGs.

    python download_images.py --source gs://BUCKET/PREFIX --out OUT [--size 512] [--workers N]
                              [--shard K/N | --shard auto [--shard-count N]] [--billing-project PROJECT]
                              [--keep-archives] [--strict]

Writes OUT/images/<ImageID>.png, OUT/manifest.csv and OUT/errors.csv (see data/ingest/pipeline.py); OUT may be
gs://BUCKET/PREFIX (data/ingest/shards.py).
"""
import argparse
import os
import sys

from data.commands import EXIT_FAILED, SIGNALLED, Parser, run_main
from data.errors import EnvironmentFault
from data.gcs import FETCH_THREADS, BucketFolder, is_gcs_url
from data.ingest.pipeline import ingest, summary_line
from data.ingest.shards import GcsOut, check_gcs_out, default_work_dir, shard_from_environment, shard_out

PROG = "download_images.py"

DESCRIPTION = """\
Ingest chest radiographs from archives into 8-bit grayscale PNGs.

SOURCE is gs://BUCKET[/PREFIX] or a local folder (or one archive file). Archives
(.zip, .tar, .tgz, .tar.gz) are streamed member by member, never unpacked to
disk; loose .png/.jpg/.dcm files count too: a folder of them is one unit, or
batches of about 500 when it holds more (NIH's bucket prefix png/ holds 112,120),
listed once and fetched --fetch-threads at a time. Output:
  OUT/images/<ImageID>.png   8-bit grayscale; longest side = --size, aspect ratio
                             kept (cv2 INTER_AREA); smaller images are never upscaled
  OUT/manifest.csv           ImageID, path, archive, member, width, height (original
                             size), bits, photometric, status, view; sorted by archive,
                             member. view: the DICOM header's ViewPosition (else its
                             View Code Sequence, else a series/protocol description
                             naming one view); empty for PNG and JPEG
  OUT/errors.csv             archive, member, reason for every member not ingested
ImageID: the PNG file name as is (PadChest's ImageID, NIH's Image Index
00000001_000.png); CXR + file stem for OpenI DICOMs (1000_IM-0003-2001.dcm ->
CXR1000_IM-0003-2001); stem + .png for NIH-named DICOMs (Google's
dicom/00000001_000.dcm -> 00000001_000.png, as NIH's CSVs name it); else the stem.

Requester Pays buckets (gs://gcs-public-data--healthcare-nih-chest-xray) bill the
reader: --billing-project PROJECT names the project billed for every request.

Many machines: --shard auto takes the shard from Google Cloud Batch
(BATCH_TASK_INDEX, BATCH_TASK_COUNT) or a Kubernetes indexed Job
(JOB_COMPLETION_INDEX, with --shard-count N or SHARD_COUNT) and writes
OUT/shard-K. A gs:// OUT is built in --work-dir and uploaded unit by unit
(images, then the unit's marker); a rerun anywhere resumes from the bucket.
deploy/cloud-batch-ingest.json is such a job.

Intensity: 16-bit PNGs use a robust window from the 0.5th to the 99.5th percentile;
DICOMs get the modality LUT, the first VOI LUT or window, and MONOCHROME1 is
inverted so lungs are dark.

One image, one file, one row: when two members would write the same output file
(the same ImageID in two archives or twice in one zip; x.png beside x.jpg or
x.dcm; names that differ only in case), the first copy that decodes, in archive
order (archives sorted by name, members in the order the archive stores them),
keeps the file; every later copy is a row in errors.csv and is never written.

Resume: a rerun skips an archive whose marker in OUT/.parts matches it (size and
modification time locally, generation and CRC32C on GCS; for a folder or batch of
loose files, every file's) and the settings (--size, decoder version). An archive
replaced under the same name, files added to a folder, or another --size: that
archive (that batch: a file's batch is a hash of its name) is ingested again and
its rows are replaced. An unreadable marker is named in a warning and its archive
ingested again.

Bad input (a corrupt member or DICOM, a truncated archive, a FIFO among loose
files) is a row in errors.csv, final. A problem of the machine (permission
denied, a full disk, a failed download) stops the run with one line and exit
status 2, leaving that archive not done: fix it and rerun. Exit status: 0 done;
1 with --strict and rows in errors.csv; 2 bad flags, input or machine, or OUT in
use by another run (OUT/.lock); 130/143 interrupted by Ctrl-C/SIGTERM (rerun to
resume).
"""


def parse_shard(text):
    if text == "auto":
        return text
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N, got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def get_args(argv=None):
    p = Parser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="gs://BUCKET[/PREFIX], a local folder, or one archive file")
    p.add_argument("--out", required=True, help="output folder (images/, manifest.csv, errors.csv; .parts/ records finished "
                        "archives for resuming). One run at a time per folder: a second "
                        "run on the same OUT is refused (OUT/.lock)")
    p.add_argument("--size", type=int, default=512,
                   help="longest side of the written images in pixels, aspect ratio kept, never "
                        "upscaled; 0 keeps the original size (default: 512)")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding processes (default: number of CPU cores; 0 decodes in the main process)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1),
                   help="K/N: process only every N-th archive starting at K (0 <= K < N), so N machines "
                        "split the work without overlap (default: 0/1, everything); auto: K and N from Cloud "
                        "Batch (BATCH_TASK_INDEX, BATCH_TASK_COUNT) or a Kubernetes indexed Job "
                        "(JOB_COMPLETION_INDEX), written to OUT/shard-K")
    p.add_argument("--shard-count", type=int, default=None,
                   help="with --shard auto in a Kubernetes indexed Job: the number of shards (the Job's "
                        "completions; default: the SHARD_COUNT variable)")
    p.add_argument("--billing-project", default=None,
                   help="the Google Cloud project billed for reading a Requester Pays bucket (the storage "
                        "client's user_project), e.g. for gs://gcs-public-data--healthcare-nih-chest-xray")
    p.add_argument("--fetch-threads", type=int, default=FETCH_THREADS,
                   help=f"loose objects downloaded at a time from GCS (default: {FETCH_THREADS})")
    p.add_argument("--work-dir", default=None,
                   help="with a gs:// --out: the local folder the output is built in before upload "
                        "(default: ~/.cache/download_images/<the --out URL>)")
    p.add_argument("--download-dir", default=None,
                   help="where archives from GCS are stored while processed; at most two at a time "
                        "(default: OUT/.download)")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep downloaded archives instead of deleting each once all its members are "
                        "in manifest.csv or errors.csv")
    p.add_argument("--strict", action="store_true",
                   help="exit with status 1 when errors.csv has any row")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    if args.size < 0:
        p.error("--size must be >= 0 (0 keeps the original size)")
    if args.shard_count is not None and args.shard != "auto":
        p.error("--shard-count goes with --shard auto")
    if args.fetch_threads < 1:
        p.error("--fetch-threads must be >= 1")
    return args


def resolve_out(args):
    """(shard, where to build OUT locally, the publisher of a gs:// OUT or None)."""
    shard, out = args.shard, args.out
    if shard == "auto":
        k, n, where = shard_from_environment(os.environ, args.shard_count)
        shard, out = (k, n), shard_out(out, k)
        print(f"shard {k}/{n} from {where}: writing {out}", flush=True)
    if not is_gcs_url(out):
        return shard, out, None
    check_gcs_out(args.source, out)
    folder = BucketFolder(out, threads=args.fetch_threads)
    folder.check_writable()  # a missing role is one line now, not after the first unit
    return shard, args.work_dir or default_work_dir(out), GcsOut(folder)


def run(args):
    # from here OUT is the local folder it is built in, whose .parts an interrupted run's line names
    shard, args.out, publish = resolve_out(args)
    summary = ingest(args.source, args.out, size=args.size, workers=args.workers, shard=shard,
                     keep_archives=args.keep_archives, download_dir=args.download_dir, progress=not args.quiet,
                     billing_project=args.billing_project, fetch_threads=args.fetch_threads, publish=publish)
    print(summary_line(summary))
    if args.strict and summary["error_rows"]:
        print(f"{PROG}: error: --strict and {summary['error_rows']} rows in {os.path.join(args.out, 'errors.csv')}",
              file=sys.stderr)
        return EXIT_FAILED


def main(argv=None):
    return run_main(PROG, get_args, run, argv,
                    errors={EnvironmentFault: "; what it stopped is not marked done: fix this and rerun"},
                    interrupted=lambda args: f"finished archives are kept in {os.path.join(args.out, '.parts')}; "
                                             f"rerun the same command to resume")


if __name__ == "__main__":
    status = main()
    if status > SIGNALLED:
        # A GCS download still running in a thread must not hold the exit of an interrupted run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
