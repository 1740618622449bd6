"""Kernel launches with less host time: ``@fast`` over ``@ti.kernel``.

Taichi's Python launch path re-derives everything on every call: it matches the arguments against the
kernel's template instances, inspects each tensor (its type, its device, whether torch is installed, through
environment lookups) and looks up the compiled kernel. That costs about 250 us per launch with two tensors on
this project's CPU machine, and more with the inference loop's fifteen: per frame the loop launches three
kernels per round, and in the late rounds, with few samples, the GPU waits for these launches (docs/PERF.md,
session 9).

``fast(kernel)`` launches like ``kernel`` does: the first call with a new signature (each tensor's dtype and
number of dimensions, each scalar's type) goes through Taichi's own path, which checks the arguments and
compiles; later calls with that signature fill Taichi's launch context directly from the tensors' pointers and
shapes. Calls the fast path cannot take (non-contiguous tensors, tensors that require grad or live on another
device than Taichi's backend, arguments of other kinds) always go through Taichi's own path, which copies or
raises as it would. Only kernels whose arguments are all ndarrays of scalars and scalars, and that return
nothing, get the fast path; any other kernel is called as it is. The fast path uses Taichi's internals as of 1.7
(the kernel's ``_primal``, its compiled kernels, the program's ``launch_kernel``): where they are missing, every
launch takes Taichi's own path.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from taichi_kernels import runtime

try:
    from taichi.lang import impl
    from taichi.lang.util import cook_dtype
    from taichi.types import ndarray_type, primitive_types
    from taichi.types.utils import is_signed
except ImportError:  # another Taichi: its own launch path only
    impl = None

_ARRAY, _FLOAT, _INT, _UINT = "array", "float", "int", "uint"


def _argument_kind(annotation: Any) -> str | None:
    """How the fast path sets an argument of this annotation, or None when it cannot."""
    if isinstance(annotation, ndarray_type.NdarrayType):
        scalar = annotation.dtype is None or id(annotation.dtype) in primitive_types.type_ids
        return _ARRAY if scalar else None
    if id(annotation) in primitive_types.real_type_ids:
        return _FLOAT
    if id(annotation) in primitive_types.integer_type_ids:
        return _INT if is_signed(cook_dtype(annotation)) else _UINT
    return None


class FastKernel:
    """``kernel`` (a ``@ti.kernel``) with the fast launch path (see the module's docstring)."""

    def __init__(self, kernel: Callable):
        self.kernel = kernel
        self._primal = getattr(kernel, "_primal", None)
        self._kinds = self._argument_kinds()  # None: Taichi's own path for every launch
        self._launches: dict[tuple, tuple] = {}  # signature -> (program, Taichi kernel, compiled kernel)

    def _argument_kinds(self) -> list[str] | None:
        try:
            kinds = [_argument_kind(a.annotation) for a in self._primal.arguments]
            return kinds if None not in kinds and self._primal.return_type is None else None
        except (AttributeError, NameError, TypeError):  # not a Taichi 1.7 kernel
            return None

    def __call__(self, *args):
        signature = self._signature(args)
        if signature is None:
            return self.kernel(*args)
        launch = self._launches.get(signature)
        prog = impl.get_runtime().prog
        if launch is None or launch[0] is not prog:
            self.kernel(*args)  # checks, compiles (on the main thread), launches
            self._prepare(signature, args, prog)
            return
        _, t_kernel, compiled = launch
        ctx = t_kernel.make_launch_context()
        for i, (kind, value) in enumerate(zip(self._kinds, args)):
            if kind == _ARRAY:
                ctx.set_arg_external_array_with_shape((i,), value.data_ptr(), value.element_size() * value.numel(),
                                                      list(value.shape), 0)
            elif kind == _FLOAT:
                ctx.set_arg_float((i,), float(value))
            elif kind == _INT:
                ctx.set_arg_int((i,), int(value))
            else:
                ctx.set_arg_uint((i,), int(value))
        prog.launch_kernel(compiled, ctx)

    def _prepare(self, signature: tuple, args: tuple, prog) -> None:
        """Keep what later launches of ``signature`` need, or turn the fast path off where Taichi's internals differ
        (or the kernel prints, which makes Taichi sync after each launch)."""
        try:
            if self._primal.has_print:
                self._kinds = None
                return
            t_kernel = self._primal.compiled_kernels[self._primal.ensure_compiled(*args)]
            compiled = prog.compile_kernel(prog.config(), prog.get_device_caps(), t_kernel)
            t_kernel.make_launch_context()
        except (AttributeError, KeyError, TypeError):
            self._kinds = None
            return
        self._launches[signature] = (prog, t_kernel, compiled)

    def _signature(self, args: tuple) -> tuple | None:
        """The call's signature, or None when the fast path cannot take it."""
        kinds = self._kinds
        if kinds is None or len(args) != len(kinds):
            return None
        device = "cuda" if runtime.current_arch() == "cuda" else "cpu"
        signature = []
        for kind, value in zip(kinds, args):
            if kind == _ARRAY:
                if (not isinstance(value, torch.Tensor) or value.requires_grad or value.device.type != device
                        or not value.is_contiguous()):
                    return None
                signature.append((value.dtype, value.dim()))
            elif isinstance(value, (bool, int, float)):
                signature.append(type(value))
            else:
                return None
        return tuple(signature)


def fast(kernel: Callable) -> FastKernel:
    """``kernel`` (a ``@ti.kernel``) launched with less host time; write ``@fast`` above ``@ti.kernel``."""
    return FastKernel(kernel)
