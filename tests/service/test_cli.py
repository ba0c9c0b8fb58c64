"""The `terdguard` command line: parser, help, and settings errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from terdguard.service.cli import build_parser, main


def test_serve_defaults() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.role) == ("127.0.0.1", 8000, "guard")


def test_serve_rejects_unknown_role() -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "--role", "proxy"])
    assert exit_info.value.code == 2


def test_demo_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.url, args.model) == ("http://127.0.0.1:8000", "baddiffusion-sparse")


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert "serve" in output
    assert "demo" in output


def test_serve_reports_invalid_settings(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TERDGUARD_MODELS_ROOT": str(tmp_path / "absent")}
    result = subprocess.run([sys.executable, "-m", "terdguard.service", "serve", "--port", "1"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "models_root not found" in result.stderr
    assert "Traceback" not in result.stderr
