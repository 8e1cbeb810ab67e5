"""Refuse an ``LM`` subclass that defines DSPy's ``forward``/``aforward``.

``dsa.LM`` never calls them (its requests are its own HTTP), so such an override would be
skipped silently, in-process and served alike. ``dsa.start`` refuses one as the app's LM;
``dsa.configure``/``dsa.context`` refuse one as ``lm=`` (``_settings`` sits below this
layer, so this package hands it the check: ``_settings.set_lm_check``). DSPy's custom-LM
contract is ``dsa.BaseLM``.
"""

from __future__ import annotations

from dspy_actors.lm._lm import LM

__all__ = ["refuse_misplaced_forward"]


def refuse_misplaced_forward(lm: object, where: str) -> None:
    """Raise TypeError, naming ``where`` and what to do instead, if ``lm`` is an ``LM``
    whose class defines ``forward`` or ``aforward``."""
    if not isinstance(lm, LM):
        return
    for name in ("forward", "aforward"):
        if hasattr(type(lm), name):  # (dsa.LM has neither: the subclass defined it)
            raise TypeError(
                f"{where}: {type(lm).__name__} subclasses dsa.LM and defines {name}(), "
                "which dsa.LM never calls; subclass dsa.BaseLM to implement forward/"
                "aforward (DSPy's custom-LM contract), or override complete/acomplete "
                "of dsa.LM"
            )
