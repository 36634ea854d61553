"""Path convertors for ids: an id segment matches only something shaped like an id.

So ``GET /api/v1/gallery/batch`` is not taken for an item called "batch" (a 422 about
``item_id``) but answered as what it is, a method the batch path does not have (405), and a
malformed id names no resource (404). Negative numbers still match, to get the service's own
"no such item" answer.
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class IdConvertor(Convertor[int]):
    regex = "-?[0-9]+"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("id", IdConvertor())
