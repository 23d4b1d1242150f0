"""UniquifyBindingNames: give every binding of a Relax function a name of its own."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

__all__ = ["UniquifyBindingNames"]


@mutator
class _Renamer(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, taken: set[str]):
        super().__init__(mod)
        self.taken = taken

    def _fresh(self, name: str) -> str:
        if name not in self.taken:
            self.taken.add(name)
            return name
        k = 1
        while f"{name}_{k}" in self.taken:
            k += 1
        self.taken.add(f"{name}_{k}")
        return f"{name}_{k}"

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        old = binding.var
        new_name = self._fresh(old.name)
        if isinstance(old, relax.DataflowVar):
            new = relax.DataflowVar(new_name, old.ty)
        else:
            new = relax.Var(new_name, old.ty)
        self.builder_.emit_normalized(relax.VarBinding(new, value))
        self.set_var_remap(old, new)


@tvm.transform.module_pass(opt_level=0, name="UniquifyBindingNames")
class UniquifyBindingNames:
    """Rename bindings of ``main`` whose name another binding or parameter already has.

    Importers repeat names (the PyTorch importer emits two ``lv5`` when it decomposes batch
    norm). The sparsity passes and the compile report key their attributes by binding name, so
    the pipeline runs this pass first. A repeated name gets the smallest free suffix::

        lv5 = R.subtract(x, c0)        lv5 = R.subtract(x, c0)
        lv5 = R.multiply(lv5, c1)  ->  lv5_1 = R.multiply(lv5, c1)
    """

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        names = [b.var.name for block in func.body.blocks for b in block.bindings]
        if len(set(names)) == len(names) and not set(names) & {p.name for p in func.params}:
            return mod
        renamer = _Renamer(mod, {p.name for p in func.params})
        new_func = renamer.visit_expr(func)
        mod = mod.clone() if hasattr(mod, "clone") else mod
        mod["main"] = new_func
        return mod
