"""OpenI-style output: DICOMs (CR, MONOCHROME1, 12 bits stored, some JPEG 2000 lossless) in a tgz and the XML reports
ecgen-radiology/N.xml (FINDINGS / IMPRESSION text, MeSH, parentImage ids) in another tgz.

A report's second image is usually the lateral (ViewPosition LL, some LATERAL); as in the real archive, about a third
of the DICOMs have an empty ViewPosition, frontal and lateral alike. The header still knows the truth where nobody
reads it for the view: PatientOrientation is L\\F on a frontal and P\\F on a lateral (the image's rows run to the
patient's left, or to the back)."""

import gzip
import io
import os
import tarfile
from xml.sax.saxutils import escape

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (JPEG2000Lossless, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID,
                         ComputedRadiographyImageStorage, generate_uid)
from tqdm import tqdm

from sample_world.anatomy import draw_chest, to_12bit
from sample_world.findings import FINDINGS, sample_findings
from sample_world.lateral import draw_lateral

FIXED_MTIME = 1548979200  # tar member timestamps (2019-02-01), so the archives are byte-identical per seed


def report_texts(rng, findings):
    """COMPARISON, INDICATION, FINDINGS, IMPRESSION, MeSH major list, MeSH automatic list of one report.

    An abnormal report has the findings' sentences, opened and closed by the pertinent negatives a radiologist
    states: normal heart size, no pneumothorax / pleural effusion, no focal airspace disease, no bony abnormality."""
    pick = lambda options: str(rng.choice(options))  # noqa: E731
    comparison = pick(["None.", "None", "XXXX, XXXX", "PA and lateral chest radiographs XXXX",
                       "Chest radiographs XXXX."])
    indication = pick(["Chest pain", "XXXX-year-old male with shortness of breath.", "Cough.",
                       "Preoperative evaluation.",
                       "XXXX-year-old female, dyspnea.", "Positive TB test", "Fever and cough."])
    names = {f["name"] for f in findings}
    if not findings:
        text = " ".join([
            pick(["The heart is normal in size.", "Heart size is within normal limits.",
                  "The cardiomediastinal silhouette is within normal limits for size and contour."]),
            pick(["The mediastinum is unremarkable.", "Normal mediastinal contour."]),
            pick(["The lungs are clear.", "The lungs are clear bilaterally.",
                  "No focal consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax."]),
            pick(["No pneumothorax or pleural effusion.", "There is no pleural effusion or pneumothorax."]),
            pick(["No acute bony abnormality.", "The visualized osseous structures are unremarkable."]),
        ])
        impression = pick(["No acute cardiopulmonary abnormality.", "Normal chest x-XXXX.", "No active disease.",
                           "No acute cardiopulmonary process."])
        return comparison, indication, text, impression, ["normal"], []
    sentences, impressions, major, automatic = [], [], [], []
    for f in findings:
        s, imp, m, auto = FINDINGS[f["name"]].sentences(pick, f)
        sentences.append(s)
        impressions.append(imp)
        major.append(m)
        if auto not in automatic:
            automatic.append(auto)
    if not any(FINDINGS[n].cardiothoracic_ratio for n in names):  # no finding sets the heart size
        sentences.insert(0, pick(["Heart size is within normal limits.", "The heart is normal in size."]))
    absent = [n for n in ("pneumothorax", "pleural effusion") if n not in names]
    if len(absent) == 2:
        sentences.append(pick(["No pneumothorax or pleural effusion.",
                               "There is no pleural effusion or pneumothorax."]))
    elif absent:
        sentences.append(f"No {absent[0]}.")
    if not any(FINDINGS[n].airspace for n in names) and rng.random() < 0.5:
        sentences.append("No focal airspace disease.")
    sentences.append(pick(["No acute bony abnormality.", "Osseous structures are intact."]))
    if len(impressions) == 1:
        impression = impressions[0]
    else:
        impression = " ".join(f"{k}. {imp}" for k, imp in enumerate(impressions, 1))
    return comparison, indication, " ".join(sentences), impression, major, automatic


