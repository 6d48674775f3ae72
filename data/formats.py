"""What the files one step writes and a later one reads hold, defined once for the writer and the reader.

Plain names, no imports: the training loader needs the split names without what computes the split.
"""

# manifest.csv, step 1's list of the images it wrote (data/ingest), read by step 3 (data/labels/combine.py): each
# column, and whether step 3 needs it (the others say where an image came from and how it was decoded). view: the
# DICOM header's (data.views.header_view), '' for PNG and JPEG; the last column, so that readers of the earlier
# layout find every other column where it was.
_MANIFEST = [("ImageID", True), ("path", True), ("archive", False), ("member", False), ("width", True),
             ("height", True), ("bits", False), ("photometric", False), ("status", False), ("view", False)]
MANIFEST_COLUMNS = [column for column, _ in _MANIFEST]
MANIFEST_NEEDED = [column for column, needed in _MANIFEST if needed]

# combined.csv's split column (step 3 writes it, step 4 trains on train, chooses on val, reports on test).
SPLITS = ["train", "val", "test"]
