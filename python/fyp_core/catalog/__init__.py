"""The catalogue on disk: the batch tier's snapshot of items, long-term user embeddings and creator
authority (format version 1, ``docs/catalogue.md``), and how it is fed into a FeedPipeline.

One way to do each thing:

- build: ``Catalogue.from_arrays(...)`` (validated arrays) or ``Catalogue.from_world(world)``
  (the demo's synthetic world);
- write: ``catalogue.save(path)`` (atomic: a reader sees the old directory or the new one);
- read: ``load_catalogue(path)`` (validated, embeddings memory-mapped);
- serve: ``apply_catalogue(pipeline, catalogue)`` (streams it in bounded chunks).

``fyp-core serve --catalogue`` and the demo go through the same calls.
"""

from fyp_core.catalog._apply import apply_catalogue
from fyp_core.catalog._format import FORMAT, VERSION
from fyp_core.catalog._model import Catalogue
from fyp_core.catalog._read import load_catalogue

__all__ = ["Catalogue", "FORMAT", "VERSION", "apply_catalogue", "load_catalogue"]
