"""The request key recipe, in its two stages, apart from rendering: the plan loop and the sharded
first pass (``plan.digests``, a block of digests at once) key with the same code, so their keys
are the same bytes.

The first stage, the content digest, hashes what is sent and where (method, URL, model, sample,
body; never credentials) and depends on the request alone. The second counts the digest among
the requests planned before it (``Occurrences``) and hashes both: the key. With ``dedupe``
identical requests share occurrence 0, so one answer serves them all.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from .occurrences import Occurrences

if TYPE_CHECKING:
    import numpy as np

UNRENDERED = "unrendered:"  # stands for the URL in the key of a row that does not render
OFF_LIMITS = "off-limits:"  # before the allowed origins and the URL, in the key of a refused request


class Keying:
    """Keys requests of one endpoint, counting them in ``occurrences`` in plan order."""

    def __init__(self, method: str, model: str | None, dedupe: bool, occurrences: Occurrences) -> None:
        self.method = method
        self.model = model  # as written (a template, maybe)
        self.dedupe = dedupe
        self.occurrences = occurrences
        self._prefixes: dict[str, bytes] = {}  # method, URL and model, hashed before every body

    def key(self, url: str, body: bytes, sample: int) -> tuple[str, bool, int]:
        """The request key, whether dedupe shares it with an identical request planned before, and
        the short digest of the content (what the occurrence index counts)."""
        return self.keyed(self.content(url, body, sample))

    def content(self, url: str, body: bytes, sample: int) -> bytes:
        """The content digest of a request: the key's first stage, independent of every other row."""
        prefix = self._prefixes.get(url)
        if prefix is None:
            if len(self._prefixes) > 1024:
                self._prefixes.clear()
            prefix = self._prefixes[url] = b"\0".join((self.method.encode(), url.encode(), (self.model or "").encode()))
        return hashlib.blake2b(b"%s\0%d\0%s" % (prefix, sample, body), digest_size=16).digest()

    def keyed(self, content: bytes) -> tuple[str, bool, int]:
        """The key's second stage, in plan order: count the content digest among the requests
        planned before, and key it with its occurrence number. As ``key``."""
        short = int.from_bytes(content[:8], "little")
        occurrence = self.occurrences.count(short)
        shared = bool(occurrence and self.dedupe)
        if shared:
            occurrence = 0  # the result of the first identical request serves this row too
        key = hashlib.blake2b(content + occurrence.to_bytes(8, "little"), digest_size=16).hexdigest()
        return key, shared, short

    def keyed_many(self, contents: np.ndarray, repeats: np.ndarray | None = None) -> tuple[list[bytes], np.ndarray]:
        """``keyed`` of a block of content digests (``V16``) at once: the keys as bytes and
        whether each is shared. The same recipe; only the hash is a step in Python. ``repeats``:
        the only short digests that may occur more than once in the job (``Occurrences.repeats``);
        the others are 0 without being counted."""
        import numpy as np

        shorts = np.ascontiguousarray(contents).view("<u8")[::2]  # the first 8 bytes, as ``keyed`` reads them
        if repeats is None:
            occurrences = self.occurrences.count_many(shorts)
        else:
            occurrences = np.zeros(len(shorts), dtype=np.int64)
            at = np.minimum(np.searchsorted(repeats, shorts), max(len(repeats) - 1, 0))
            maybe = (repeats[at] == shorts) if len(repeats) else np.zeros(len(shorts), dtype=bool)
            occurrences[maybe] = self.occurrences.count_many(shorts[maybe])
        shared = (occurrences > 0) & self.dedupe
        salted = np.empty(len(contents), dtype=[("content", "V16"), ("occurrence", "<u8")])
        salted["content"] = contents
        salted["occurrence"] = np.where(shared, 0, occurrences)
        blake2b = hashlib.blake2b
        keys = [blake2b(one, digest_size=16).digest() for one in salted.view("V24").tolist()]
        return keys, shared