def report_xml(report_id, texts, image_ids):
    """The XML of one report, laid out (whitespace included) like the real ecgen-radiology files."""
    comparison, indication, findings, impression, major, automatic = texts
    mesh = "".join(f"\n   \n      <major>{escape(m)}</major>\n" for m in major)
    mesh += "".join(f"\n      <automatic>{escape(a)}</automatic>\n" for a in automatic)
    images = ""
    for k, image_id in enumerate(image_ids, 1):
        images += f"""
   <parentImage id="{image_id}">
      
      
      <figureId>F{k}</figureId>
      
      
      <caption>Xray Chest PA and Lateral</caption>
      
      
      <panel type="single">
         
         
         <url>/hadoop/storage/radiology/extract/{image_id}.jpg</url>
         
         
         <imgModality>7</imgModality>
      
      
      </panel>
   
   
   </parentImage>"""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
   <meta type="rr"/>
   <uId id="CXR{report_id}"/>
   <pmcId id="{report_id}"/>
   <docSource>CXR</docSource>
   <IUXRId id="{report_id}"/>
   <licenseType>open-access</licenseType>
   <licenseURL>http://creativecommons.org/licenses/by-nc-nd/4.0/</licenseURL>
   <ccLicense>byncnd</ccLicense>
   <articleURL/>
   <articleDate>2013-08-01</articleDate>
   <articleType>XR</articleType>
   <publisher>Indiana University</publisher>
   <title>Indiana University Chest X-ray Collection</title>
   <note>The data are drawn from multiple hospital systems.</note>
   <specialty>pulmonary diseases</specialty>
   <subset>CXR</subset>
   <MedlineCitation Owner="Indiana University" Status="supplied by publisher">
   
      <Article PubModel="Electronic">
      
         <Journal>
         
            <JournalIssue>
            
               <PubDate>
               
                  <Year>2013</Year>
               
                  <Month>08</Month>
               
                  <Day>01</Day>
            
               </PubDate>
         
            </JournalIssue>
      
         </Journal>
      
         <ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle>
      
         <Abstract>
         
            <AbstractText Label="COMPARISON">{escape(comparison)}</AbstractText>
         
            <AbstractText Label="INDICATION">{escape(indication)}</AbstractText>
         
            <AbstractText Label="FINDINGS">{escape(findings)}</AbstractText>
         
            <AbstractText Label="IMPRESSION">{escape(impression)}</AbstractText>
      
         </Abstract>
      
         <Affiliation>Indiana University</Affiliation>
      
         <Language>eng</Language>
      
         <PublicationTypeList>
         
            <PublicationType>Radiology Report</PublicationType>
      
         </PublicationTypeList>
   
      </Article>
   
      <EssieArticleTitle>Indiana University Chest X-ray Collection</EssieArticleTitle>

   </MedlineCitation>
   <MeSH>{mesh}
   </MeSH>{images}
</eCitation>"""


def dicom_bytes(img12, report_id, image_name, seed, compress, view_position="PA", lateral=False):
    """A CR DICOM file (MONOCHROME1: stored values inverted, air bright) of a 12-bit image; view_position may be ''."""
    stored = (4095 - img12.astype(np.int32)).astype(np.uint16)
    study_uid = generate_uid(entropy_srcs=[str(seed), "study", str(report_id)])
    series_uid = generate_uid(entropy_srcs=[str(seed), "series", image_name])
    sop_uid = generate_uid(entropy_srcs=[str(seed), "sop", image_name])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.ContentDate = "20110328"
    ds.StudyTime = ds.ContentTime = "090650"
    ds.AccessionNumber = str(report_id)
    ds.Modality = "CR"
    ds.Manufacturer = ""
    ds.PatientName = str(report_id)
    ds.PatientID = str(report_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view_position
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(report_id)
    ds.SeriesNumber = int(image_name.split("-")[1])
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["P" if lateral else "L", "F"]
    ds.PixelSpacing = [0.15, 0.15]
    ds.set_pixel_data(stored, "MONOCHROME1", 12, generate_instance_uid=False)
    lo, hi = int(np.percentile(stored, 1)), int(np.percentile(stored, 99))
    ds.WindowCenter = (lo + hi) // 2
    ds.WindowWidth = max(hi - lo, 1)
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if compress:
        ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _tar_add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _open_tgz(path):
    """A gzip'd tar with a fixed gzip timestamp (deterministic bytes)."""
    raw = open(path, "wb")
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    return raw, gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT)


