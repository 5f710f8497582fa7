"""What low precision a device runs fast: the decision behind ``AMPScheduler(policy="auto")``.

* CUDA: bf16 where the GPU supports it natively (``torch.cuda.is_bf16_supported``, emulation not counted), else
  fp16 with a grad scaler.
* CPU: bf16 where the CPU has AVX-512-BF16 or AMX-BF16 (the ``flags`` line of ``/proc/cpuinfo``; oneDNN runs bf16
  convolutions and matmuls natively there), else fp32 — fp16 autocast on CPU is slower than fp32.
* Anything else (MPS, XLA, ...): fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["CPU_BF16_FLAGS", "PolicyChoice", "cpu_bf16_supported", "cpu_flags", "cuda_bf16_supported", "resolve_policy"]

log = logging.getLogger(__name__)

#: x86 CPU flags (as in ``/proc/cpuinfo``) that mean native bf16 arithmetic.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty where there is no ``/proc/cpuinfo``, e.g. macOS)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        log.debug("cannot read %s", path, exc_info=True)
    return frozenset()


def cpu_bf16_supported(flags: Iterable[str] | None = None) -> bool:
    """Whether the CPU has native bf16 (AVX-512-BF16 or AMX-BF16); ``flags`` default to :func:`cpu_flags`.

    Example:
        >>> cpu_bf16_supported({"avx2", "avx512f", "avx512_bf16"}), cpu_bf16_supported({"avx2"})
        (True, False)
    """
    present = frozenset(flags) if flags is not None else cpu_flags()
    return any(f in present for f in CPU_BF16_FLAGS)


def cuda_bf16_supported() -> bool:
    """Whether the current CUDA device runs bf16 natively (Ampere or newer); emulated bf16 does not count."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch < 2.3 has no `including_emulation` and never counted emulation
        return bool(torch.cuda.is_bf16_supported())


@dataclass(frozen=True)
class PolicyChoice:
    """The low precision picked for a device, and why (shown to the user)."""

    mode: str
    reason: str


def resolve_policy(
    policy: str,
    device_type: str,
    *,
    flags: Iterable[str] | None = None,
    cuda_bf16: bool | None = None,
) -> PolicyChoice:
    """The low-precision mode ``policy`` means on ``device_type`` (``"cuda"``, ``"cpu"``, ...).

    ``policy`` is ``"auto"``, ``"bf16-mixed"`` or ``"16-mixed"``; an explicit mode is kept (its reason says when it
    will be slow). ``flags`` and ``cuda_bf16`` override the detection (for tests and dry runs).

    Example:
        >>> resolve_policy("auto", "cpu", flags={"avx512_bf16"}).mode
        'bf16-mixed'
        >>> resolve_policy("auto", "cpu", flags={"avx2"}).mode
        '32-true'
        >>> resolve_policy("auto", "cuda", cuda_bf16=False).mode
        '16-mixed'
    """
    if device_type == "cuda":
        native = cuda_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if policy == "auto":
            if native:
                return PolicyChoice("bf16-mixed", "the GPU supports bf16 natively")
            return PolicyChoice("16-mixed", "the GPU has no native bf16: fp16 with a dynamic grad scaler")
        if policy == "bf16-mixed" and not native:
            return PolicyChoice(policy, "requested; this GPU only emulates bf16, expect it to be slow")
        return PolicyChoice(policy, "requested")
    if device_type == "cpu":
        native = cpu_bf16_supported(flags)
        if policy == "auto":
            if native:
                return PolicyChoice("bf16-mixed", "the CPU has AVX-512-BF16/AMX-BF16")
            return PolicyChoice(
                "32-true", "the CPU has no AVX-512-BF16/AMX-BF16 and fp16 autocast on CPU is slower than fp32"
            )
        if policy == "16-mixed":
            return PolicyChoice(
                policy, "requested; fp16 autocast on CPU is slow (use it for testing), prefer bf16-mixed"
            )
        if not native:
            return PolicyChoice(policy, "requested; this CPU has no AVX-512-BF16/AMX-BF16, expect bf16 to be slow")
        return PolicyChoice(policy, "requested")
    if policy == "auto":
        return PolicyChoice("32-true", f"no low precision known to be fast on {device_type!r}")
    return PolicyChoice(policy, "requested")
