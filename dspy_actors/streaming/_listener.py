"""``StreamListener``: which predictor's which output field a stream yields, as DSPy's."""

from __future__ import annotations

from typing import Any

__all__ = ["StreamListener"]


class StreamListener:
    """Listen to ``signature_field_name`` of one predictor.

    ``predict`` (the predictor object) or ``predict_name`` (its name in
    ``named_predictors()`` in-process; its module path, or the path's last part, when
    served) say which; with neither, ``streamify`` picks the one predictor whose signature
    has the field (an error if several do). With ``allow_reuse=False`` (the default) only
    the field's first answer in a call is streamed (a predictor called again in a loop
    streams once); ``allow_reuse=True`` streams every time.

    A listener is configuration only: what a stream has seen is kept by the stream, so
    one listener can serve any number of concurrent streams.
    """

    def __init__(
        self,
        signature_field_name: str,
        predict: Any = None,
        predict_name: str | None = None,
        allow_reuse: bool = False,
    ) -> None:
        if not isinstance(signature_field_name, str) or not signature_field_name:
            raise TypeError(
                "StreamListener(signature_field_name=...) takes an output field's name, "
                f"got {signature_field_name!r}"
            )
        self.signature_field_name = signature_field_name
        self.predict = predict
        self.predict_name = predict_name
        self.allow_reuse = allow_reuse

    def matches(self, predict_name: str, field: str) -> bool:
        if field != self.signature_field_name:
            return False
        wanted = self.predict_name
        return wanted is None or predict_name == wanted or predict_name.endswith("." + wanted)

    def __repr__(self) -> str:
        return (
            f"StreamListener({self.signature_field_name!r}, predict_name={self.predict_name!r}"
            f", allow_reuse={self.allow_reuse})"
        )