def write_openi(out_dir, seed, n_reports, n_without_image, normal_fraction, prevalence, j2k_fraction,
                no_view_fraction=1 / 3, progress=True):
    """DICOM tgz + report tgz. Returns (box rows, counts: dicoms, jpeg2000, lateral, no_view). A report's second image
    is its lateral nine times in ten; laterals get no box rows (localization is scored on frontal views only)."""
    rng = np.random.default_rng([seed, 3])
    box_rows, n_dicoms, n_j2k, n_lateral, n_no_view = [], 0, 0, 0, 0
    without_image = set(int(i) for i in rng.choice(n_reports, min(n_without_image, n_reports), replace=False))
    dcm_raw, dcm_gz, dcm_tar = _open_tgz(os.path.join(out_dir, "images", "NLMCXR_dcm.tgz"))
    rep_raw, rep_gz, rep_tar = _open_tgz(os.path.join(out_dir, "labels", "NLMCXR_reports.tgz"))
    dir_info = tarfile.TarInfo("ecgen-radiology")
    dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, FIXED_MTIME
    rep_tar.addfile(dir_info)
    series = 2
    for k in tqdm(range(n_reports), desc="openi", unit="report", disable=not progress):
        report_id = 1000 + k
        findings = sample_findings(rng, normal_fraction, prevalence)
        n_images = 0 if k in without_image else int(rng.choice([1, 2], p=[0.4, 0.6]))
        series += int(rng.integers(1, 4))
        image_ids = []
        for j in range(n_images):
            name = f"{report_id}_IM-{series:04d}-{j + 1}001"
            irng = np.random.default_rng([seed, 4, report_id, j])
            h, w = int(irng.integers(380, 461)), int(irng.integers(360, 441))
            lateral = j == 1 and irng.random() < 0.9
            if lateral:
                density, boxes = draw_lateral(irng, h, w, findings), []
                view = "LL" if irng.random() < 0.85 else "LATERAL"
            else:
                density, boxes = draw_chest(irng, h, w, findings)
                view = "PA" if irng.random() < 0.9 else "AP"
            view = "" if irng.random() < no_view_fraction else view
            compress = irng.random() < j2k_fraction
            _tar_add(dcm_tar, name + ".dcm", dicom_bytes(to_12bit(irng, density), report_id, name, seed, compress,
                                                         view, lateral))
            n_dicoms += 1
            n_j2k += compress
            n_lateral += lateral
            n_no_view += view == ""
            image_ids.append("CXR" + name)
            box_rows += [("CXR" + name, fname, *box) for fname, box in boxes]
        xml = report_xml(report_id, report_texts(rng, findings), image_ids)
        _tar_add(rep_tar, f"ecgen-radiology/{report_id}.xml", xml.encode("utf-8"))
    for tar, gz, raw in ((dcm_tar, dcm_gz, dcm_raw), (rep_tar, rep_gz, rep_raw)):
        tar.close()
        gz.close()
        raw.close()
    return box_rows, {"dicoms": n_dicoms, "jpeg2000": int(n_j2k), "lateral": n_lateral, "no_view": n_no_view}
