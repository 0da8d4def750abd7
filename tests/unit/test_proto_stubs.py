"""The committed gRPC stubs are what `make proto` generates from the proto."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("netagent_pb2.py", "netagent_pb2.pyi", "netagent_pb2_grpc.py")


def test_generated_stubs_are_up_to_date(tmp_path):
    (tmp_path / "netagent/api").mkdir(parents=True)
    shutil.copy(REPO / "netagent/api/netagent.proto", tmp_path / "netagent/api/")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "netagent/api/netagent.proto"], cwd=tmp_path, check=True)
    stale = [name for name in GENERATED
             if (tmp_path / "netagent/api" / name).read_text() != (REPO / "netagent/api" / name).read_text()]
    assert not stale, f"stubs are stale, run `make proto`: {stale}"
