"""Every bad value on the command line is one clear line on stderr and exit status 2, before any work.

``BAD_INPUTS`` is the table: each case is an argv (with ``{tmp}`` for the test's folder, ``{out}`` for a run folder
in it) or a ``setup(tmp_path) -> argv`` that prepares files first, and a regex that stderr must match (it names
the option or the path). For every case: exit status 2, no traceback, and nothing written anywhere (no checkpoint,
no metrics: the folder holds exactly what the setup left). ``before_work=True`` also asserts that the command
stopped before loading any data.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import fastflow
from fastflow import _backends
from fastflow.cli import PRESETS, build_parser, main
from fastflow.train.lock import RunLock
from tests.faults import overwrite_middle, overwrite_tensor_bytes, truncate

# A tiny training run: what a train case adds its bad value to.
TRAIN = ["train", "glow", "--hidden", "8", "--depth", "1", "--steps", "4", "--eval-every", "4", "--num-samples", "4",
         "--no-progress", "--out", "{out}"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
AS_ROOT = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                             reason="root writes to read-only folders")


@dataclass
class Case:
    argv: list[str] | None = None  # {tmp}: the test's folder, {out}: {tmp}/run (not created)
    stderr: str = ""  # a regex that stderr must match
    setup: Callable | None = None  # setup(tmp_path) -> argv, when files must exist first
    before_work: bool = False  # the command must stop before loading data
    marks: tuple = ()  # pytest marks, e.g. (NO_CUDA,)

    def prepare(self, tmp_path) -> list[str]:
        argv = self.setup(tmp_path) if self.setup else self.argv
        return [str(arg).format(tmp=tmp_path, out=tmp_path / "run") for arg in argv]


def _out_is_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    return [*TRAIN, "--out", str(tmp_path / "file")]


def _out_under_file(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    return [*TRAIN, "--out", str(tmp_path / "file" / "sub")]


def _out_not_writable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return [*TRAIN, "--out", str(folder)]


def _checkpoint_is_folder(tmp_path):
    (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)
    return TRAIN


def _out_holds_a_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint-00000010.pt").write_bytes(b"a run's checkpoint")
    return TRAIN


def _sample_out_is_folder(tmp_path):
    (tmp_path / "run").mkdir()
    return ["sample", str(tmp_path / "run"), "--out", str(tmp_path)]


# A trained run (flow, hidden 8, checkpoints at steps 2 and 4), made once and copied into each case that needs one.
RUN = ["train", "flow", "--hidden", "8", "--couplings", "2", "--steps", "4", "--eval-every", "2", "--batch-size",
       "16", "--num-samples", "4", "--no-progress"]
_TRAINED: list[Path] = []
_HELD: list[RunLock] = []  # locks a case holds while the command runs (released after it)


def _trained(tmp_path) -> Path:
    if not _TRAINED:
        folder = Path(tempfile.mkdtemp(prefix="fastflow-cli-run-")) / "run"
        assert main([*RUN, "--out", str(folder)]) == 0
        _TRAINED.append(folder)
    shutil.copytree(_TRAINED[0], tmp_path / "run")
    return tmp_path / "run"


def _damaged(command: str, damage: Callable, *extra: str, which: str = "checkpoint.pt"):
    def setup(tmp_path):
        run = _trained(tmp_path)
        damage(run / which)
        return [command, str(run), *extra]

    return setup


def _resume_damaged(tmp_path):
    run = _trained(tmp_path)
    for path in run.glob("checkpoint*.pt"):  # copytree made checkpoint.pt a file of its own, not a link
        truncate(path)
    return [*RUN, "--steps", "8", "--out", str(run), "--resume"]


def _resume_with(*flags: str, model: str = "flow"):
    def setup(tmp_path):
        run = _trained(tmp_path)
        argv = [*RUN, "--steps", "8", "--out", str(run), "--resume", *flags]
        argv[1] = model
        return argv

    return setup


def _second_writer(tmp_path):
    run = _trained(tmp_path)
    _HELD.append(RunLock(run).acquire())
    return [*RUN, "--steps", "8", "--out", str(run), "--resume"]


def _empty(path) -> None:
    open(path, "wb").close()


def _train(*extra: str, model: str | None = None) -> list[str]:
    argv = [*TRAIN, *extra]
    if model:
        argv[1] = model
    return argv


def _argument(flag: str, what: str = "") -> str:
    return rf"argument {flag}(/--\S+)?: {what}"


POSITIVE = "must be a positive integer"
NON_NEGATIVE = "must be an integer of 0 or more"
ABOVE_ZERO = "must be a finite number above 0"
FINITE_NON_NEGATIVE = "must be a finite number of 0 or more"

BAD_INPUTS: dict[str, Case] = {
    # train: numeric options, by the argparse validators
    "train --hidden 0": Case(_train("--hidden", "0"), _argument("--hidden", POSITIVE)),
    "train --hidden abc": Case(_train("--hidden", "abc"), _argument("--hidden", "expected an integer")),
    "train --depth 0": Case(_train("--depth", "0"), _argument("--depth", POSITIVE)),
    "train --scales 0": Case(_train("--scales", "0"), _argument("--scales", POSITIVE)),
    "train --levels -1": Case(_train("--levels", "-1"), _argument("--scales", POSITIVE)),
    "train realnvp --blocks 0": Case(_train("--blocks", "0", model="realnvp"), _argument("--blocks", POSITIVE)),
    "train nice --couplings 0": Case(_train("--couplings", "0", model="nice"), _argument("--couplings", POSITIVE)),
    "train nice --layers 0": Case(_train("--layers", "0", model="nice"), _argument("--layers", POSITIVE)),
    "train --batch-size 0": Case(_train("--batch-size", "0"), _argument("--batch-size", POSITIVE)),
    "train --steps 0": Case(_train("--steps", "0"), _argument("--steps", POSITIVE)),
    "train --epochs 0": Case(["train", "--epochs", "0"], _argument("--epochs", ABOVE_ZERO)),
    "train --lr 0": Case(_train("--lr", "0"), _argument("--lr", ABOVE_ZERO)),
    "train --lr nan": Case(_train("--lr", "nan"), _argument("--lr", ABOVE_ZERO)),
    "train --lr -1": Case(_train("--lr", "-1"), _argument("--lr", ABOVE_ZERO)),
    "train --lr inf": Case(_train("--lr", "inf"), _argument("--lr", ABOVE_ZERO)),
    "train --grad-clip 0": Case(_train("--grad-clip", "0"), _argument("--grad-clip", ABOVE_ZERO)),
    "train --keep 0": Case(_train("--keep", "0"), _argument("--keep", POSITIVE)),
    "train --warmup -1": Case(_train("--warmup", "-1"), _argument("--warmup", NON_NEGATIVE)),
    "train --seed -1": Case(_train("--seed", "-1"), _argument("--seed", NON_NEGATIVE)),
    "train --weight-decay -1": Case(_train("--weight-decay", "-1"), _argument("--weight-decay", FINITE_NON_NEGATIVE)),
    "train --weight-decay nan": Case(_train("--weight-decay", "nan"),
                                     _argument("--weight-decay", FINITE_NON_NEGATIVE)),
    "train --lr-decay linear": Case(_train("--lr-decay", "linear"), _argument("--lr-decay", "invalid choice")),
    "train --ema 1.5": Case(_train("--ema", "1.5"), _argument("--ema", "must be a number strictly between 0 and 1")),
    "train --ema 0": Case(_train("--ema", "0"), _argument("--ema", "must be a number strictly between 0 and 1")),
    "train --temperature nan": Case(_train("--temperature", "nan"), _argument("--temperature", FINITE_NON_NEGATIVE)),
    "train --temperature -1": Case(_train("--temperature", "-1"), _argument("--temperature", FINITE_NON_NEGATIVE)),
    "train --num-samples 0": Case(_train("--num-samples", "0"), _argument("--num-samples", POSITIVE)),
    "train --eval-every 0": Case(_train("--eval-every", "0"), _argument("--eval-every", POSITIVE)),
    "train --checkpoint-every 0": Case(_train("--checkpoint-every", "0"), _argument("--checkpoint-every", POSITIVE)),
    "train --log-every 0": Case(_train("--log-every", "0"), _argument("--log-every", POSITIVE)),
    "train --n-bits 0": Case(_train("--n-bits", "0"), _argument("--n-bits", r"must be an integer in 1\.\.8")),
    "train --n-bits 9": Case(_train("--n-bits", "9"), _argument("--n-bits", r"must be an integer in 1\.\.8")),
    "train --max-minutes 0": Case(_train("--max-minutes", "0"), _argument("--max-minutes", ABOVE_ZERO)),
    "train --coupling cubic": Case(_train("--coupling", "cubic"), _argument("--coupling", "invalid choice")),
    "train --device tpu": Case(_train("--device", "tpu"), _argument("--device", "invalid choice")),
    # train: values that need the model, the preset or the machine, checked before any data is loaded
    "train realnvp --depth 3": Case(_train("--depth", "3", model="realnvp"), r"realnvp.*takes no option depth",
                                    before_work=True),
    "train --preset for another model": Case(["train", "realnvp", "--preset", "glow-cifar10", "--out", "{out}"],
                                             r"--preset glow-cifar10 is for glow, not realnvp", before_work=True),
    "train --device cuda without CUDA": Case(_train("--device", "cuda"), r"--device cuda: .*no CUDA",
                                             before_work=True, marks=(NO_CUDA,)),
    "train --batch-size beyond the data": Case(_train("--batch-size", "5000"),
                                               r"--batch-size 5000 exceeds the 1500 training images"),
    "train --data of an unknown kind": Case(_train("--data", "nope:x"), r"unknown kind 'nope'"),
    # train: the run folder
    "train --out is a file": Case(setup=_out_is_file, stderr=r"--out \S*file is a file, not a folder",
                                  before_work=True),
    "train --out under a file": Case(setup=_out_under_file, stderr=r"--out \S*file/sub: .*file is a file",
                                     before_work=True),
    "train --out not writable": Case(setup=_out_not_writable, stderr=r"--out \S*locked: .*not writable",
                                     before_work=True, marks=(AS_ROOT,)),
    "train --out holds a checkpoint.pt folder": Case(setup=_checkpoint_is_folder,
                                                     stderr=r"checkpoint\.pt is a folder, not a file",
                                                     before_work=True),
    "train over a run without --resume": Case(setup=_out_holds_a_run, before_work=True,
                                              stderr=r"--out \S+ already holds a run's checkpoints.*--resume"),
    "train --resume --overwrite": Case(_train("--resume", "--overwrite"),
                                       _argument("--overwrite", "not allowed with argument --resume")),
    # eval
    "eval --batch-size 0": Case(["eval", "{out}", "--batch-size", "0"], _argument("--batch-size", POSITIVE)),
    "eval --device cuda without CUDA": Case(["eval", "{out}", "--device", "cuda"], r"--device cuda: .*no CUDA",
                                            before_work=True, marks=(NO_CUDA,)),
    "eval of a missing run": Case(["eval", "{tmp}/nothing"], r"nothing", before_work=True),
    # sample
    "sample --n 0": Case(["sample", "{out}", "--n", "0"], _argument("--n", POSITIVE)),
    "sample --n -3": Case(["sample", "{out}", "--n", "-3"], _argument("--n", POSITIVE)),
    "sample --temperature nan": Case(["sample", "{out}", "--temperature", "nan"],
                                     _argument("--temperature", FINITE_NON_NEGATIVE)),
    "sample --temperature -1": Case(["sample", "{out}", "--temperature", "-1"],
                                    _argument("--temperature", FINITE_NON_NEGATIVE)),
    "sample --scale 0": Case(["sample", "{out}", "--scale", "0"], _argument("--scale", POSITIVE)),
    "sample --seed -1": Case(["sample", "{out}", "--seed", "-1"], _argument("--seed", NON_NEGATIVE)),
    "sample --device cuda without CUDA": Case(["sample", "{out}", "--device", "cuda"], r"--device cuda: .*no CUDA",
                                              before_work=True, marks=(NO_CUDA,)),
    "sample --out is a folder": Case(setup=_sample_out_is_folder, stderr=r"--out \S+ is a folder", before_work=True),
    "sample --out not an image": Case(["sample", "{out}", "--out", "{tmp}/grid.txt"],
                                      r"--out \S*grid\.txt: give an image file name", before_work=True),
    "sample --out in a missing folder": Case(["sample", "{out}", "--out", "{tmp}/no/grid.png"],
                                             r"--out \S*grid\.png: its folder \S+ does not exist", before_work=True),
    "sample of a missing run": Case(["sample", "{tmp}/nothing", "--out", "{tmp}/grid.png"], r"nothing",
                                    before_work=True),
    # damaged checkpoints, a second writer, a conflicting --resume
    "sample of a checkpoint with bytes overwritten": Case(
        setup=_damaged("sample", overwrite_tensor_bytes, "--out", "{tmp}/grid.png"), before_work=True,
        stderr=r"checkpoint '\S+/checkpoint\.pt' is damaged: its contents do not match the checksum"),
    "eval of a checkpoint with bytes overwritten": Case(
        setup=_damaged("eval", overwrite_tensor_bytes), before_work=True,
        stderr=r"checkpoint '\S+/checkpoint\.pt' is damaged: its contents do not match the checksum"),
    "sample of a checkpoint with its zip damaged": Case(
        setup=_damaged("sample", overwrite_middle, "--out", "{tmp}/grid.png"), before_work=True,
        stderr=r"checkpoint '\S+/checkpoint\.pt' (is damaged|cannot be read)"),
    "sample of a truncated checkpoint": Case(
        setup=_damaged("sample", truncate, "--out", "{tmp}/grid.png"), before_work=True,
        stderr=r"checkpoint '\S+/checkpoint\.pt' cannot be read .*truncated"),
    "eval of a truncated checkpoint": Case(setup=_damaged("eval", truncate), before_work=True,
                                           stderr=r"checkpoint '\S+/checkpoint\.pt' cannot be read .*truncated"),
    "eval of an empty checkpoint": Case(setup=_damaged("eval", _empty), before_work=True,
                                        stderr=r"checkpoint '\S+/checkpoint\.pt' is empty"),
    "sample of one damaged checkpoint file": Case(
        setup=lambda tmp: _damaged("sample", truncate, "--out", str(tmp / "grid.png"),
                                   which="checkpoint-00000002.pt")(tmp)[:1]
        + [str(tmp / "run" / "checkpoint-00000002.pt"), "--out", str(tmp / "grid.png")],
        before_work=True, stderr=r"checkpoint-00000002\.pt' cannot be read"),
    "train --resume over only damaged checkpoints": Case(
        setup=_resume_damaged, before_work=True,
        stderr=r"--resume: no intact checkpoint in \S+ .*refusing to start afresh"),
    "train --resume with a conflicting --hidden": Case(
        setup=_resume_with("--hidden", "16"), before_work=True,
        stderr=r"--resume: --hidden 16 \(the checkpoint has 8\) conflicts with the run"),
    "train --resume as another model": Case(
        setup=_resume_with(model="glow"), before_work=True,
        stderr=r"--resume: the run in \S+ trains 'flow', not 'glow'"),
    "train while another run writes the folder": Case(
        setup=_second_writer, before_work=True,
        stderr=rf"run folder \S+ is in use by another fastflow run \(pid {os.getpid()} on host"),
}


def _params():
    return [pytest.param(case, id=name, marks=case.marks) for name, case in BAD_INPUTS.items()]


def run_cli(argv: list[str]) -> int:
    """``main(argv)``'s exit status, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _files(folder) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_one_clear_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a default run folder (runs/...) would land here too
    argv = case.prepare(tmp_path)
    if case.before_work:
        def no_data(*args, **kwargs):
            raise AssertionError("the command loaded data before refusing its arguments")

        monkeypatch.setattr(fastflow.data, "load", no_data)
    before = _files(tmp_path)
    try:
        code = run_cli(argv)
        after = _files(tmp_path)
    finally:
        while _HELD:
            _HELD.pop().release()
        for path in tmp_path.rglob("*"):  # let pytest clean up what a case made read-only
            if path.is_dir():
                path.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(case.stderr, err), err
    assert err.strip().splitlines()[-1].startswith(("fastflow: error:", "fastflow train: error:",
                                                    "fastflow sample: error:", "fastflow eval: error:"))
    assert after == before, "the command wrote files"


