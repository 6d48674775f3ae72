"""A small synthetic "world" shaped exactly like the real inputs, so every pipeline step runs on it unchanged.

    python -m data.sample_world --out WORLD [--seed 0] [--padchest-images 1200] [--openi-reports 150]

writes

    WORLD/images/0.zip, 1.zip, ...     PadChest-style zips of 16-bit grayscale PNGs
                                       (member name = ImageID, zip number = ImageDir)
    WORLD/images/NLMCXR_dcm.tgz        OpenI-style DICOMs 1000_IM-0003-2001.dcm
                                       (CR, MONOCHROME1, 12 bits stored, some JPEG 2000)
    WORLD/labels/PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv   PadChest label CSV with the real columns
    WORLD/labels/NLMCXR_reports.tgz    OpenI XML reports ecgen-radiology/N.xml
    WORLD/BBox_List_2017.csv           Image Index,Finding Label,x,y,w,h
                                       (one row per drawn finding per image, original pixels)

The images are drawn chest radiographs (lungs, heart, ribs, clavicles, spine, diaphragm) carrying visible,
localized signs of the DRAWN_FINDINGS. Everything is derived from the seed: the same seed gives byte-identical files.

Modules, each importing only the ones above it:
    geometry    array primitives (smoothing, polylines, splines, bounding boxes)
    findings    one spec per drawn finding: PadChest terms and parameters, localizations, Spanish and OpenI report
                text, and its drawing; DRAWN_FINDINGS is their registration order
    anatomy     the chest, draw_chest() composing it with the findings' signs, the 12-bit detector
    padchest    PadChest zips of PNGs and the label CSV
    openi       OpenI DICOM tgz and XML report tgz
    world       generate(), montage() and the command line
"""

from data.sample_world.anatomy import draw_chest
from data.sample_world.findings import DRAWN_FINDINGS, FINDINGS, PADCHEST_TERMS, sample_findings
from data.sample_world.padchest import PADCHEST_CSV, taxonomy_cuis
from data.sample_world.world import generate, main, montage

__all__ = ["DRAWN_FINDINGS", "FINDINGS", "PADCHEST_CSV", "PADCHEST_TERMS", "draw_chest", "generate", "main", "montage",
           "sample_findings", "taxonomy_cuis"]
