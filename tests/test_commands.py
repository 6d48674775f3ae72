"""Every command starts and ends alike (data.commands): a bad flag is one line and exit status 2, bad input one line
and 2, a bug its traceback, and a stop signal one line with 128 + its number: 143 for SIGTERM, 130 for Ctrl-C.

The signals reach real runs of the four steps while they work: each test waits for a sign of the work itself (a
file the run creates, an input it is blocked reading) and, where the work could end before the signal lands, holds
the process still (SIGSTOP) and checks that it is still at that work before it sends the signal.
"""
import contextlib
import errno
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, make_zips, with_amp, write_dataset
from data.classes import CLASSES
from data.commands import EXIT_BAD_INPUT, Parser, StopSignals, run_main, signal_status
from data.errors import EnvironmentFault, InputError
from data.files import is_temporary

SIGNALS = [(signal.SIGTERM, False), (signal.SIGINT, True)]
SIGNAL_IDS = ["SIGTERM to the command", "Ctrl-C to its process group"]


@contextlib.contextmanager
def signals_restored():
    """The stop signals' handlers as they were before the block: a stop leaves them ignored, as a process that ends."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def stop_at_work(command, working, signum, to_group, still_working=None, timeout=180):
    """Run `command`; once `working()` is true, send it `signum` (to its process group with to_group, as Ctrl-C does).
    With `still_working`, the process is held still (SIGSTOP) first and the test fails unless still_working() holds
    then, so that the signal is known to land in the middle of that work. Returns (exit status, stderr lines)."""
    with tempfile.TemporaryFile("w+") as err:  # a file: nothing blocks however much it writes
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline and not working():
                time.sleep(0.002)
            assert proc.poll() is None, f"it ended ({proc.returncode}) before the work began: {tail(err)}"
            if still_working is not None:
                os.kill(proc.pid, signal.SIGSTOP)
                assert still_working(), "the work ended before the signal could land in it"
            os.killpg(proc.pid, signum) if to_group else os.kill(proc.pid, signum)
            os.kill(proc.pid, signal.SIGCONT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        return code, tail(err).splitlines()


def tail(file):
    file.seek(0)
    return file.read()[-4000:]


# ---- run_main and StopSignals, in this process ----

def test_bad_input_and_the_machines_faults_are_one_line_and_exit_2(capsys):
    def fails(error):
        def flow(args):
            raise error
        return flow

    parse = Parser(prog="cmd").parse_args
    assert run_main("cmd", parse, fails(InputError("bad.csv, row 3:\n  'x' is not a number")), []) == 2
    assert capsys.readouterr().err == "cmd: error: bad.csv, row 3: 'x' is not a number\n"
    assert run_main("cmd", parse, fails(EnvironmentFault("cannot write out/a.png (No space left on device)")), [],
                    errors={EnvironmentFault: "; fix this and rerun"}) == 2
    assert capsys.readouterr().err == "cmd: error: cannot write out/a.png (No space left on device); fix this and rerun\n"
    assert run_main("cmd", parse, fails(ArithmeticError("loss is nan")), [],
                    errors={ArithmeticError: "; try a lower --lr"}) == 2
    assert capsys.readouterr().err == "cmd: error: loss is nan; try a lower --lr\n"
    with pytest.raises(OSError, match="a bug"):  # neither bad input nor the machine's: its traceback
        run_main("cmd", parse, fails(OSError(errno.EIO, "a bug")), [])
    assert capsys.readouterr().err == ""


def test_a_flow_returns_its_status_and_the_clean_up_runs_whatever_happens(capsys):
    done = []
    parser = Parser(prog="cmd")
    parser.add_argument("--n", type=int, required=True)
    cleanup = [lambda: done.append("logs"), lambda: done.append("ranks")]
    assert run_main("cmd", parser.parse_args, lambda args: None, ["--n", "1"], cleanup=cleanup) == 0
    assert run_main("cmd", parser.parse_args, lambda args: args.n, ["--n", "1"], cleanup=cleanup) == 1
    with pytest.raises(SystemExit) as exit_:
        run_main("cmd", parser.parse_args, lambda args: None, ["--n", "abc"], cleanup=cleanup)
    assert exit_.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "cmd: error: argument --n: invalid int value: 'abc' (see --help)\n"
    assert done == ["logs", "ranks"] * 3


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_flow_is_one_line_with_its_hint_and_128_plus_its_number(capsys, signum):
    def flow(args):
        os.kill(os.getpid(), signum)
        raise AssertionError("the signal should have stopped the flow")

    with signals_restored():
        status = run_main("cmd", Parser(prog="cmd").parse_args, flow, [],
                          interrupted=lambda args: "OUT was left as it was")
        assert signal.getsignal(signum) == signal.SIG_IGN  # the process is ending: a second signal cannot cut it
    assert status == signal_status(signum) == {signal.SIGTERM: 143, signal.SIGINT: 130}[signum]
    assert capsys.readouterr().err == f"cmd: interrupted by {signal.Signals(signum).name}; OUT was left as it was\n"


def test_an_object_the_signal_cut_off_in_its_init_adds_no_traceback_to_the_one_line():
    """A Ctrl-C inside tqdm's __init__ left a bar without `pos`, whose __del__ printed 'Exception ignored in ...'
    and a traceback after the line (seen in the test pass of step 4)."""
    code = ("import sys\nfrom data.commands import run_main\n"
            "class Bar:\n    def __init__(self):\n        raise KeyboardInterrupt\n"
            "    def __del__(self):\n        self.pos\n"
            "def flow(args):\n    Bar()\n"
            "sys.exit(run_main('cmd', lambda argv: argv, flow, []))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "cmd: interrupted by SIGINT\n")


def test_a_deferred_stop_is_recorded_and_agreed_on_over_the_ranks():
    with signals_restored():
        with StopSignals() as stop:
            assert not stop.agreed() and stop.agreed(total=lambda n: n + signal.SIGTERM)  # another rank's signal
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGINT)  # the first decides
            assert stop.requested == signal.SIGTERM and stop.name == "SIGTERM"
            assert stop.agreed() and stop.agreed(total=lambda n: n)


def test_a_stop_inside_a_nested_stopsignals_leaves_the_signals_ignored():
    """traintest.py's run() has its StopSignals inside run_main's: a stop at a step's end there must keep later
    signals ignored to the process's end, not give back the handlers of before."""
    with signals_restored():
        with StopSignals() as outer:
            with StopSignals() as inner, inner.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
            assert inner.requested == signal.SIGTERM and not outer.requested
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN == signal.getsignal(signal.SIGINT)


