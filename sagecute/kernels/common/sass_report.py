"""SASS summary of a compiled CuTe DSL kernel (no GPU needed).

Compile with artifacts kept (:func:`keep_artifacts` sets ``CUTE_DSL_KEEP=ptx,cubin`` and
``CUTE_DSL_DUMP_DIR``; ``CUTE_DSL_ARCH=sm_90a`` selects the target on a machine without
a GPU), then :func:`summarize_cubin` reads the ELF (registers per thread from the
``.text.<kernel>`` section header, static shared memory, local memory / spill bytes from
``.nv.info``) and counts instructions in ``nvdisasm -c`` output: IGMMA, QGMMA, HGMMA,
UTMALDG, MUFU.EX2, LDL/STL (spills).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import struct
import subprocess
import sys
from typing import Optional

OPCODES = ("IGMMA", "QGMMA", "HGMMA", "UTMALDG", "UTMASTG", "MUFU.EX2", "LDL", "STL", "BAR.SYNC",
           "USETMAXREG", "F2FP", "I2FP", "SHFL", "LDS.128")

# .nv.info attribute ids (cuda ELF "EIATTR_*")
_EIATTR_FRAME_SIZE = 0x11
_EIATTR_MIN_STACK_SIZE = 0x12
_EIATTR_MAX_STACK_SIZE = 0x23
_EIATTR_REGCOUNT = 0x2F


def find_nvdisasm() -> Optional[str]:
    """nvdisasm from PATH, CUDA_HOME, or the pip wheels (nvidia-cuda-nvdisasm)."""
    exe = shutil.which("nvdisasm")
    if exe:
        return exe
    cands = []
    for root in sys.path:
        cands += glob.glob(os.path.join(root, "nvidia", "*", "bin", "nvdisasm"))
        cands += glob.glob(os.path.join(root, "nvidia", "cuda_nvdisasm", "bin", "nvdisasm"))
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home:
        cands.append(os.path.join(cuda_home, "bin", "nvdisasm"))
    for c in cands:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


@contextlib.contextmanager
def keep_artifacts(dump_dir: str, keep=("ptx", "cubin")):
    """Make CuTe DSL compiles inside the block write PTX/cubin into ``dump_dir``.

    Equivalent to ``CUTE_DSL_KEEP=ptx,cubin CUTE_DSL_DUMP_DIR=dump_dir`` (which the DSL
    reads once per process); keeping artifacts also bypasses the DSL's compile cache."""
    from cutlass.cutlass_dsl import CuTeDSL

    os.makedirs(dump_dir, exist_ok=True)
    env = CuTeDSL._get_dsl().envar
    wanted = {"dump_dir": dump_dir, **{f"keep_{k}": True for k in keep}}
    saved = {k: getattr(env, k) for k in wanted}
    try:
        for k, v in wanted.items():
            setattr(env, k, v)
        yield dump_dir
    finally:
        for k, v in saved.items():
            setattr(env, k, v)


def find_cubin(dump_dir: str) -> Optional[str]:
    files = sorted(glob.glob(os.path.join(dump_dir, "**", "*.cubin"), recursive=True), key=os.path.getmtime)
    return files[-1] if files else None


