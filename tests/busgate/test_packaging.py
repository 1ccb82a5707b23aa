"""busgate installs under one import root, so runner authors' imports never collide."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("contracts", "bus", "edge", "adapters", "runners")
BARE_IMPORT = re.compile(rf"^\s*(from|import) ({'|'.join(FOLDERS)})(\.|\s)", re.MULTILINE)


def test_no_module_imports_a_folder_outside_the_busgate_root():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in (*FOLDERS, "busgate", "tests", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if BARE_IMPORT.search(path.read_text())
    ]
    assert offenders == []


def test_every_top_level_folder_is_reachable_under_busgate():
    for folder in FOLDERS:
        assert (ROOT / "busgate" / folder).resolve() == ROOT / folder


def test_the_wheel_holds_nothing_but_busgate(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = tmp_path.glob("busgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {
        "busgate",
        f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info",
    }
    for folder in FOLDERS:
        assert f"busgate/{folder}/__init__.py" in names
