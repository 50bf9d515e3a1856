"""Constrained decoding: only tokens that can still lead to a valid text may be generated.

``model.generate(prompt, constraint=Regex("[0-9]+"))`` with :class:`Choice`, :class:`Regex`, :class:`Grammar`
(Lark) or :class:`JsonSchema`; :func:`compile_constraint` turns a constraint into per-step token masks for a
tokenizer (reference engine of our own, or llguidance when installed). Generate-and-verify (rejection sampling,
best-of-n, symbolic verifiers) is :mod:`genzoo.constrain.verify`. See docs/constrained-decoding.md.
"""

from genzoo.constrain.constraints import Choice, Constraint, Grammar, JsonSchema, Regex
from genzoo.constrain.engine import CompiledConstraint, Engine, Matcher, compile_constraint

__all__ = ["Choice", "CompiledConstraint", "Constraint", "Engine", "Grammar", "JsonSchema", "Matcher", "Regex",
           "compile_constraint"]
