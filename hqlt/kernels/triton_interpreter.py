"""Corrections to the Triton interpreter's bfloat16 arithmetic (`TRITON_INTERPRET=1`, how the kernels
are tested without a GPU).

numpy has no bfloat16, so the interpreter (Triton 3.9) holds bfloat16 tensors as their raw bit
patterns in uint16 arrays, and gets two operations wrong:
- `tl.dot` hands those arrays to `np.matmul` as they are: a product of bfloat16 operands multiplies
  the bit patterns as integers (results around 1e10);
- a cast from fp32 to bfloat16 (`.to(tl.bfloat16)`, a store into a bfloat16 tensor) drops the low
  16 bits, rounding toward zero: on average 0.3% too small, where a GPU rounds to nearest even.
float16 needs neither correction: numpy has float16 (its casts round to nearest even, and a product
of float16 operands is computed in the fp32 accumulator's dtype).
"""

from __future__ import annotations

import numpy as np
import triton.language as tl
from triton.runtime import interpreter


def _widened(operand: interpreter.TensorHandle) -> interpreter.TensorHandle:
    """A bfloat16 operand as fp32 (exact: a bfloat16 is the upper half of an fp32); others unchanged."""
    if operand.dtype.scalar != tl.bfloat16:
        return operand
    return interpreter.TensorHandle((operand.data.astype(np.uint32) << 16).view(np.float32), tl.float32)


def _rounded_to_bf16(values: np.ndarray) -> np.ndarray:
    """fp32 `values` rounded to nearest even bfloat16, as bit patterns (NaN stays NaN)."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16
    return np.where(np.isnan(values), (bits >> 16) | 0x40, rounded).astype(np.uint16)


def fix_bf16() -> None:
    """Make the interpreter's bfloat16 arithmetic that of a GPU: `tl.dot` widens bfloat16 operands
    to fp32 before multiplying, so a product equals the fp32 product of the bfloat16 values, and casts
    from fp32 to bfloat16 round to nearest even. Idempotent; call it only when interpreting."""
    builder = interpreter.InterpreterBuilder
    if getattr(builder, "fixed_bf16", False):
        return
    create_dot, create_fp_trunc = builder.create_dot, builder.create_fp_trunc

    def create_dot_widening_bf16(self, a, b, acc, input_precision, max_num_imprecise_acc):
        return create_dot(self, _widened(a), _widened(b), acc, input_precision, max_num_imprecise_acc)

    def create_fp_trunc_to_nearest(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            return interpreter.TensorHandle(_rounded_to_bf16(src.data), tl.bfloat16)
        return create_fp_trunc(self, src, dst_type)

    builder.create_dot = create_dot_widening_bf16
    builder.create_fp_trunc = create_fp_trunc_to_nearest
    builder.fixed_bf16 = True
