"""deepsea.allocator: glibc serves large buffers from its heap and keeps them when freed (checked with glibc's own
accounting, in a fresh interpreter so the test process's allocator is left alone)."""

import pathlib
import platform
import re
import subprocess
import sys

import pytest
from xla_flags import SUITE_XLA_FLAGS

from deepsea.allocator import keep_freed_memory

PROBE = r"""
import ctypes, sys
from deepsea.allocator import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory()
size = 64 << 20
block = libc.malloc(size)
mapped = libc.mallinfo2().hblkhd  # bytes in mmap'ed blocks while the buffer lives
libc.free(block)
print(mapped >= size, libc.mallinfo2().fordblks >= size)  # a mapping? kept in the heap once freed?
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("mode, want", [("keep", "False True"), ("default", "True False")])
def test_large_buffers_come_from_the_heap_and_stay_there(mode, want):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    assert out.stdout.split() == want.split()


def test_a_size_mallopt_cannot_take_is_refused():
    with pytest.raises(ValueError, match=r"max_bytes must be between 1 and 2\*\*31 - 1.*got 2147483648"):
        keep_freed_memory(2**31)


@pytest.mark.parametrize("switch, calls", [(None, 1), ("0", 0), ("1", 1)])
def test_the_command_line_keeps_freed_memory_unless_switched_off(monkeypatch, switch, calls):
    from deepsea import allocator, cli

    seen = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: seen.append(1) or True)
    if switch is None:
        monkeypatch.delenv("DEEPSEA_DEFAULT_MALLOC", raising=False)
    else:
        monkeypatch.setenv("DEEPSEA_DEFAULT_MALLOC", switch)
    cli._keep_freed_memory()
    assert len(seen) == calls


MAPPED = r"""
import ctypes, os, sys
os.environ["XLA_FLAGS"] = sys.argv[1]
from deepsea.allocator import keep_freed_memory
assert keep_freed_memory()
from deepsea.configs import apply_overrides, load_experiment
from deepsea.tools.bench import _OurStep

cfg = apply_overrides(load_experiment(sys.argv[2]), ["data.size=47", "model.width=0.5", "model.precision=float32"])
_OurStep(cfg, cfg.train.batch_size).time_steps(1)  # compiles, then runs four steps
ctypes.CDLL("libc.so.6").malloc_stats()  # glibc's totals on stderr, among them the largest mapped total so far
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_the_command_lines_xla_flags_keep_a_training_steps_temporaries_out_of_fresh_mappings():
    """XLA combines a step's temporaries into one allocation made on its own threads, whose glibc arenas map anything
    over 64 MiB afresh each time (zero-filled page by page inside the step): the command line's flags split it into
    blocks that the heap kept by keep_freed_memory serves again. convroll4 at 47x47, width 0.5, float32: more than
    64 MiB of them. Both processes compile with the suite's flags, quicker to compile (the buffers are XLA's buffer
    assignment, made before code generation), and run side by side."""
    from deepsea.cli import CPU_XLA_FLAGS

    experiment = pathlib.Path(__file__).parents[1] / "experiments" / "convroll4.py"
    runs = {
        flags: subprocess.Popen(
            [sys.executable, "-c", MAPPED, f"{SUITE_XLA_FLAGS} {flags}", str(experiment)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags in ("", CPU_XLA_FLAGS)
    }

    def most_mapped(proc: subprocess.Popen) -> int:
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 0, err[-3000:]
        return int(re.search(r"max mmap bytes\s*=\s*(\d+)", err).group(1))

    one_block, split = (most_mapped(p) for p in runs.values())
    assert one_block > 64 << 20  # the combined buffer, mapped
    assert split < 16 << 20  # no step buffer mapped: all from the heaps