# ----------------------------------------------------------------------------- ELF
def _elf_sections(data: bytes):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 cubin")
    (e_shoff,) = struct.unpack_from("<Q", data, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    secs = []
    for i in range(e_shnum):
        off = e_shoff + i * e_shentsize
        name, typ, flags, addr, offset, size, link, info, align, entsize = struct.unpack_from(
            "<IIQQQQIIQQ", data, off)
        secs.append(dict(name_off=name, type=typ, flags=flags, offset=offset, size=size, link=link, info=info))
    strtab = secs[e_shstrndx]
    for s in secs:
        start = strtab["offset"] + s["name_off"]
        s["name"] = data[start:data.index(b"\0", start)].decode()
    return secs


def _nv_info_attrs(blob: bytes):
    """Yield (attr, value_bytes) from an .nv.info section."""
    i = 0
    while i + 2 <= len(blob):
        fmt, attr = blob[i], blob[i + 1]
        i += 2
        if fmt == 0x04:  # EIFMT_SVAL: u16 size + payload
            (size,) = struct.unpack_from("<H", blob, i)
            i += 2
            yield attr, blob[i:i + size]
            i += size
        elif fmt == 0x03:  # EIFMT_HVAL: u16 value
            yield attr, blob[i:i + 2]
            i += 2
        elif fmt == 0x02:  # EIFMT_BVAL
            yield attr, blob[i:i + 1]
            i += 1
        elif fmt == 0x01:  # EIFMT_NVAL
            yield attr, b""
        else:
            break


def _symbols(data: bytes, secs) -> list:
    symtab = next((s for s in secs if s["type"] == 2), None)
    if symtab is None:
        return []
    strtab = secs[symtab["link"]]
    names = []
    for off in range(symtab["offset"], symtab["offset"] + symtab["size"], 24):
        (name_off,) = struct.unpack_from("<I", data, off)
        start = strtab["offset"] + name_off
        names.append(data[start:data.index(b"\0", start)].decode())
    return names


def elf_resources(cubin: str) -> dict:
    """Per-kernel registers, static smem, local (stack) bytes from the cubin ELF."""
    data = open(cubin, "rb").read()
    secs = _elf_sections(data)
    syms = _symbols(data, secs)
    out = {}
    for s in secs:
        if s["name"] == ".nv.info":  # global attributes: (symbol index, value) pairs
            blob = data[s["offset"]:s["offset"] + s["size"]]
            for attr, val in _nv_info_attrs(blob):
                if len(val) < 8:
                    continue
                sym, value = struct.unpack_from("<II", val, 0)
                name = syms[sym] if sym < len(syms) else str(sym)
                key = {_EIATTR_REGCOUNT: "registers", _EIATTR_FRAME_SIZE: "frame_bytes",
                       _EIATTR_MIN_STACK_SIZE: "min_stack_bytes", _EIATTR_MAX_STACK_SIZE: "max_stack_bytes"}.get(attr)
                if key:
                    out.setdefault(name, {})[key] = value
    for s in secs:
        if s["name"].startswith(".text."):
            k = s["name"][len(".text."):]
            out.setdefault(k, {}).setdefault("registers", (s["info"] >> 24) & 0xFF)
        elif s["name"].startswith(".nv.shared.") and not s["name"].startswith(".nv.shared.reserved"):
            k = s["name"][len(".nv.shared."):]
            out.setdefault(k, {})["static_smem_bytes"] = s["size"]
        elif s["name"].startswith(".nv.info."):
            k = s["name"][len(".nv.info."):]
            blob = data[s["offset"]:s["offset"] + s["size"]]
            d = out.setdefault(k, {})
            for attr, val in _nv_info_attrs(blob):
                if attr in (_EIATTR_FRAME_SIZE, _EIATTR_MIN_STACK_SIZE, _EIATTR_MAX_STACK_SIZE) and len(val) >= 8:
                    d[{_EIATTR_FRAME_SIZE: "frame_bytes", _EIATTR_MIN_STACK_SIZE: "min_stack_bytes",
                       _EIATTR_MAX_STACK_SIZE: "max_stack_bytes"}[attr]] = struct.unpack_from("<I", val, 4)[0]
                elif attr == _EIATTR_REGCOUNT and len(val) >= 8:
                    d["registers_nvinfo"] = struct.unpack_from("<I", val, 4)[0]
    return out


# ----------------------------------------------------------------------------- SASS
def disassemble(cubin: str) -> str:
    exe = find_nvdisasm()
    if exe is None:
        raise FileNotFoundError("nvdisasm not found (pip install nvidia-cuda-nvdisasm)")
    res = subprocess.run([exe, "-c", cubin], capture_output=True, text=True, check=True)
    return res.stdout


def count_opcodes(sass: str, opcodes=OPCODES) -> dict:
    counts = {op: 0 for op in opcodes}
    instr = 0
    for line in sass.splitlines():
        m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if not m:
            continue
        instr += 1
        op = m.group(1)
        for want in opcodes:
            if op == want or op.startswith(want + "."):
                counts[want] += 1
    counts["instructions"] = instr
    return counts


def summarize_cubin(cubin: str) -> dict:
    """{'kernel', 'registers', 'spill_ldl', 'spill_stl', 'local_bytes', 'static_smem_bytes',
    'IGMMA', 'QGMMA', ...} for the (largest) kernel in ``cubin``."""
    res = elf_resources(cubin)
    kernels = {k: v for k, v in res.items() if "registers" in v}
    name = max(kernels, key=lambda k: kernels[k]["registers"]) if kernels else None
    info = dict(res.get(name, {})) if name else {}
    summary = {"kernel": name, "cubin": cubin, "registers": info.get("registers"),
               "static_smem_bytes": info.get("static_smem_bytes", 0),
               "local_bytes": info.get("frame_bytes", 0)}
    try:
        counts = count_opcodes(disassemble(cubin))
        summary.update(counts)
        summary["spill_ldl"] = counts["LDL"]
        summary["spill_stl"] = counts["STL"]
    except (FileNotFoundError, subprocess.CalledProcessError) as e:
        summary["error"] = str(e)
    return summary


def format_summary(s: dict) -> str:
    keys = ("registers", "local_bytes", "spill_ldl", "spill_stl", "static_smem_bytes", "IGMMA", "QGMMA",
            "HGMMA", "UTMALDG", "MUFU.EX2", "USETMAXREG", "instructions")
    return " ".join(f"{k}={s.get(k)}" for k in keys)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(path, format_summary(summarize_cubin(path)))
