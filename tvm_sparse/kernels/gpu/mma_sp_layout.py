"""Which thread of a warp holds which element of a sparse ``mma.sp`` ``m16n8k32`` ``f16``.

PTX ISA, "Matrix fragments for mma.sp.m16n8k32" (f16/bf16 multiplicands, f32 accumulators):
``D (16x8) = A (16x32, 2:4 sparse along K) @ B (32x8) + C``. ``A`` is given compressed, 16x16
(its two kept values of every group of four), and a 32-bit *metadata* register names, in 2 bits
each, where in its group each kept value sits. The 32 threads of a warp form 8 groups of 4
(``group = lane // 4``, ``thread = lane % 4``); every register holds two ``f16`` (the lower
column in the low half) or one ``f32``:

* ``A`` (4 registers): register ``r`` holds row ``group + 8 * (r % 2)``, compressed columns
  ``2 * thread + 8 * (r // 2)`` and ``+ 1``.
* ``B`` (4 registers): register ``r`` holds rows ``2 * thread + 8 * r`` and ``+ 1`` of column
  ``group``.
* ``C``/``D`` (4 ``f32``): element ``i`` is row ``group + 8 * (i // 2)``, column
  ``2 * thread + i % 2``.
* Metadata, sparsity selector ``s`` (0 or 1 for this shape: a *thread pair* of each group
  supplies it): thread ``2 * s + p`` of group ``q`` holds, in 2-bit field ``f``, the position
  (0-3, inside its group of four dense columns) of compressed element ``(q + 8 * (f // 8),
  8 * p + f % 8)``: its low 16 bits cover row ``q``, its high 16 bits row ``q + 8``, each over
  dense columns ``16 * p`` to ``16 * p + 15``. The two positions of a group must increase.

The metadata layout is the one TVM's own ``ptx_mma_sp`` test (upstream
``test_tir_ptx_mma_sp.py``, ``get_meta_m16n8k32_half``) and MLIR's ``sparse-mma-2-4-f16``
integration test load on sm_80; ``tests/kernels/gpu`` checks these maps against a transcription
of the former. Every map here is plain arithmetic (``//``, ``%``, ``+``, ``*``), so one
definition serves NumPy integers (compression, the emulator) and TIR expressions (the kernel).
"""

from __future__ import annotations

__all__ = [
    "MMA_K",
    "MMA_M",
    "MMA_N",
    "META_REGS",
    "REGS",
    "a_element",
    "b_element",
    "c_element",
    "meta_element",
    "meta_holder",
    "meta_slot",
]

#: The shape of one ``mma.sp.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32``.
MMA_M, MMA_N, MMA_K = 16, 8, 32
#: 32-bit registers per thread of each of ``A`` (compressed), ``B`` and ``C``/``D``.
REGS = 4
#: Metadata registers of one ``m16n8k32`` A tile: a thread pair in each of the 8 groups.
META_REGS = 16


def a_element(lane, reg, half):
    """``(row, compressed column)`` of ``A`` in half ``half`` (0 low) of ``A`` register ``reg``."""
    return lane // 4 + 8 * (reg % 2), 2 * (lane % 4) + 8 * (reg // 2) + half


def b_element(lane, reg, half):
    """``(k, column)`` of ``B`` in half ``half`` of ``B`` register ``reg`` of ``lane``."""
    return 2 * (lane % 4) + 8 * reg + half, lane // 4


def c_element(lane, i):
    """``(row, column)`` of ``C``/``D`` in accumulator ``i`` (0-3) of ``lane``."""
    return lane // 4 + 8 * (i // 2), 2 * (lane % 4) + i % 2


def meta_holder(lane, selector):
    """Whether ``lane`` supplies metadata under sparsity selector ``selector`` (0 or 1)."""
    return (lane % 4) // 2 == selector


def meta_slot(lane):
    """Index (0-15) of the metadata word a lane of the holding pair needs: ``2 * group + p``.

    Lanes outside the holding pair get a word too (their pair's); the hardware ignores it.
    """
    return 2 * (lane // 4) + lane % 2


def meta_element(slot, field):
    """``(row, compressed column)`` of ``A`` whose position 2-bit field ``field`` (0-15) of
    metadata word ``slot`` holds."""
    return slot // 2 + 8 * (field // 8), 8 * (slot % 2) + field % 8