# --------------------------------------------------------------------------------------------------
# OSErrors reaching main: one line naming the path, in words.


@pytest.mark.parametrize(
    "error, expected",
    [
        pytest.param(PermissionError(errno.EACCES, "Permission denied", "/data/x"),
                     "fastflow: error: cannot read /data/x: permission denied", id="permission"),
        pytest.param(IsADirectoryError(errno.EISDIR, "Is a directory", "/data/x"),
                     "fastflow: error: cannot read /data/x: it is a folder, not a file", id="is-a-folder"),
        pytest.param(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/x/y"),
                     "fastflow: error: cannot read /data/x/y: a part of the path is a file, not a folder",
                     id="not-a-folder"),
        pytest.param(OSError(errno.ENOSPC, "No space left on device"),
                     "fastflow: error: cannot write: no space left on the device", id="disk-full"),
        pytest.param(FileNotFoundError("data set 'x' not found (tried a, b)"),
                     "fastflow: error: data set 'x' not found (tried a, b)", id="our-own-message"),
    ],
)
def test_os_errors_are_one_line_naming_the_path(error, expected, tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(fastflow.data, "load", fail)
    assert main([*TRAIN[:-1], str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == expected
    assert "Errno" not in err


def test_a_locked_run_folder_is_reported_as_the_lock_says(tmp_path, monkeypatch, capsys):
    from fastflow.train.lock import RunLockedError

    message = f"run folder {tmp_path} is in use by another fastflow run (pid 1 on host h, since ?)"

    def locked(*args, **kwargs):
        raise RunLockedError(message)

    monkeypatch.setattr("fastflow.train.train", locked)
    assert main([*TRAIN[:-1], str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"fastflow: error: {message}"


# --------------------------------------------------------------------------------------------------
# What users expect of the help, the presets and info.


def _parsers(parser: argparse.ArgumentParser, name: str = "fastflow"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, subparser in action.choices.items():
                yield from _parsers(subparser, f"{name} {command}")


def test_every_option_of_every_command_has_help():
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"options without help: {missing}"
    assert {name for name, _ in _parsers(build_parser())} >= {
        "fastflow train", "fastflow sample", "fastflow eval", "fastflow presets", "fastflow info"}


def test_help_reads_as_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "`" not in text
    assert "examples:" in text and "fastflow train" in text and "fastflow sample" in text
    description = text.split("\n\n")[1]
    assert description.rstrip().endswith("."), description  # a whole sentence, not one cut at a line's end
    for name, parser in _parsers(build_parser()):
        assert "`" not in parser.format_help(), name


def test_presets_lists_every_preset_and_what_it_sets(capsys):
    assert main(["presets"]) == 0
    table = capsys.readouterr().out
    assert main(["info", "--presets"]) == 0
    assert table in capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines() if line and line.split()[0] in PRESETS}
    assert set(rows) == set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset["model"] in rows[name]
        assert f"{preset['data']['name']} {'×'.join(map(str, preset['data']['shape']))}" in rows[name]
    assert "depth=32" in table and "hidden=512" in table and "warmup=5000" in table
    assert "MNIST 1×28×28" in rows["nice-mnist"] and "digits 1×8×8" in rows["glow-digits"]


def test_a_preset_on_data_of_another_shape_warns_and_trains(tmp_path, capsys):
    tiny = ["--hidden", "8", "--steps", "2", "--eval-every", "2", "--num-samples", "4", "--no-progress"]
    assert main(["train", "--preset", "nice-mnist", "--data", "digits", "--layers", "1", "--couplings", "2", *tiny,
                 "--out", str(tmp_path / "nice")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("fastflow: warning:")]
    assert len(warnings) == 1, err
    assert re.fullmatch(r"fastflow: warning: preset nice-mnist was made for MNIST 1×28×28; --data digits is 1×8×8 "
                        r"\(the model has [\d,]+ parameters\)", warnings[0]), warnings[0]
    assert (tmp_path / "nice" / "checkpoint.pt").is_file()

    assert main(["train", "--preset", "glow-digits", "--depth", "1", *tiny, "--out", str(tmp_path / "glow")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_info_without_cuda_says_a_gpu_is_needed(monkeypatch):
    info = {
        "reference": {"available": True, "reason": None, "ops": ["coupling"]},
        "triton": {"available": False, "reason": "no CUDA device is visible", "ops": []},
        "cuda": {"available": False, "reason": "has no coupling kernel", "ops": []},
        "cpu": {"available": True, "reason": None, "ops": ["coupling"]},
    }
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    table = _backends.format_backend_info(info)
    for backend in ("triton", "cuda"):
        row = next(line for line in table.splitlines() if line.split()[0] == backend)
        assert "needs a CUDA GPU; none on this machine" in row
        assert "kernel" not in row
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    table = _backends.format_backend_info(info)
    assert "has no coupling kernel" in table and "no CUDA device is visible" in table
    assert "needs a CUDA GPU" not in table
