"""Step 1: turn PadChest zips and the OpenI DICOM archive into training-ready 8-bit PNGs.

    python download_images.py --source gs://BUCKET/PREFIX --out OUT [--size 512] [--workers N]
                              [--shard K/N] [--keep-archives] [--strict]

Writes OUT/images/<ImageID>.png, OUT/manifest.csv and OUT/errors.csv (see data/ingest/pipeline.py).
"""
import argparse
import os
import signal
import sys

from google.api_core.exceptions import GoogleAPIError

from data.errors import EnvironmentFault, InputError
from data.ingest.pipeline import ingest, summary_line

DESCRIPTION = """\
Ingest chest radiographs from archives into 8-bit grayscale PNGs.

SOURCE is gs://BUCKET[/PREFIX] or a local folder (or one archive file). Archives
(.zip, .tar, .tgz, .tar.gz) are streamed member by member, never unpacked to
disk; loose .png/.jpg/.dcm files count too. Output:
  OUT/images/<ImageID>.png   8-bit grayscale; longest side = --size, aspect ratio
                             kept (cv2 INTER_AREA); smaller images are never upscaled
  OUT/manifest.csv           ImageID, path, archive, member, width, height (original
                             size), bits, photometric, status; sorted by archive, member
  OUT/errors.csv             archive, member, reason for every member not ingested
ImageID: the PNG file name for PadChest; CXR + file stem for OpenI DICOMs
(1000_IM-0003-2001.dcm -> CXR1000_IM-0003-2001).
Intensity: 16-bit PNGs use a robust window from the 0.5th to the 99.5th percentile;
DICOMs get the modality LUT, the first VOI LUT or window, and MONOCHROME1 is
inverted so lungs are dark.

One image, one file, one row: when two members would write the same output file
(the same ImageID in two archives or twice in one zip; x.png beside x.jpg or
x.dcm; names that differ only in case), the first copy that decodes, in archive
order (archives sorted by name, members in the order the archive stores them),
keeps the file; every later copy is a row in errors.csv and is never written.

Resume: a rerun skips an archive whose marker in OUT/.parts matches it (size and
modification time locally, generation and CRC32C on GCS; for a folder of loose
files, every file's) and the settings (--size, decoder version). An archive
replaced under the same name, files added to a folder, or another --size: that
archive is ingested again and its rows are replaced. An unreadable marker is
named in a warning and its archive ingested again.

Bad input (a corrupt member or DICOM, a truncated archive, a FIFO among loose
files) is a row in errors.csv, final. A problem of the machine (permission
denied, a full disk, a failed download) stops the run with one line and exit
status 2, leaving that archive not done: fix it and rerun. Exit status: 0 done;
1 with --strict and rows in errors.csv; 2 bad flags, input or machine, or OUT in
use by another run (OUT/.lock); 130/143 interrupted by Ctrl-C/SIGTERM (rerun to
resume).
"""


class Interrupted(BaseException):
    """SIGTERM, raised in the main thread so that the run unwinds (workers ended, nothing half-written marked).
    Not an Exception, like KeyboardInterrupt: no handler of bad input may take it for a bad member."""


def _raise_interrupted(signum, frame):
    for s in (signal.SIGINT, signal.SIGTERM):  # the clean-up that follows runs once, not cut short by a second signal
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def parse_shard(text):
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N, got {text!r}") from None
    if not (n >= 1 and 0 <= k < n):
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def get_args(argv=None):
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                        "split the work without overlap (default: 0/1, everything)")
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
    return args


def main(argv=None):
    args = get_args(argv)
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = ingest(args.source, args.out, size=args.size, workers=args.workers, shard=args.shard,
                         keep_archives=args.keep_archives, download_dir=args.download_dir,
                         progress=not args.quiet)
    except EnvironmentFault as e:
        print(f"error: {e}; what it stopped is not marked done: fix this and rerun", file=sys.stderr)
        return 2
    except (InputError, OSError, GoogleAPIError) as e:  # bad input, a full or unwritable disk, bucket access
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.args[0] if isinstance(e, Interrupted) else signal.SIGINT
        print(f"interrupted by {signal.Signals(signum).name}: finished archives are kept in "
              f"{os.path.join(args.out, '.parts')}; rerun the same command to resume", file=sys.stderr)
        return 128 + signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print(summary_line(summary))
    if args.strict and summary["error_rows"]:
        print(f"error: --strict and {summary['error_rows']} rows in {os.path.join(args.out, 'errors.csv')}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    status = main()
    if status >= 128:
        # A GCS download still running in a thread must not hold the exit of an interrupted run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
