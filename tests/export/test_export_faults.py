"""`wf export` on a full disk and over an earlier export (issue 31, item 2): the new file is
written beside the target and renamed, so a failure prints one line and leaves the earlier
export whole; replacing one needs --overwrite."""

from __future__ import annotations

import errno
from pathlib import Path

import gguf
import pytest

import wrinklefree.export.hf as hf
from wrinklefree.cli import main

FULL = ("cannot write {out}: no space left on device; free disk space or write to another disk")


def wf_export_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("failure", [
    OSError("1048576 requested and 4096 written"),  # numpy's short write: no errno
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_full_disk_keeps_the_earlier_gguf_and_says_one_line(tiny_dir, tmp_path, capsys,
                                                               monkeypatch, failure):
    out = tmp_path / "model.gguf"
    main(["export", str(tiny_dir), str(out)])
    before = listing(tmp_path)

    def disk_full(self, *, progress=False):
        self.write_ti_data_to_file()
        self.fout[0].write(b"\0" * 4096)  # part of the tensor data, then the disk is full
        raise failure

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    err = wf_export_error(capsys, [str(tiny_dir), str(out), "--overwrite"])
    assert err == "wf export: error: " + FULL.format(out=out)
    assert listing(tmp_path) == before  # the earlier export whole, nothing staged beside it


def test_a_full_disk_keeps_the_earlier_hf_export(tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "hf"
    main(["export", str(tiny_dir), str(out), "--format", "hf"])
    before = listing(out)
    save_file = hf.save_file

    def disk_full(state, path, metadata=None):
        save_file(state, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf, "save_file", disk_full)
    err = wf_export_error(capsys, [str(tiny_dir), str(out), "--format", "hf", "--overwrite"])
    assert err == "wf export: error: " + FULL.format(out=out)
    assert listing(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no staged folder left


def test_an_existing_export_is_replaced_only_with_overwrite(tiny_dir, tmp_path, capsys):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"an earlier export")
    err = wf_export_error(capsys, [str(tiny_dir), str(out)])
    assert err == (f"wf export: error: {out} already exists; choose another output path, or "
                   "replace it with --overwrite (overwrite=True in Python; the old export stays "
                   "until the new one is complete)")
    assert out.read_bytes() == b"an earlier export"
    main(["export", str(tiny_dir), str(out), "--overwrite"])
    assert out.read_bytes()[:4] == b"GGUF"
    (tmp_path / "empty").mkdir()  # an empty folder is no earlier export
    main(["export", str(tiny_dir), str(tmp_path / "empty"), "--format", "hf"])
    assert (tmp_path / "empty" / "model.safetensors").is_file()
