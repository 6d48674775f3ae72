"""Steps 2 and 3 as a hostile user runs them (issue 12): each bad input or output location is one line naming the
file or flag and exit status 2, never a traceback; a killed write leaves the previous CSV, and a cut CSV is noticed.
"""
import gzip
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pandas as pd
import pytest

import combinelabels
import parselabelfile
from data.classes import CLASSES
from data.dataset import read_combined
from data.errors import InputError, LabelFileError
from data.files import is_temporary, read_table, rows_path, write_csv
from data.labels.combine import read_label_csv
from conftest import REAL_DATA as TXRV, ROOT, read_only
from data.labels.padchest import CSV_NAME, read_taxonomy

REAL_CSV = os.path.join(TXRV, CSV_NAME + ".gz")
REAL_TGZ = os.path.join(TXRV, "NLMCXR_reports.tgz")
PADCHEST_COLUMNS = ["ImageID", "StudyID", "PatientID", "Projection", "MethodLabel", "Labels"]


def padchest_csv(path, rows=None, encoding="utf-8"):
    rows = rows or [["a.png", "s1", "p1", "PA", "Physician", "['normal']"],
                    ["b.png", "s2", "p2", "AP", "RNN_model", "['cardiomegaly', 'pacemaker']"],
                    ["c.png", "s3", "p3", "L", "RNN_model", "['normal']"]]
    pd.DataFrame(rows, columns=PADCHEST_COLUMNS).to_csv(path, encoding=encoding)
    return path


def user_error(capsys, main, *args):
    """main(args) must exit 2 with one line on stderr: that line."""
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{main.__module__}.py: error: "), err
    return err


# ---- parselabelfile.py: output folder, taxonomy, inputs ----

def test_parse_out_a_file_under_a_file_or_read_only(tmp_path, capsys):
    csv = padchest_csv(tmp_path / "p.csv")
    a_file = tmp_path / "file"
    a_file.write_text("")
    err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", a_file)
    assert f"--out {a_file} is a file" in err
    err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", a_file / "sub")
    assert f"--out {a_file / 'sub'} cannot be created (a part of the path is a file)" in err
    with read_only(tmp_path / "ro") as ro:
        err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", ro)
        assert f"--out {ro} is not writable" in err
        assert os.listdir(ro) == []


def test_parse_inputs_missing_or_a_folder(tmp_path, capsys):
    csv = padchest_csv(tmp_path / "p.csv")
    for flag, path, says in (("--taxonomy", tmp_path / "nope.csv", "no such file or folder"),
                             ("--taxonomy", tmp_path, "is a folder, not a file"),
                             ("--padchest-csv", tmp_path, "is a folder, not a file"),
                             ("--openi-reports", tmp_path / "nope", "no such file or folder")):
        err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", tmp_path / "o", flag, path)
        assert f"{flag} {path}: {says}" in err
    assert not (tmp_path / "o").exists()  # checked before anything is made
    for taxonomy in (tmp_path / "nope.csv", tmp_path):
        with pytest.raises(LabelFileError, match=f"{taxonomy}: cannot read the PadChest taxonomy"):
            read_taxonomy(str(taxonomy))


def test_parse_unreadable_or_cut_report_archive(tmp_path, capsys):
    garbage = tmp_path / "r.tgz"
    garbage.write_bytes(b"not an archive\n" * 10)
    err = user_error(capsys, parselabelfile.main, "--openi-reports", garbage, "--out", tmp_path / "o")
    assert str(garbage) in err and "not a readable tar archive" in err
    cut = tmp_path / "cut.tgz"
    with open(REAL_TGZ, "rb") as f:
        cut.write_bytes(f.read(200_000))
    err = user_error(capsys, parselabelfile.main, "--openi-reports", cut, "--out", tmp_path / "o")
    assert str(cut) in err
    assert not (tmp_path / "o" / "openi_labels.csv").exists()


def real_reports_folder(folder, n=5):
    """n real reports from the package's NLMCXR_reports.tgz, as an ecgen-radiology folder."""
    folder.mkdir()
    with tarfile.open(REAL_TGZ) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                (folder / os.path.basename(member.name)).write_bytes(tar.extractfile(member).read())
                n -= 1
                if not n:
                    break
    return folder


def test_parse_one_unreadable_xml_in_a_folder_is_skipped_and_named(tmp_path, capsys):
    folder = real_reports_folder(tmp_path / "ecgen-radiology")
    os.symlink(tmp_path / "gone.xml", folder / "9999.xml")  # listed, but cannot be opened, even by root
    assert parselabelfile.main(["--openi-reports", str(folder), "--out", str(tmp_path / "o")]) == 0
    captured = capsys.readouterr()
    assert "9999.xml" in captured.out + captured.err
    assert len(pd.read_csv(tmp_path / "o" / "openi_labels.csv")) > 0


