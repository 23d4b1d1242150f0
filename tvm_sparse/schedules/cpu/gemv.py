"""placeholder"""
from tvm.s_tir.dlight.cpu import GEMV

__all__ = ["GEMV"]
