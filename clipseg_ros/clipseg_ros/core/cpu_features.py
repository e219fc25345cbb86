"""
What the CPU computes natively, read from the kernel's /proc/cpuinfo flags. No ROS.

bfloat16 is fast only where the CPU has bfloat16 arithmetic: Intel AMX (``amx_bf16``) or
AVX-512 BF16 (``avx512_bf16``, also on AMD Zen 4). Elsewhere it is emulated and slower than
float32, so any other CPU, and any system without /proc/cpuinfo, counts as having none. int8
is faster than float32 only with int8 dot products: VNNI (``avx_vnni``, ``avx512_vnni``) or
AMX (``amx_int8``). ``ONEDNN_MAX_CPU_ISA`` caps what oneDNN (under torch and OpenVINO) uses,
so the flags above the cap it names count as absent.
"""

from dataclasses import dataclass
import functools
import os
from pathlib import Path
import platform

CPUINFO = Path('/proc/cpuinfo')
# Either flag means bfloat16 matrix arithmetic in hardware.
NATIVE_BFLOAT16_FLAGS = ('amx_bf16', 'avx512_bf16')
# Any of these means int8 dot products in hardware.
NATIVE_INT8_FLAGS = ('amx_int8', 'avx512_vnni', 'avx_vnni')
# Flags worth naming in logs and diagnostics (the ones that decide the precision).
REPORTED_FLAGS = ('amx_bf16', 'amx_int8', 'amx_tile', 'avx512_bf16', 'avx512_vnni', 'avx512f',
                  'avx_vnni', 'avx2')
ISA_CAP_VARIABLE = 'ONEDNN_MAX_CPU_ISA'
# oneDNN's ISA names in rising order, each with the flags it adds to those below it.
_ISA_LEVELS = (
    ('SSE41', frozenset()),
    ('AVX', frozenset()),
    ('AVX2', frozenset({'avx2'})),
    ('AVX2_VNNI', frozenset({'avx_vnni'})),
    ('AVX2_VNNI_2', frozenset()),
    ('AVX512_CORE', frozenset({'avx512f'})),
    ('AVX512_CORE_VNNI', frozenset({'avx512_vnni'})),
    ('AVX512_CORE_BF16', frozenset({'avx512_bf16'})),
    ('AVX10_1_512', frozenset({'avx512_fp16'})),
    ('AVX512_CORE_FP16', frozenset()),
    ('AVX10_1_512_AMX', frozenset({'amx_tile', 'amx_int8', 'amx_bf16'})),
    ('AVX512_CORE_AMX', frozenset()),
    ('AVX10_1_512_AMX_FP16', frozenset({'amx_fp16'})),
    ('AVX512_CORE_AMX_FP16', frozenset()),
)


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the feature flags the kernel reports for it."""

    model: str
    flags: frozenset[str]

    @property
    def native_bfloat16(self) -> bool:
        """True when the CPU computes bfloat16 in hardware (AMX or AVX-512 BF16)."""
        return any(flag in self.flags for flag in NATIVE_BFLOAT16_FLAGS)

    @property
    def native_int8(self) -> bool:
        """True when the CPU has int8 dot products (VNNI or AMX-INT8)."""
        return any(flag in self.flags for flag in NATIVE_INT8_FLAGS)

    def summary(self) -> str:
        """'<model> (<decisive flags>)', e.g. for logs and diagnostics."""
        named = [flag for flag in REPORTED_FLAGS if flag in self.flags]
        return f"{self.model} ({' '.join(named) if named else 'no AVX2/AVX-512/AMX'})"

    def capped(self, isa: str | None) -> 'CpuFeatures':
        """
        These features as oneDNN sees them under ``ONEDNN_MAX_CPU_ISA=isa``: the flags of the
        ISA levels above ``isa`` removed. None, '', 'ALL', 'DEFAULT' or an unknown name: as is.
        """
        names = [name for name, _ in _ISA_LEVELS]
        cap = (isa or '').strip().upper()
        if cap not in names:
            return self
        above = frozenset().union(*(flags for _, flags in _ISA_LEVELS[names.index(cap) + 1:]))
        if cap in ('SSE41', 'AVX'):
            above |= {'avx2'}
        return CpuFeatures(model=f'{self.model} [{ISA_CAP_VARIABLE}={cap}]',
                           flags=self.flags - above)


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
    """This machine's CPU features as oneDNN may use them (``ONEDNN_MAX_CPU_ISA``), read once."""
    return read_cpu_features().capped(os.environ.get(ISA_CAP_VARIABLE))