def test_parse_latin1_padchest_csv_is_read_and_said(tmp_path, capsys):
    csv = padchest_csv(tmp_path / "latin.csv", [["a.png", "s1", "p1", "PA", "Physician", "['señal', 'normal']"]],
                       encoding="latin-1")
    assert parselabelfile.main(["--padchest-csv", str(csv), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert f"{csv} is not UTF-8; read it as latin-1" in out and "'señal': 1" in out
    assert pd.read_csv(tmp_path / "o" / "padchest_labels.csv")["other findings"].tolist() == [1]
    with pytest.raises(LabelFileError, match=r"latin\.csv: not UTF-8 text .* save it as UTF-8"):
        read_table(str(csv), ["Labels"])


def test_parse_truncated_csv_gz(tmp_path, capsys):
    cut = tmp_path / "cut.csv.gz"
    with open(REAL_CSV, "rb") as f:
        cut.write_bytes(f.read(300_000))
    err = user_error(capsys, parselabelfile.main, "--padchest-csv", cut, "--out", tmp_path / "o")
    assert f"{cut}: cannot read as CSV (the compressed file is cut short)" in err


@pytest.mark.parametrize("cell", ["[" + "+".join(["'x'"] * 100_000) + "]",  # RecursionError in ast
                                  "[" + "-" * 100_000 + "1]",  # MemoryError: the parser's stack
                                  "[" * 300 + "]" * 300,  # too many nested parentheses
                                  "[['normal']]"])  # nested, but not a list of terms
def test_parse_deeply_nested_labels_cell(tmp_path, capsys, cell):
    csv = padchest_csv(tmp_path / "deep.csv", [["a.png", "s1", "p1", "PA", "Physician", "['normal']"],
                                               ["b.png", "s2", "p2", "PA", "Physician", cell]])
    err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", tmp_path / "o")
    assert f"{csv}, row 3: Labels is not a list" in err


def test_parse_views_that_match_nothing(tmp_path, capsys):
    csv = padchest_csv(tmp_path / "p.csv")
    with pytest.raises(SystemExit) as exit_:
        parselabelfile.main(["--padchest-csv", str(csv), "--out", str(tmp_path / "o"), "--views", "XX"])
    assert exit_.value.code == 2 and "--views: XX is not a PadChest projection" in capsys.readouterr().err
    err = user_error(capsys, parselabelfile.main, "--padchest-csv", csv, "--out", tmp_path / "o", "--views", "COSTAL")
    assert f"{csv}: no image has a Projection in --views COSTAL (its projections: PA, AP, L)" in err
    assert not (tmp_path / "o" / "padchest_labels.csv").exists()


# ---- atomic writes and cut files (issue 12 item 7) ----

@pytest.mark.slow
def test_sigterm_while_writing_leaves_the_previous_csv(tmp_path):
    """SIGTERM while parselabelfile.py writes the full PadChest labels: the previous padchest_labels.csv stays
    whole (before: cut at a row boundary), and no temporary file is left."""
    out = tmp_path / "labels"
    assert parselabelfile.main(["--padchest-csv", str(padchest_csv(tmp_path / "p.csv")), "--out", str(out)]) == 0
    target = out / "padchest_labels.csv"
    before = target.read_bytes(), (out / "padchest_labels.csv.rows").read_bytes()
    proc = subprocess.Popen([sys.executable, "parselabelfile.py", "--padchest-csv", REAL_CSV, "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        # writing has begun: its temporary file beside it (not the write check's probe before any work), or (an
        # in-place writer) the file itself has changed
        if any(n.startswith(target.name + ".") and is_temporary(n) for n in os.listdir(out)) or \
                target.stat().st_size != len(before[0]):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.002)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, f"the run was not stopped while writing ({proc.returncode}): " \
                                                    f"{err[-2000:]}"
    assert "Traceback" not in err and err.rstrip().splitlines()[-1] == (
        "parselabelfile.py: interrupted by SIGTERM; the CSV being written was left as it was before this run")
    assert (target.read_bytes(), (out / "padchest_labels.csv.rows").read_bytes()) == before
    assert not [n for n in os.listdir(out) if is_temporary(n)]


def sample_labels(tmp_path, n=30):
    """parselabelfile.py's output for n PadChest images, and a manifest listing them."""
    rows = [[f"i{k}.png", f"s{k}", f"p{k}", "PA", "Physician", "['cardiomegaly']" if k % 3 else "['normal']"]
            for k in range(n)]
    labels = tmp_path / "labels"
    assert parselabelfile.main(["--padchest-csv", str(padchest_csv(tmp_path / "p.csv", rows)),
                                "--out", str(labels)]) == 0
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"ImageID": [r[0] for r in rows], "path": [f"images/{r[0]}" for r in rows], "width": 64,
                  "height": 64, "status": "ok"}).to_csv(manifest, index=False)
    return labels, manifest


@pytest.mark.parametrize("cut", ["row boundary", "inside the last row"])
def test_combine_notices_a_cut_label_csv(tmp_path, capsys, cut):
    labels, manifest = sample_labels(tmp_path)
    path = labels / "padchest_labels.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:20]) if cut == "row boundary" else b"".join(lines)[:-3])
    err = user_error(capsys, combinelabels.main, "--labels", labels, "--manifest", manifest,
                     "--out", tmp_path / "c.csv")
    found = "19 data rows" if cut == "row boundary" else "30 data rows, the last one cut"
    assert f"{path}: {found}, but {path}.rows says 30: the file was cut short" in err
    assert not (tmp_path / "c.csv").exists()
    os.remove(rows_path(path))  # a CSV without its count (written by hand) reads unchecked
    if cut == "row boundary":
        assert combinelabels.main(["--labels", str(labels), "--manifest", str(manifest),
                                   "--out", str(tmp_path / "c.csv")]) == 0
        assert len(pd.read_csv(tmp_path / "c.csv")) == 19


def test_combined_csv_is_written_with_its_count_and_checked_when_read(tmp_path):
    labels, manifest = sample_labels(tmp_path)
    out = tmp_path / "c.csv"
    assert combinelabels.main(["--labels", str(labels), "--manifest", str(manifest), "--out", str(out)]) == 0
    assert rows_path(str(out)).endswith("c.csv.rows") and open(rows_path(str(out))).read().startswith("30 ")
    out.write_text("".join(out.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(InputError, match=r"c\.csv: 29 data rows, but .*c\.csv\.rows says 30"):
        read_combined(str(out), CLASSES)
    (tmp_path / "c.csv.rows").write_text("many\n")
    with pytest.raises(InputError, match=r"c\.csv\.rows: not a row count; delete it"):
        read_combined(str(out), CLASSES)


def test_write_csv_names_the_file_it_cannot_write(tmp_path):
    with read_only(tmp_path / "ro") as ro:
        with pytest.raises(InputError, match=rf"{ro}/x\.csv: cannot write"):
            write_csv(pd.DataFrame({"a": [1]}), str(ro / "x.csv"))


# ---- combinelabels.py: output file, empty join, fractions ----

def test_combine_out_a_folder_under_a_file_without_parent_or_read_only(tmp_path, capsys):
    labels, manifest = sample_labels(tmp_path)
    base = ["--labels", labels, "--manifest", manifest, "--out"]
    err = user_error(capsys, combinelabels.main, *base, tmp_path)
    assert f"--out {tmp_path}: is a folder" in err
    (tmp_path / "file").write_text("")
    err = user_error(capsys, combinelabels.main, *base, tmp_path / "file" / "c.csv")
    assert f"--out {tmp_path / 'file' / 'c.csv'}: its folder {tmp_path / 'file'} is a file" in err
    with read_only(tmp_path / "ro") as ro:
        err = user_error(capsys, combinelabels.main, *base, ro / "c.csv")
        assert f"--out {ro / 'c.csv'}: its folder {ro} is not writable" in err
    # a folder that does not exist yet is created
    assert combinelabels.main([str(a) for a in base] + [str(tmp_path / "new" / "deeper" / "c.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "new" / "deeper" / "c.csv")) == 30


def test_combine_that_matches_no_image(tmp_path, capsys):
    labels, _ = sample_labels(tmp_path)
    other = tmp_path / "other.csv"
    pd.DataFrame({"ImageID": ["CXR1_IM-0001-4001"], "path": ["images/x.png"], "width": 1, "height": 1}).to_csv(
        other, index=False)
    err = user_error(capsys, combinelabels.main, "--labels", labels, "--manifest", other, "--out", tmp_path / "c.csv")
    assert f"none of the 30 labelled images in {labels} is among the 1 images of {other}" in err
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("flags", [["--val-frac", "nan"], ["--test-frac", "inf"], ["--val-frac", "-0.1"],
                                   ["--val-frac", "0.5", "--test-frac", "0.5"]])
def test_combine_fractions_out_of_range(tmp_path, capsys, flags):
    labels, manifest = sample_labels(tmp_path)
    err = user_error(capsys, combinelabels.main, "--labels", labels, "--manifest", manifest,
                     "--out", tmp_path / "c.csv", *flags)
    assert "need 0 <= --val-frac, --test-frac and --val-frac + --test-frac < 1" in err
    assert not (tmp_path / "c.csv").exists()


# ---- a bad value in a class column (issue 12: wrong row, wrong value) ----

def combined_frame(n=6):
    return pd.DataFrame({"ImageID": [f"i{k}" for k in range(n)], "path": "x.png", "split": "train",
                         **{c: np.zeros(n, dtype=int) for c in CLASSES}}).astype({c: object for c in CLASSES})


# a blank is 'unknown' (a class the source never annotates) in a per-source label CSV and in combined.csv
@pytest.mark.parametrize("value, shown", [("yes", "'yes'"), ("2", "'2'"), ("1.5", "'1.5'"), ("NA", "'NA'"),
                                          (" ", "' '")])
def test_bad_class_value_names_file_row_and_value_as_written(tmp_path, value, shown):
    frame = combined_frame()
    frame.loc[3, "nodule"] = value
    frame.loc[4, "mass"] = "no"
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    where = f"{path}, row 5: nodule is {shown}, expected "
    rest = " (row 1 is the header: this is data row 4); 1 more bad values"
    if value != " ":  # step 4 reads a blank (or spaces) as unknown: tests/test_hostile_train.py
        with pytest.raises(InputError) as error:
            read_combined(str(path), CLASSES)
        assert str(error.value) == where + "1, 0, -1 or blank (unknown)" + rest
    # the step-3 reader of a per-source label CSV, which reads every ID as text and 'NA' as the text it is
    frame = frame.drop(columns=["path", "split"]).assign(PatientID="p", StudyID="s", Projection="PA",
                                                         Source="padchest")
    frame.to_csv(path, index=False)
    if value == " ":  # spaces are a blank (unknown) to it: the 'no' is the first bad value
        where, rest = f"{path}, row 6: mass is 'no', expected ", " (row 1 is the header: this is data row 5)"
    with pytest.raises(LabelFileError) as error:
        read_label_csv(str(path))
    assert str(error.value) == where + "1, 0, -1 or blank (unknown)" + rest


def test_per_source_label_csv_reads_a_blank_as_unknown(tmp_path):
    frame = combined_frame().drop(columns=["path", "split"]).assign(PatientID="p", StudyID="s", Projection="PA",
                                                                    Source="nih")
    frame.loc[:, "catheter"] = ""
    frame.loc[2, "nodule"] = -1
    frame.to_csv(tmp_path / "nih_labels.csv", index=False)
    read = read_label_csv(str(tmp_path / "nih_labels.csv"))
    assert read["catheter"].isna().all() and read["nodule"].tolist() == [0, 0, -1, 0, 0, 0]
    assert not read[[c for c in CLASSES if c != "catheter"]].isna().any().any()


def test_good_class_values_written_as_floats_still_read(tmp_path):
    frame = combined_frame()
    frame.loc[1, "nodule"] = -1.0
    frame.loc[2, "mass"] = "1.0"
    frame.to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "x.png").write_bytes(b"")  # only its presence is checked here
    assert read_combined(str(tmp_path / "c.csv"), CLASSES)["nodule"].tolist() == [0, -1, 0, 0, 0, 0]


def test_cut_gzip_label_csv_names_the_file(tmp_path):
    path = tmp_path / "labels.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("ImageID\n" + "".join(f"i{k}\n" for k in range(20000)))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(LabelFileError, match=r"labels\.csv\.gz: cannot read as CSV \(the compressed file is cut"):
        read_table(str(path), ["ImageID"])


def test_combine_warns_when_unlabeled_studies_would_become_all_negative(tmp_path, capsys):
    rows = [["a.png", "s1", "p1", "PA", "Physician", "['unchanged']"], ["b.png", "s2", "p2", "PA", "RNN_model",
                                                                        "['normal']"]]
    labels = tmp_path / "labels"
    assert parselabelfile.main(["--padchest-csv", str(padchest_csv(tmp_path / "p.csv", rows)), "--out", str(labels),
                                "--unlabeled", "keep-uncertain"]) == 0
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"ImageID": ["a.png", "b.png"], "path": ["a.png", "b.png"], "width": 1, "height": 1}).to_csv(
        manifest, index=False)
    capsys.readouterr()
    base = ["--labels", str(labels), "--manifest", str(manifest), "--out", str(tmp_path / "c.csv"), "--val-frac", "0",
            "--test-frac", "0"]
    assert combinelabels.main(base) == 0
    out = capsys.readouterr().out
    assert "warning: 1 images of studies without a usable label have every class -1; --uncertain zeros makes " \
           "them all 0" in out and "views: {'PA': 2}; PadChest images labelled by physicians: 1" in out
    assert combinelabels.main(base + ["--uncertain", "ignore"]) == 0
    assert "warning" not in capsys.readouterr().out
    assert (pd.read_csv(tmp_path / "c.csv").set_index("ImageID").loc["a.png", CLASSES] == -1).all()
