"""The C allocator of a CPU run (`train.cpu_allocator`): glibc's malloc, tcmalloc or jemalloc.

Why it matters: on CPU a training step allocates and frees thousands of activation and gradient
tensors of a few MiB or less, and glibc's malloc keeps much of that freed memory resident in a
fragmented heap. On SmolLM2-135M-Instruct (SFT, 3 steps, measured in docs/memory.md) a LoRA run
peaked at 2.13 GiB with glibc (at this toolkit's 4 MiB mmap threshold) and 1.18 GiB with tcmalloc,
at less CPU time (tcmalloc 101 s, glibc 126 s, most of glibc's extra in the kernel, mapping and
unmapping), with bitwise the same metrics. The allocator is chosen when the process starts, so
`align train` and `align profile-memory` start themselves again, once, with the library in
`LD_PRELOAD` (what `torch.backends.xeon.run_cpu --enable-tcmalloc` does), before torch is imported.

- `resolve(setting)`: (allocator name, library path or None): `auto` takes tcmalloc where its
  library is installed, else jemalloc, else glibc; on a machine with an NVIDIA driver `auto` is
  glibc (the GPU's memory is what counts there, and the CPU allocator stays what the user has). A
  named one that is not installed: a ConfigError line saying which package installs it.
- `restart_with(setting, argv)`: start this command again with the allocator preloaded, unless it
  is glibc, an allocator is preloaded already (the user's stands), or this process is the restart
  (a mark in the environment).
- `loaded()`: the allocator this process actually runs with, read from /proc/self/maps (runs
  record it in summary.json as `cpu_allocator`).

Only Linux: elsewhere every setting but `glibc` (the platform's own allocator) is a ConfigError
at `resolve`, and `auto` is the platform's allocator.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from align.config import ConfigError

LIBRARIES = {  # the shared objects Debian/Ubuntu, Fedora and conda install, in order of preference
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
PACKAGES = {"tcmalloc": "libtcmalloc-minimal4 (Debian/Ubuntu), gperftools-libs (Fedora) or conda's gperftools",
            "jemalloc": "libjemalloc2 (Debian/Ubuntu), jemalloc (Fedora, conda)"}
RESTART_MARK = "ALIGN_CPU_ALLOCATOR_RESTARTED"


def _library_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib", Path("/usr/local/lib"), Path("/usr/lib64"), Path("/usr/lib")]
    dirs += sorted(Path("/usr/lib").glob("*-linux-gnu"))  # multiarch: x86_64-linux-gnu, aarch64-linux-gnu
    return dirs


def find_library(name: str, dirs: list[Path] | None = None) -> str | None:
    """The path of allocator `name`'s shared library, or None where none is installed."""
    for directory in _library_dirs() if dirs is None else dirs:
        for filename in LIBRARIES[name]:
            if (directory / filename).is_file():
                return str(directory / filename)
    return None


def _nvidia_driver() -> bool:
    return Path("/dev/nvidiactl").exists()


def resolve(setting: str, dirs: list[Path] | None = None) -> tuple[str, str | None]:
    """(allocator, library path): see the module docstring."""
    if setting == "glibc":
        return "glibc", None
    if not sys.platform.startswith("linux"):
        if setting == "auto":
            return "glibc", None
        raise ConfigError(f"train.cpu_allocator: {setting} is preloaded on Linux only; use auto or glibc on {sys.platform}")
    dirs = _library_dirs() if dirs is None else dirs
    if setting == "auto":
        if _nvidia_driver():
            return "glibc", None
        for name in LIBRARIES:
            path = find_library(name, dirs)
            if path is not None:
                return name, path
        return "glibc", None
    path = find_library(setting, dirs)
    if path is None:
        raise ConfigError(f"train.cpu_allocator: {setting} is not installed here (none of {', '.join(LIBRARIES[setting])} "
                          f"in {', '.join(str(d) for d in dirs)}); install "
                          f"{PACKAGES[setting]}, or set train.cpu_allocator=auto")
    return setting, path


def loaded() -> str:
    """The allocator this process runs with: tcmalloc or jemalloc when one is mapped, else glibc."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    for name in LIBRARIES:
        if f"lib{name}" in maps:
            return name
    return "glibc"


def restart_env(path: str, env: dict[str, str]) -> dict[str, str]:
    """`env` with `path` first in LD_PRELOAD (anything preloaded already stays after it) and the
    restart mark set."""
    preload = " ".join(p for p in (path, env.get("LD_PRELOAD", "")) if p)
    return {**env, "LD_PRELOAD": preload, RESTART_MARK: "1"}


def restart_with(setting: str, argv: list[str]) -> None:
    """Replace this process by `python -m align.cli ARGV` with the chosen allocator preloaded (the
    same pid, environment and arguments), unless nothing needs to change. Returns only then."""
    name, path = resolve(setting)
    # Nothing to preload, the user preloaded an allocator already (theirs stands: two would
    # compete), or this is the restart.
    if path is None or loaded() != "glibc" or os.environ.get(RESTART_MARK):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "align.cli", *argv], restart_env(path, dict(os.environ)))
