"""ranface.runtime: glibc's allocator thresholds (issue 16, evaluation throughput)."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from ranface.errors import ConfigError
from ranface.runtime import _decide

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize("env,libc,want", [
    ({}, "glibc", "tune"),
    ({"RANFACE_ALLOCATOR": "tuned"}, "glibc", "tune"),
    ({"RANFACE_ALLOCATOR": " Tuned "}, "glibc", "tune"),
    ({"RANFACE_ALLOCATOR": "system"}, "glibc", "system: RANFACE_ALLOCATOR=system"),
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "glibc", "system: MALLOC_MMAP_THRESHOLD_ is set"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", "system: MALLOC_TRIM_THRESHOLD_ is set"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "glibc", "system: GLIBC_TUNABLES is set"),
    ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "glibc", "system: another allocator is preloaded"),
    ({}, "", "system: C library unknown is not glibc"),
    ({}, "musl", "system: C library musl is not glibc"),
])
def test_decision(env, libc, want):
    assert _decide(env, libc) == want


def test_bad_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="RANFACE_ALLOCATOR must be 'tuned' or 'system'"):
        _decide({"RANFACE_ALLOCATOR": "jemalloc"}, "glibc")


def test_bad_setting_from_the_cli_is_one_line_exit_2():
    env = dict(os.environ, RANFACE_ALLOCATOR="fast")
    proc = subprocess.run([sys.executable, "-m", "ranface", "synthesize", "--help"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0  # --help exits in the parser, before any work
    proc = subprocess.run([sys.executable, "-m", "ranface", "evaluate", "--list"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ranface: error: RANFACE_ALLOCATOR must be 'tuned' or 'system', got 'fast'"]


_PROBE = textwrap.dedent("""
    import numpy as np
    from ranface.runtime import tune_allocator, allocator_state
    state = tune_allocator()
    assert tune_allocator() == state == allocator_state()  # once per process
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    before = rss()
    a = np.ones(50_000_000 // 8)  # 50 MB, touched: above glibc's largest dynamic mmap threshold
    del a
    print(state, (rss() - before) / 1e6)
""")


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
@pytest.mark.parametrize("choice", ["tuned", "system"])
def test_freed_blocks_stay_in_the_heap_only_when_tuned(choice):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env["RANFACE_ALLOCATOR"] = choice
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    state, kept_mb = proc.stdout.split()[0], float(proc.stdout.split()[-1])
    if choice == "tuned":
        assert state == "tuned"
        assert kept_mb > 40  # freed, but kept for the next batch (no munmap, no page faults)
    else:
        assert state.startswith("system")
        assert kept_mb < 10  # glibc's default: the mmapped block went back to the kernel
