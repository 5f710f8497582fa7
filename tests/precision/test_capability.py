import re

import pytest

from lightning_green.precision.capability import cpu_bf16_supported, cpu_flags, resolve_policy


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx512f avx512_bf16\nbugs\t: none\n")
    assert cpu_flags(str(info)) == {"fpu", "sse", "avx512f", "avx512_bf16"}
    assert cpu_bf16_supported(cpu_flags(str(info)))


def test_cpu_flags_without_cpuinfo_is_empty(tmp_path):
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(
    ("flags", "supported"),
    [({"amx_bf16", "amx_tile"}, True), ({"avx512_bf16"}, True), ({"avx512f", "avx2"}, False), (set(), False)],
)
def test_cpu_bf16_flags(flags, supported):
    assert cpu_bf16_supported(flags) is supported


@pytest.mark.parametrize(
    ("policy", "device", "kwargs", "mode", "reason"),
    [
        ("auto", "cpu", {"flags": {"amx_bf16"}}, "bf16-mixed", "AVX-512-BF16/AMX-BF16"),
        ("auto", "cpu", {"flags": {"avx2"}}, "32-true", "slower than fp32"),
        ("auto", "cuda", {"cuda_bf16": True}, "bf16-mixed", "natively"),
        ("auto", "cuda", {"cuda_bf16": False}, "16-mixed", "grad scaler"),
        ("auto", "mps", {}, "32-true", "no low precision known to be fast on 'mps'"),
        ("bf16-mixed", "cpu", {"flags": {"avx2"}}, "bf16-mixed", "expect bf16 to be slow"),
        ("bf16-mixed", "cpu", {"flags": {"avx512_bf16"}}, "bf16-mixed", "^requested$"),
        ("16-mixed", "cpu", {"flags": {"avx512_bf16"}}, "16-mixed", "fp16 autocast on CPU is slow"),
        ("bf16-mixed", "cuda", {"cuda_bf16": False}, "bf16-mixed", "only emulates bf16"),
        ("16-mixed", "cuda", {"cuda_bf16": True}, "16-mixed", "^requested$"),
    ],
)
def test_resolve_policy(policy, device, kwargs, mode, reason):
    choice = resolve_policy(policy, device, **kwargs)
    assert choice.mode == mode
    assert re.search(reason, choice.reason)
