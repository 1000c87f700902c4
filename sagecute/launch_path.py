"""How a compiled CuTe DSL kernel is called from torch.

Note [Two launch paths]
-----------------------
The "pointer" path wraps every torch tensor with ``from_dlpack`` and goes
through the DSL's Python executor: ~60-100 us of host time per call, which is
the whole budget of a short-sequence attention call. The "tvm-ffi" path
(kernels compiled with ``--enable-tvm-ffi``) takes the torch tensors directly
(~15 us). TVM-FFI is the default where ``tvm_ffi`` is installed; if a call
fails, the pointer path takes over for that family, with one warning saying why.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from typing import Callable


def tvm_ffi_available() -> bool:
    return importlib.util.find_spec("tvm_ffi") is not None


class LaunchPath:
    """The launch path of one kernel family; ``env_var=0`` forces "pointer"."""

    def __init__(self, family: str, env_var: str) -> None:
        self.family = family
        self.env_var = env_var
        self._use: bool | None = None
        self._why = ""

    def current(self) -> tuple[str, str]:
        """("tvm-ffi" | "pointer", reason) for the calls made from now on."""
        if self._use is None:
            if os.environ.get(self.env_var, "1") == "0":
                self._use, self._why = False, f"{self.env_var}=0"
            elif not tvm_ffi_available():
                self._use, self._why = False, "tvm_ffi is not installed"
            else:
                self._use, self._why = True, "tvm_ffi is installed"
        return ("tvm-ffi" if self._use else "pointer"), self._why

    def force(self, path: str | None) -> None:
        """Force "tvm-ffi" or "pointer" (tests, benchmarks); None: choose automatically."""
        if path not in (None, "tvm-ffi", "pointer"):
            raise ValueError(f"unknown launch path {path!r}")
        if path is None:
            self._use, self._why = None, ""
        else:
            self._use, self._why = path == "tvm-ffi", f"set_launch_path({path!r})"

    def use_ffi(self) -> bool:
        """Whether calls take the TVM-FFI path now (``current()[0] == "tvm-ffi"``, cheaper)."""
        if self._use is None:
            self.current()
        return bool(self._use)

    def launch(self, ffi_launch: Callable[[], None], pointer_launch: Callable[[], None]) -> None:
        if self.use_ffi():
            try:
                ffi_launch()
                return
            except Exception as e:  # noqa: BLE001 - fall back once, say why
                self._use, self._why = False, f"TVM-FFI call failed: {type(e).__name__}: {e}"
                warnings.warn(f"sagecute {self.family}: {self._why}; using the pointer launch path", stacklevel=3)
        pointer_launch()
