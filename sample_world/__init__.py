"""A small synthetic "world" shaped exactly like the real inputs, so every pipeline step runs on it unchanged.

    python -m sample_world --out WORLD [--seed 0] [--padchest-images 1200] [--openi-reports 150]
                                [--lateral-fraction 0.25] [--nih-images 300]

writes

    WORLD/images/0.zip, 1.zip, ...     PadChest-style zips of 16-bit grayscale PNGs
                                       (member name = ImageID, zip number = ImageDir; a quarter are laterals)
    WORLD/images/NLMCXR_dcm.tgz        OpenI-style DICOMs 1000_IM-0003-2001.dcm (CR, MONOCHROME1, 12 bits stored,
                                       some JPEG 2000; a report's second image is mostly its lateral, ViewPosition
                                       LL or LATERAL; a third have an empty ViewPosition)
    WORLD/labels/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   PadChest label CSV with the real columns
    WORLD/labels/NLMCXR_reports.tgz    OpenI XML reports ecgen-radiology/N.xml
    WORLD/BBox_List_2017.csv           Image Index,Finding Label,x,y,w,h
                                       (PadChest and OpenI: one row per drawn sign on a frontal image, original pixels)
    WORLD/nih/png/00000001_000.png ... NIH-style loose 8-bit 1024x1024 PNGs (as under the bucket's png/ prefix)
    WORLD/nih/Data_Entry_2017_v2020.csv, WORLD/nih/BBox_List_2017.csv, WORLD/nih/test_list.txt,
    WORLD/nih/train_val_list.txt       NIH's label CSV, box list (its real odd header) and split lists

The images are drawn chest radiographs (lungs, heart, ribs, clavicles, spine, diaphragm; laterals: one body profile,
spine at the back, heart in front) carrying visible signs of the drawn findings, localized on the frontal views.
Everything is derived from the seed: the same seed gives byte-identical files.

Modules, each importing only the ones above it:
    geometry    array primitives (smoothing, polylines, splines, bounding boxes)
    findings    one spec per drawn finding: PadChest terms and parameters, localizations, Spanish and OpenI report
                text, NIH names, and its frontal and lateral drawing; DRAWN_FINDINGS is their registration order,
                NIH_FINDINGS the ones NIH images draw (with the NIH-only infiltration and pneumonia)
    anatomy     the chest, draw_chest() composing it with the findings' signs, develop(), the 12-bit detector
    lateral     the lateral view: draw_lateral()
    padchest    PadChest zips of PNGs and the label CSV
    openi       OpenI DICOM tgz and XML report tgz
    nih         NIH loose PNGs, Data_Entry, box list and split lists
    world       generate(), montage() and the command line
    score       a traintest.py run's AUROC and localization on the drawn findings (python -m sample_world.score)
    fake_gcs    fake-gcs-server and a proxy in front of it, for the tests and benchmarks (GCS on this machine)
"""

from sample_world.anatomy import draw_chest
from sample_world.findings import DRAWN_FINDINGS, FINDINGS, NIH_FINDINGS, PADCHEST_TERMS, SPECS, sample_findings
from sample_world.lateral import draw_lateral
from sample_world.padchest import PADCHEST_CSV, taxonomy_cuis
from sample_world.world import generate, main, montage

__all__ = ["DRAWN_FINDINGS", "FINDINGS", "NIH_FINDINGS", "PADCHEST_CSV", "PADCHEST_TERMS", "SPECS", "draw_chest",
           "draw_lateral", "generate", "main", "montage", "sample_findings", "taxonomy_cuis"]
