"""Form field types that take what the OpenAPI document says, and nothing more.

A boolean form field is ``true`` or ``false`` (as the document's ``type: boolean`` is written
in a form, and as the web page, curl examples and generated clients send it; any letter case).
Pydantic's lax parsing would also take ``0``/``1``, ``yes``/``no``, ``on``/``off``, ``t``/``f``
and ``y``/``n``, so ``camera_from_filename=0`` passed as a boolean the document does not allow
and ``camera_from_filename=no`` turned the option off without a word: such values are 422.
"""

from __future__ import annotations

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def _true_or_false(value: object) -> object:
    if isinstance(value, bool):  # a default, or a caller passing a bool
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "false"):
            return lowered == "true"
    raise PydanticCustomError("bool_parsing", "Input should be true or false")


# ``Annotated[bool, TRUE_OR_FALSE, Form()]``, ``Annotated[bool | None, TRUE_OR_FALSE, Form()]``:
# it runs before the type (and its union with None) sees the text.
TRUE_OR_FALSE = BeforeValidator(_true_or_false)
