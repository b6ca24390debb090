"""The `qedu` command in-process: `qedu lessons` never loses a learner's work; errors are one line.

tests/test_installed.py runs the same command from an installed wheel."""
from __future__ import annotations

import json

import pytest

import qedu
from qedu import bundle, cli
from qedu.doctor import doctor_report, doctor_text, extras_status


def _lessons(tmp_path, *args):
    return cli.main(["lessons", str(tmp_path / "course"), *args])


def test_lessons_writes_lessons_and_exercises_but_solutions_only_when_asked(tmp_path, capsys):
    assert _lessons(tmp_path) == 0
    course = tmp_path / "course"
    assert sorted(p.name for p in (course / "lessons").iterdir()) == [p.name for p in bundle.notebooks("lessons")]
    assert sorted(p.name for p in (course / "exercises").iterdir()) == [p.name for p in bundle.notebooks("exercises")]
    assert not (course / "solutions").exists()
    assert "open it with" in capsys.readouterr().out
    assert _lessons(tmp_path, "--solutions") == 0
    assert len(list((course / "solutions").iterdir())) == len(bundle.notebooks("solutions"))
    manifest = json.loads((course / cli.MANIFEST).read_text())
    assert "solutions/00_welcome.ipynb" in manifest and "lessons/00_welcome.ipynb" in manifest


def test_a_second_run_changes_nothing(tmp_path):
    _lessons(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / "course").rglob("*.ipynb")}
    report = cli.copy_lessons(tmp_path / "course", out=lambda *_: None)
    assert not report["written"] and not report["updated"] and not report["kept"]
    assert {p: p.read_bytes() for p in (tmp_path / "course").rglob("*.ipynb")} == before


def test_a_notebook_the_learner_changed_is_kept_and_the_new_one_written_beside(tmp_path):
    _lessons(tmp_path)
    mine = tmp_path / "course" / "lessons" / "01_number_formats.ipynb"
    mine.write_text(mine.read_text().replace("Number formats", "My notes on number formats", 1))
    edited = mine.read_bytes()
    messages = []
    report = cli.copy_lessons(tmp_path / "course", out=messages.append)
    assert report["kept"] == ["lessons/01_number_formats.ipynb"]
    assert mine.read_bytes() == edited, "the learner's notebook was overwritten"
    beside = mine.with_name("01_number_formats.new.ipynb")
    assert beside.read_bytes() == (bundle.bundle_path("lessons") / mine.name).read_bytes()
    assert len(messages) == 1 and str(mine) in messages[0] and str(beside) in messages[0]
    # still the learner's on the next run too
    assert cli.copy_lessons(tmp_path / "course", out=messages.append)["kept"] == ["lessons/01_number_formats.ipynb"]
    assert mine.read_bytes() == edited


def test_an_untouched_notebook_from_an_older_qedu_is_updated(tmp_path):
    _lessons(tmp_path)
    course = tmp_path / "course"
    old = course / "lessons" / "02_uniform_quantization.ipynb"
    old.write_bytes(b'{"an": "older version"}')
    manifest = json.loads((course / cli.MANIFEST).read_text())
    manifest["lessons/02_uniform_quantization.ipynb"] = cli._sha256(old.read_bytes())  # what that qedu wrote
    (course / cli.MANIFEST).write_text(json.dumps(manifest))
    report = cli.copy_lessons(course, out=lambda *_: None)
    assert report["updated"] == ["lessons/02_uniform_quantization.ipynb"]
    assert old.read_bytes() == (bundle.bundle_path("lessons") / old.name).read_bytes()


def test_a_file_without_a_manifest_entry_is_the_learners(tmp_path):
    course = tmp_path / "course"
    (course / "lessons").mkdir(parents=True)
    theirs = course / "lessons" / "00_welcome.ipynb"
    theirs.write_text("{}")
    report = cli.copy_lessons(course, out=lambda *_: None)
    assert report["kept"] == ["lessons/00_welcome.ipynb"] and theirs.read_text() == "{}"


def test_a_corrupt_manifest_keeps_every_changed_file(tmp_path):
    _lessons(tmp_path)
    course = tmp_path / "course"
    (course / cli.MANIFEST).write_text("not json")
    mine = course / "exercises" / "00_welcome.ipynb"
    mine.write_text("{}")
    assert cli.copy_lessons(course, out=lambda *_: None)["kept"] == ["exercises/00_welcome.ipynb"]


def test_target_that_is_a_file_is_a_one_line_error_with_exit_code_2(tmp_path, capsys):
    target = tmp_path / "course"
    target.write_text("")
    assert cli.main(["lessons", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qedu lessons: error:") and str(target) in err[0]


@pytest.mark.parametrize("argv", [["frobnicate"], ["lessons", "--bogus"], ["lessons", "a", "b"], ["doctor", "x"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("qedu")


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"qedu {qedu.__version__}"
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "lessons" in out and "doctor" in out


def test_doctor_prints_environment_extras_and_paths(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.rstrip("\n") == doctor_text()
    report = doctor_report()
    assert report["environment"]["torch"] in out and "torch_threads" in out
    assert report["paths"]["lessons"] in out and "model cache" in out
    for extra, packages in extras_status().items():
        assert f"{extra:>14}: " in out
        for name in packages:
            assert name in out


def test_extras_come_from_qedu_metadata():
    extras = extras_status()
    assert {"test", "ref"} <= set(extras), "qedu's installed metadata is stale: reinstall (make test does)"
    assert "torchao" in extras["ref"] and "bitsandbytes" in extras["ref"]


def test_bundle_path_refuses_unknown_kinds():
    with pytest.raises(ValueError, match="kind"):
        bundle.bundle_path("lesson")
    with pytest.raises(ValueError, match="kind"):
        bundle.notebooks("results")
