"""Builds the C++ XLA FFI kernels in ``_kernels/`` with g++ on first use and registers them for CPU.

:func:`kernel_available` is what each kernel's module calls (once, cached there); a missing compiler
or a failed build warns and returns False, and the caller keeps its XLA path. Each library is cached under ``<tokjax cache>/kernels`` by a hash of its source, the flags, jax's
version and this CPU's model and flags, so a cache shared across machines never loads a
``-march=native`` library built for another instruction set. The kernels are register-blocked per
instruction set (AVX-512, AVX2) and are used only where the build reports one it was written and measured
for (:func:`tuned_build`): the AVX-512 blocking built for an AVX2 CPU ran 3-8x slower than XLA's code for
the same product, so a CPU with neither keeps the XLA path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax

KERNEL_DIR = Path(__file__).with_name("_kernels")
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w"]


FORCE = "force"  # the value of a kernel's switch that uses it even where its build is not tuned (tests)


def kernel_available(env_switch: str, source: str, targets: dict[str, str], what: str) -> bool:
    """Returns whether ``_kernels/<source>`` is built, tuned for this CPU and its {ffi target: symbol}
    registered on CPU.

    False, with a warning naming ``what`` (the fallback), when it cannot be built; False, silently, when
    ``$env_switch`` is "0" or the build is not tuned for this CPU (:func:`tuned_build`: neither AVX-512
    nor AVX2, where the portable code is slower than XLA), unless ``$env_switch`` is ``"force"``
    (correctness tests of the portable code)."""
    mode = os.environ.get(env_switch, "1")
    if mode == "0":
        return False
    try:
        lib = _load(source)
        if not _tuned(lib) and mode != FORCE:
            return False
        register_kernels(source, targets)
        return True
    except (OSError, subprocess.SubprocessError, AttributeError) as e:
        warnings.warn(f"tokjax CPU kernel {source} unavailable ({e}); {what}", stacklevel=3)
        return False


def tuned_build(source: str) -> bool:
    """Whether ``_kernels/<source>`` compiled here for an instruction set its register blocking is written
    for (AVX-512 or AVX2; the kernel's ``TokjaxTunedBuild``). Raises OSError when it cannot be built."""
    return _tuned(_load(source))


def register_kernels(source: str, targets: dict[str, str]) -> None:
    """Compiles ``_kernels/<source>`` (cached) and registers each {ffi target name: exported symbol} on CPU.

    Raises OSError when there is no compiler or the build fails, AttributeError for a missing symbol."""
    lib = _load(source)
    for target, symbol in targets.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")


def _load(source: str) -> ctypes.CDLL:
    return ctypes.cdll.LoadLibrary(str(_build(KERNEL_DIR / source)))


def _tuned(lib: ctypes.CDLL) -> bool:
    return bool(lib.TokjaxTunedBuild())


def _build(src: Path) -> Path:
    from tokjax._paths import cache_root

    include = jax.ffi.include_dir()
    sources = src.read_bytes() + b"".join(h.read_bytes() for h in sorted(KERNEL_DIR.glob("*.h")))  # shared headers
    key = hashlib.sha256(sources + " ".join(_FLAGS + [jax.__version__, _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_root() / "kernels" / f"{src.stem}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [os.environ.get("CXX", "g++"), *_FLAGS, f"-I{include}", str(src), "-o", str(tmp)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    except FileNotFoundError as e:
        raise OSError(f"no C++ compiler ({cmd[0]})") from e
    except subprocess.CalledProcessError as e:
        raise OSError(f"compiling {src.name} failed: {e.stderr.decode(errors='replace')[-500:]}") from e
    os.replace(tmp, target)  # atomic: concurrent builders leave one complete library
    return target


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        return hashlib.sha256("\n".join(l for l in text.splitlines()
                                        if l.startswith(("model name", "flags"))).encode()).hexdigest()
    except OSError:
        return sys.platform
