"""deepsea.allocator: glibc serves large buffers from its heap and keeps them when freed, on the main thread and on
others (checked with glibc's own accounting, in a fresh interpreter so the test process's allocator is left
alone)."""

import platform
import subprocess
import sys

import pytest

from deepsea.allocator import keep_freed_memory

PROBE = r"""
import ctypes, sys, threading
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
size = int(sys.argv[2]) << 20
seen = []

def probe():
    block = libc.malloc(size)
    seen.append(libc.mallinfo2().hblkhd >= size)  # bytes in mmap'ed blocks while the buffer lives: a mapping?
    libc.free(block)
    seen.append(libc.mallinfo2().fordblks >= size)  # free bytes in the heaps: kept once freed?

if sys.argv[3] == "main":
    probe()
else:  # a thread of its own, as XLA's (outside the main arena by default, whose heaps stop at 64 MiB)
    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
print(*seen)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("thread", ["main", "other"])
@pytest.mark.parametrize("mode, want", [("keep", "False True"), ("default", "True False")])
@pytest.mark.parametrize("mib", [40, 96])
def test_large_buffers_come_from_the_heap_and_stay_there(mode, want, mib, thread):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(mib), thread], capture_output=True, text=True, check=True
    )
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