def test_a_helper_process_leaves_the_stop_signals_to_the_process_that_started_it():
    """SIGINT and another process's SIGTERM (a VM's shutdown signals every process) leave the helper running; the
    SIGTERM of the process that started it ends it."""
    helper = subprocess.Popen([sys.executable, "-c", "import sys; from data.commands import helper_process_signals; "
                               "helper_process_signals(); [print(line.strip(), flush=True) for line in sys.stdin]"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert answer(helper, "ready") == "ready"  # its set-up is done
        os.kill(helper.pid, signal.SIGINT)
        subprocess.run(["kill", "-TERM", str(helper.pid)], check=True)  # from another process
        deadline = time.monotonic() + 30
        while signal.SIGTERM in pending_signals(helper.pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # until the helper's signal thread has taken it
        assert signal.SIGTERM not in pending_signals(helper.pid) and answer(helper, "alive") == "alive"
        os.kill(helper.pid, signal.SIGTERM)
        assert helper.wait(timeout=30) == 0
    finally:
        helper.kill()
        helper.wait()


def answer(process, line):
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def pending_signals(pid):
    """The signals pending for a whole process (ShdPnd of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("ShdPnd:")).split()[1], 16)
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


# ---- bad flags: every command ----

# Each command's main() with a bad flag, in this process (a parse error happens before any work, and a fresh
# interpreter per command would spend its time importing torch).
COMMANDS = {
    "download_images.py": ("download_images", ["--source", "src", "--out", "out", "--size", "abc"]),
    "parselabelfile.py": ("parselabelfile", ["--out", "labels", "--no-such-flag"]),
    "combinelabels.py": ("combinelabels", ["--labels", "l", "--manifest", "m", "--out", "c.csv", "--val-frac",
                                           "a tenth"]),
    "traintest.py": ("traintest", ["--epochs", "0"]),
    "python -m data.labels.report_labeler": ("data.labels.report_labeler", ["--reports", "r.csv"]),
    "python -m data.labels.openi": ("data.labels.openi", ["--evaluate-labeler"]),
    "python -m sample_world": ("sample_world.world", ["--out", "w", "--seed", "one"]),
    "python -m sample_world.score": ("sample_world.score", ["run", "extra"]),
    "python -m utils.report": ("utils.report", ["run", "--no-such-flag"]),
    "python -m utils.compare": ("utils.compare", ["a", "b", "--bootstrap", "many"]),
    "python -m utils.view_classifier": ("utils.view_classifier", ["--csv", "c.csv", "--size", "abc"]),
}


@pytest.mark.parametrize("prog", COMMANDS)
def test_a_bad_flag_is_one_line_and_exit_2(capsys, prog):
    module, argv = COMMANDS[prog]
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(module).main(argv)
    out, err = capsys.readouterr()
    assert stopped.value.code == 2 and out == "", err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: ") and lines[0].endswith(" (see --help)"), lines


@pytest.mark.slow
def test_bad_input_of_a_python_m_command_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sample_world", "--out", str(tmp_path / "w"), "--prevalence", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "python -m sample_world: error: --prevalence must be above 0 and at most 1 (an abnormal study needs a "
        "finding), got 2.0"], proc.stderr


# ---- the four steps stopped at work ----

@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", SIGNALS, ids=SIGNAL_IDS)
def test_step1_stopped_between_archives(tmp_path, signum, to_group):
    src, out = tmp_path / "src", tmp_path / "out"
    make_zips(src, archives=4, per_archive=4)
    parts = out / ".parts"
    code, err = stop_at_work([sys.executable, "download_images.py", "--source", str(src), "--out", str(out),
                              "--size", "64", "--workers", "0", "--quiet"], lambda: parts.is_dir() and os.listdir(parts),
                             signum, to_group, still_working=lambda: len(os.listdir(parts)) < 4)
    assert code == signal_status(signum) and err == [
        f"download_images.py: interrupted by {signum.name}; finished archives are kept in {parts}; rerun the same "
        f"command to resume"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", SIGNALS, ids=SIGNAL_IDS)
def test_step2_stopped_while_it_waits_for_a_report(tmp_path, signum, to_group):
    """An OpenI folder whose report is a FIFO: step 2 waits in its read for as long as the writer holds it open."""
    reports, out = tmp_path / "ecgen-radiology", tmp_path / "labels"
    reports.mkdir()
    os.mkfifo(reports / "1.xml")
    writer = []

    def reading():  # a FIFO opens for writing (without blocking) only once a reader has it open
        try:
            writer.append(os.open(reports / "1.xml", os.O_WRONLY | os.O_NONBLOCK))
        except OSError as e:
            assert e.errno == errno.ENXIO, e
        return bool(writer)

    try:
        code, err = stop_at_work([sys.executable, "parselabelfile.py", "--openi-reports", str(reports), "--out",
                                  str(out)], reading, signum, to_group)
    finally:
        for fd in writer:
            os.close(fd)
    assert code == signal_status(signum) and err == [
        f"parselabelfile.py: interrupted by {signum.name}; the CSV being written was left as it was before this run"]
    assert os.listdir(out) == []


@pytest.fixture(scope="module")
def big_labels(tmp_path_factory):
    """Per-source labels and a manifest of 40,000 images: combined.csv takes step 3 a good part of a second to
    write."""
    root = tmp_path_factory.mktemp("big")
    n = 40_000
    rng = np.random.default_rng(0)
    ids = [f"i{i:05d}.png" for i in range(n)]
    labels = pd.DataFrame({"ImageID": ids, "PatientID": [f"p{i // 2}" for i in range(n)],
                           "StudyID": [f"s{i}" for i in range(n)], "Projection": "PA", "Source": "padchest",
                           "MethodLabel": "Physician",
                           **{c: (rng.random(n) < 0.1).astype(int) for c in CLASSES}})
    (root / "labels").mkdir()
    labels.to_csv(root / "labels" / "padchest_labels.csv", index=False)
    pd.DataFrame({"ImageID": ids, "path": [f"images/{i}" for i in ids], "width": 512, "height": 512}).to_csv(
        root / "manifest.csv", index=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", SIGNALS, ids=SIGNAL_IDS)
def test_step3_stopped_while_it_writes_combined_csv(tmp_path, big_labels, signum, to_group):
    out = tmp_path / "combined.csv"
    out.write_text("the previous combined.csv\n")

    def writing():  # combined.csv's own temporary file, not the write check's probe before it
        return any(f.startswith("combined.csv.") and is_temporary(f) for f in os.listdir(tmp_path))

    code, err = stop_at_work([sys.executable, "combinelabels.py", "--labels", str(big_labels / "labels"),
                              "--manifest", str(big_labels / "manifest.csv"), "--out", str(out)], writing, signum,
                             to_group, still_working=writing)
    assert code == signal_status(signum) and err == [
        f"combinelabels.py: interrupted by {signum.name}; {out} was left as it was before this run"]
    assert out.read_text() == "the previous combined.csv\n" and os.listdir(tmp_path) == ["combined.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", SIGNALS, ids=SIGNAL_IDS)
def test_step4_stopped_in_the_test_pass(tmp_path, signum, to_group):
    """Outside training (here the test pass, after the training's checkpoints) a signal ends the run at once."""
    csv = write_dataset(tmp_path / "data", n_train=4, n_val=2, n_test=600, size=32)
    run = tmp_path / "run"

    def testing():  # thresholds.csv is written just before the test pass, its log line just after it
        return (run / "thresholds.csv").exists()

    code, err = stop_at_work([sys.executable, "traintest.py", *with_amp([
        "--csv", csv, "--output-dir", run, "--model", "unified-alexnet", "--image-size", 32, "--epochs", 1,
        "--batch-size", 2, "--workers", 0, "--cache-dir", "off", "--bootstrap", 0, "--max-heatmaps", 0])],
        testing, signum, to_group, still_working=lambda: "test loss" not in (run / "train.log").read_text())
    assert code == signal_status(signum) and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("traintest.py: interrupted") and err[-1].endswith(
        f"the last checkpoint is kept: continue with python traintest.py --resume {run}"), err
    assert not (run / "metrics.csv").exists()
