"""A user's script that reads a dataset's index exits 0. It aborted after its last line (status 134, "terminate
called without an active exception") when pyarrow read through a Python file object: Arrow's wrapper takes the
GIL in its destructor, and an Arrow I/O thread dropping it during interpreter teardown is ended by CPython with
pthread_exit inside a noexcept destructor. The abort depends on thread timing (about 1 run in 4 with torch
imported on a loaded 2-core machine), so the end-to-end check runs the script a few times and a direct check
pins the cause: pyarrow gets Arrow's own files."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa

from icpc import storage
from tests.readers import index_rows, manifest

READ_INDEX = ("import torch\n"  # torch imported first, as in a training script, makes the abort likelier
              "from icpc.dataset import open_dataset\n"
              "d = open_dataset({data!r})\n"
              "print(d.read_index(columns=['key']).num_rows, len(d.table('train')))\n")


def test_a_script_that_reads_the_index_exits_zero(compressed):
    rows = index_rows(compressed)
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", READ_INDEX.format(data=str(compressed))], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "terminate called" not in proc.stderr, (proc.returncode, proc.stderr)
        assert proc.stdout.split() == [str(len(rows)), str(sum(r["split"] == "train" for r in rows))]


def test_pyarrow_is_handed_arrow_files_never_python_file_objects(compressed):
    index = str(compressed / manifest(compressed)["index"])
    with storage.arrow_file(index) as f:
        assert isinstance(f, pa.NativeFile) and not isinstance(f, pa.PythonFile)
    with storage.arrow_file("file://" + index) as f:
        assert isinstance(f, pa.OSFile)
