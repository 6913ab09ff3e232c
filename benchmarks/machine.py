"""The machine a benchmark ran on, printed with every table: timings compare only within one run,
and CPUs of the same name differ in their vector units (AVX2 only vs AVX-512 and AMX)."""

from __future__ import annotations

import os
import platform


def cpu_description() -> str:
    """'<model name> (<vector extensions>), <n> CPUs' from /proc/cpuinfo."""
    flags: set[str] = set()
    name = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    ext = [label for label, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")) if flag in flags]
    return f"{name} ({', '.join(ext) or 'no AVX2'}), {os.cpu_count()} CPUs"
