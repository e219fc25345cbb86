"""
What the CPU computes natively, read from the kernel's /proc/cpuinfo flags. No ROS.

bfloat16 is fast only where the CPU has bfloat16 arithmetic: Intel AMX (``amx_bf16``) or
AVX-512 BF16 (``avx512_bf16``, also on AMD Zen 4). Elsewhere it is emulated and slower than
float32, so any other CPU, and any system without /proc/cpuinfo, counts as having none.
"""

from dataclasses import dataclass
import functools
from pathlib import Path
import platform

CPUINFO = Path('/proc/cpuinfo')
# Either flag means bfloat16 matrix arithmetic in hardware.
NATIVE_BFLOAT16_FLAGS = ('amx_bf16', 'avx512_bf16')
# Flags worth naming in logs and diagnostics (the ones that decide the precision).
REPORTED_FLAGS = ('amx_bf16', 'amx_tile', 'avx512_bf16', 'avx512f', 'avx2')


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the feature flags the kernel reports for it."""

    model: str
    flags: frozenset[str]

    @property
    def native_bfloat16(self) -> bool:
        """True when the CPU computes bfloat16 in hardware (AMX or AVX-512 BF16)."""
        return any(flag in self.flags for flag in NATIVE_BFLOAT16_FLAGS)

    def summary(self) -> str:
        """'<model> (<decisive flags>)', e.g. for logs and diagnostics."""
        named = [flag for flag in REPORTED_FLAGS if flag in self.flags]
        return f"{self.model} ({' '.join(named) if named else 'no AVX2/AVX-512/AMX'})"


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Read the first processor's model name and flags from /proc/cpuinfo text (x86 layout)."""
    model, flags = '', frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and not model:
            model = value.strip()
        elif key == 'flags' and not flags:
            flags = frozenset(value.split())
    return CpuFeatures(model=model or platform.processor() or platform.machine(), flags=flags)


def read_cpu_features(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """
    The CPU's features from ``cpuinfo``. On other architectures (ARM lists 'Features', not
    'flags') and systems without the file, no flags: float32 is the safe choice there.
    """
    if platform.machine().lower() not in ('x86_64', 'amd64', 'i686', 'i386'):
        return CpuFeatures(model=platform.processor() or platform.machine(), flags=frozenset())
    try:
        return parse_cpuinfo(cpuinfo.read_text(errors='replace'))
    except OSError:
        return CpuFeatures(model=platform.processor() or platform.machine(), flags=frozenset())


@functools.lru_cache(maxsize=1)
def host_cpu_features() -> CpuFeatures:
    """This machine's CPU features, read once."""
    return read_cpu_features()
